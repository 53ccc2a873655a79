"""The package layout holds: imports run one way only (down the ranks below), with no cycle.

Read from the source with `ast`, so an import inside a function counts as much as one at the top
(a lazy import that runs upward is still an upward dependency). Imports under `if TYPE_CHECKING:`
count for the direction, not for cycles (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "installer" / "sd_env"

# A package may import its own modules and those of lower ranks; two packages of the same rank
# may not import each other. The root modules errors and report are below everything, cli (and
# __main__) above everything. probes/ and emulator/ run inside the target and import no sd_env.
RANKS = {
    "errors": 0, "report": 0, "__init__": 0,
    "system": 1,
    "core": 2,
    "target": 3,
    "patching": 4,
    "verify": 5, "bundle": 5,
    "workflows": 6, "fleet": 6,
    "commands": 7,
    "cli": 8, "__main__": 9,
}
RUNS_IN_TARGET = ("probes", "emulator")


def modules() -> dict[str, Path]:
    """Every sd-env module by dotted name (sd_env.core.manifest), the target-side folders left out."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in RUNS_IN_TARGET:
            continue
        parts = ["sd_env", *rel.with_suffix("").parts]
        if parts[-1] == "__init__" and len(parts) > 2:
            parts.pop()
        found[".".join(parts)] = path
    return found


def unit(module: str) -> str:
    """The layout's unit of a module: its package (sd_env.core.x -> core) or the root module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(module imported, line, runs) for each sd_env import in the file; `runs` is False under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
               for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name == "sd_env" or a.name.startswith("sd_env.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sd_env" or node.module.startswith("sd_env."):
                # `from sd_env.core import manifest` imports the module sd_env.core.manifest
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                         for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: a relative import (sd-env imports by absolute name)")
        found += [(name, node.lineno, id(node) not in skipped) for name in names]
    return found


def test_every_package_has_a_rank_and_a_docstring() -> None:
    for module, path in modules().items():
        assert unit(module) in RANKS, f"{path}: a package or root module the layout test does not rank"
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            assert doc and "import" in doc, f"{path}: say what the package owns and what it may import"


def test_imports_run_down_only() -> None:
    known = modules()
    upward = []
    for module, path in known.items():
        mine = unit(module)
        for target, line, _runs in imports(path, known):
            theirs = unit(target)
            if theirs == mine or target == "sd_env":
                continue
            if RANKS[theirs] >= RANKS[mine]:
                upward.append(f"{path.relative_to(SRC)}:{line}: {mine} (rank {RANKS[mine]}) imports {target} "
                              f"({theirs}, rank {RANKS[theirs]})")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (its first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle() -> None:
    known = modules()
    graph = {m: {t for t, _line, runs in imports(p, known) if runs and t in known and t != m and
                 not m.startswith(t + ".")} for m, p in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "an import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
])
def test_find_cycle_finds_one(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The direction test is not vacuous: a core module importing a workflow is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sd_env.workflows import install\n", encoding="utf-8")
    known = {"sd_env.workflows.install": bad}
    assert imports(bad, known) == [("sd_env.workflows.install", 2, True)]
    assert RANKS[unit("sd_env.workflows.install")] > RANKS[unit("sd_env.core.manifest")]


def test_no_module_over_about_400_lines() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in SRC.rglob("*")
             if p.suffix in (".py", ".cpp", ".h") and "__pycache__" not in p.parts}
    big = sorted(f"{p.relative_to(SRC)}: {n}" for p, n in sizes.items() if n > 420)
    assert not big, "modules over about 400 lines (the style guide's size; split them):\n" + "\n".join(big)


def test_a_command_loads_only_what_it_needs() -> None:
    """cli imports the module of the command it runs, not every command's: `sd-env run` starts
    without the packages that install, verify, bundles and fleets need."""
    code = ("import sys; from sd_env import cli; cli.build_parser('run'); "
            "print(' '.join(m for m in sys.modules if m.startswith('sd_env.')))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert "sd_env.commands.run" in loaded
    heavy = [m for m in loaded if unit(m) in ("patching", "verify", "bundle", "fleet")
             or m in ("sd_env.commands.install", "sd_env.workflows.install")]
    assert not heavy, heavy
