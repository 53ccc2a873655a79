"""Port one patch onto a newer upstream tree (a git work tree), and check the result.

Order, first that works: obsolete upstream (the change is already there, or
its target is gone), exact, with line offsets, 3-way merge from the blobs
named in the patch's `index` lines, and fuzz only when asked (marked as such).
A port is then checked: every added line present, Python files compile.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from unidiff import PatchSet

from sd_env.patching.patches import FAILED_HUNK, Patch, parse
from sd_env.system import gitcmd
from sd_env.system.runner import Runner

EXACT, OFFSET, THREE_WAY, FUZZED, OBSOLETE, CONFLICT = "exact", "offset", "3-way", "fuzzed", "obsolete", "conflict"
SHIPPED = "shipped"  # a hand-made port for the release, shipped next to the patch (ladder.py)
# Some hunks' target text is gone from the new release and the others port: not a port yet, until a proof
# says those hunks are no longer needed (DROPPED) or still are (a conflict). See repatch and proof.py.
GONE, DROPPED = "target gone", "hunk dropped as obsolete"
_INDEX = re.compile(r"^index ([0-9a-f]{7,40})\.\.([0-9a-f]{7,40})", re.M)
_OFFSET = re.compile(r"Hunk #\d+ succeeded at \d+ \(offset")


@dataclass
class PortResult:
    patch: Patch
    method: str
    detail: str
    conflicts: list[str] = field(default_factory=list)  # "file: hunk at line L, nearest match at line N (xx%)"
    gone: list[str] = field(default_factory=list)  # the hunks whose target text is gone, named
    rest: Patch | None = None  # GONE: the patch without those hunks, ported into the tree

    @property
    def ported(self) -> bool:
        return self.method in (EXACT, OFFSET, THREE_WAY, FUZZED, SHIPPED, DROPPED)


def port(runner: Runner, repo: Path, patch: Patch, *, blobs_from: Path | None, fuzz: int = 0) -> PortResult:
    """Apply `patch` to the work tree `repo` by the first method that works; a conflict leaves
    markers (3-way) or .rej files in the tree for the user to resolve."""
    gone = [c.path for c in patch.files if not c.added and not (repo / c.path).exists()]
    if gone:
        return PortResult(patch, OBSOLETE, f"target construct gone upstream: {', '.join(gone)} no longer exist(s)")
    if _git_apply(runner, repo, patch, "-R", "--check").returncode == 0:
        return PortResult(patch, OBSOLETE, "already upstream: the new release contains the change "
                          "(the patch reverse-applies cleanly)")
    trial = _git_apply(runner, repo, patch, "--check", "-v")
    if trial.returncode == 0:
        _git_apply(runner, repo, patch, check=True)
        method = OFFSET if _OFFSET.search(trial.stderr) else EXACT
        return _checked(repo, patch, PortResult(patch, method, _offset_note(trial.stderr)))
    failed_at = _failures(repo, patch, trial.stderr)
    lost = gone_hunks(repo, patch)
    if lost:  # a merge cannot bring back text the new file no longer has: port the rest, name these
        return _without_gone(runner, repo, patch, lost, blobs_from, fuzz, failed_at)
    missing = ensure_blobs(runner, repo, patch, blobs_from)
    if not missing:
        merge = _git_apply(runner, repo, patch, "-3")
        unmerged = gitcmd.out(runner, repo, "diff", "--name-only", "--diff-filter=U")
        if merge.returncode == 0 and not unmerged:
            gitcmd.git(runner, repo, "reset", "-q")  # -3 stages its result; keep the index at HEAD
            return _checked(repo, patch, PortResult(patch, THREE_WAY, "3-way merge from the recorded pre-image"))
        if unmerged:
            return PortResult(patch, CONFLICT, "3-way merge left conflict markers in " + ", ".join(unmerged.split()),
                              failed_at)
    if fuzz:
        fuzzy = _git_apply(runner, repo, patch, f"-C{max(0, 3 - fuzz)}")
        if fuzzy.returncode == 0:
            return _checked(repo, patch, PortResult(patch, FUZZED, f"applied with fuzz {fuzz}: review, then --accept"))
    _git_apply(runner, repo, patch, "--reject")  # the hunks that fit, and .rej files for the rest
    why = "no 3-way merge possible: pre-image blob(s) " + ", ".join(missing) + " unavailable" if missing else ""
    return PortResult(patch, CONFLICT, why or "does not apply", failed_at)


def gone_hunks(repo: Path, patch: Patch) -> dict[tuple[str, int], str]:
    """(file, hunk number) -> its name, for each hunk whose target text the new file no longer has: none of
    the lines it removes (of its context, for a hunk that only adds) is there, not even changed a little
    (a line 80% alike: then it is a conflict to resolve, not a target gone); punctuation-only lines aside."""
    gone = {}
    for pf in PatchSet(patch.text):
        target = repo / pf.path
        if pf.is_added_file or not target.exists():
            continue
        present = [line.strip() for line in target.read_text(encoding="utf-8", errors="replace").splitlines()]
        exact = set(present)
        for number, hunk in enumerate(pf, 1):
            removed = [line.value.strip() for line in hunk if line.is_removed]
            wanted = [t for t in (removed or [line.value.strip() for line in hunk if line.is_context])
                      if re.search(r"\w", t)]
            if wanted and not any(t in exact or difflib.get_close_matches(t, present, n=1, cutoff=0.8)
                                  for t in wanted):
                gone[(pf.path, number)] = f"hunk #{number} of {pf.path} (`{wanted[0]}`)"
    return gone


def _without_gone(runner: Runner, repo: Path, patch: Patch, gone: dict[tuple[str, int], str],
                  blobs_from: Path | None, fuzz: int, failed_at: list[str]) -> PortResult:
    """Port the patch without the hunks whose target is gone: GONE when the rest ports (the caller proves
    whether those hunks are still needed), else the conflict of the rest, naming the gone ones too."""
    named = "; ".join(gone.values()) + ": target text gone from the new file"
    lost = list(gone.values())
    parsed = PatchSet(patch.text)
    for pf in parsed:
        pf[:] = [h for number, h in enumerate(pf, 1) if (pf.path, number) not in gone]
    kept = [pf for pf in parsed if len(pf)]
    if not kept:
        return PortResult(patch, GONE, "nothing else to port", gone=lost)
    header = patch.text.split("diff --git", 1)[0]
    where = repo / ".git" / "sd-env-rest" / patch.name
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(header + "".join(str(pf) for pf in kept), encoding="utf-8")
    rest = port(runner, repo, parse(where.read_text(encoding="utf-8"), where), blobs_from=blobs_from, fuzz=fuzz)
    if rest.ported:
        return PortResult(patch, GONE, f"the rest: {rest.method} ({rest.detail})", gone=lost, rest=rest.patch)
    return PortResult(patch, CONFLICT, f"{named}; the rest: {rest.detail}", rest.conflicts or failed_at, gone=lost)


def verify_port(repo: Path, patch: Patch) -> list[str]:
    """What is wrong with a ported tree: added lines missing, files that do not compile, markers."""
    problems = []
    for change, added in _added_lines(patch).items():
        path = repo / change
        if not path.exists():
            problems.append(f"{change}: missing")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        present = {line.strip() for line in text.splitlines()}
        lost = [line for line in added if line.strip() and line.strip() not in present]
        if lost:
            problems.append(f"{change}: {len(lost)} added line(s) missing, e.g. {lost[0].strip()!r}")
        problems += check_file(path, change)
    return problems


def check_file(path: Path, name: str) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if re.search(r"^(<<<<<<<|>>>>>>>) ", text, re.M):
        return [f"{name}: conflict markers left"]
    if path.suffix == ".py":
        try:
            compile(text, str(path), "exec")
        except SyntaxError as exc:
            return [f"{name}: does not compile (line {exc.lineno}: {exc.msg})"]
    return []


def _checked(repo: Path, patch: Patch, result: PortResult) -> PortResult:
    problems = verify_port(repo, patch)
    if problems:
        return PortResult(patch, CONFLICT, f"applied ({result.method}) but the check failed: " + "; ".join(problems))
    return result


def _added_lines(patch: Patch) -> dict[str, list[str]]:
    """Per file the patch leaves in place, the lines it adds."""
    return {pf.path: [line.value.rstrip("\n") for hunk in pf for line in hunk if line.is_added]
            for pf in PatchSet(patch.text) if not pf.is_removed_file}


def _git_apply(runner: Runner, repo: Path, patch: Patch, *flags: str, check: bool = False):
    return gitcmd.git(runner, repo, "apply", "--whitespace=nowarn", *flags, str(patch.path.resolve()), check=check)


def _offset_note(stderr: str) -> str:
    offsets = re.findall(r"Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)", stderr)
    if not offsets:
        return "applies as it is"
    return "applies with offsets: " + ", ".join(f"hunk #{h} at line {at} ({off:+})" for h, at, off in
                                                ((h, at, int(o)) for h, at, o in offsets))


def ensure_blobs(runner: Runner, repo: Path, patch: Patch, blobs_from: Path | None) -> list[str]:
    """Copy the patch's pre-image blobs into `repo` from `blobs_from` (a checkout that has them);
    the ids still missing."""
    missing = []
    for old, _new in _INDEX.findall(patch.text):
        if set(old) == {"0"} or gitcmd.git(runner, repo, "cat-file", "-e", old, check=False).returncode == 0:
            continue
        if blobs_from is not None:
            blob = gitcmd.git(runner, blobs_from, "cat-file", "blob", old, check=False)
            if blob.returncode == 0:
                gitcmd.git(runner, repo, "hash-object", "-w", "--stdin", input_text=blob.stdout)
                if gitcmd.git(runner, repo, "cat-file", "-e", old, check=False).returncode == 0:
                    continue
        missing.append(old[:12])
    return missing


def _failures(repo: Path, patch: Patch, stderr: str) -> list[str]:
    """Each failed hunk with the nearest place in the new file that looks like its old text."""
    out = []
    for path, line in FAILED_HUNK.findall(stderr):
        change = next((c for c in patch.files if c.path == path), None)
        hunk_no, before = _hunk_text(patch, path, int(line))
        where = f"{path}: hunk #{hunk_no} (old line {line})" if hunk_no else f"{path}: hunk at old line {line}"
        target = repo / path
        if change is not None and target.exists() and before:
            at, ratio = nearest(target.read_text(encoding="utf-8", errors="replace").splitlines(), before)
            where += f", nearest match at line {at} ({ratio:.0%} similar)"
        out.append(where)
    return out


def _hunk_text(patch: Patch, path: str, source_start: int) -> tuple[int, list[str]]:
    """The hunk's number in its file and its pre-image lines (context and removed)."""
    for pf in PatchSet(patch.text):
        if pf.path != path:
            continue
        for number, hunk in enumerate(pf, 1):
            if hunk.source_start == source_start:
                return number, [line.value.rstrip("\n") for line in hunk if line.is_context or line.is_removed]
    return 0, []


def nearest(text: list[str], wanted: list[str]) -> tuple[int, float]:
    """1-based line where a window of `text` best matches `wanted`, and how well (0..1)."""
    best, best_at = 0.0, 1
    size = len(wanted)
    for start in range(max(1, len(text) - size + 1)):
        ratio = difflib.SequenceMatcher(None, text[start:start + size], wanted, autojunk=False).ratio()
        if ratio > best:
            best, best_at = ratio, start + 1
    return best_at, best
