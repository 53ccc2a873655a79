"""Fixtures: tiny upstream git repos with tags, patches made from real diffs,
manifests pointing at them, and a real target virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core.manifest import load
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation
from tests.kit.pythonkit import JSON_VAR, MIRROR_VAR, Mirror, session_mirror

ROOT = Path(__file__).resolve().parents[1]
HEAVY = "SD_ENV_TEST_HEAVY"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of over 5 minutes each run when asked for: CI stays well inside its time, and the
    report says which were skipped and how to run them (their figures are in bench/README.md)."""
    if os.environ.get(HEAVY) == "1":
        return
    skip = pytest.mark.skip(reason=f"skipped: heavy (over 5 minutes); run with {HEAVY}=1")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


def remove_killed_runs(root: Path) -> list[Path]:
    """The base folders (`pytest-N`) of runs killed before they could clean up, under `root`.

    pytest removes a run's folder at its end (tmp_path_retention_policy) and old runs' folders
    beyond the newest three, but never one whose `.lock` is younger than three days: a run killed
    by CI's timeout or a reboot leaves its lock, and with it 20+ GB (the e2e home, the real
    bundle, podman's store, the SD 1.5 home). The lock holds the run's pid: a pid that no longer
    exists marks such a folder. A live run's (a second suite running now) is left alone."""
    removed = []
    for lock in root.glob("pytest-[0-9]*/.lock"):
        try:
            pid = int(lock.read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(lock.parent, ignore_errors=True)
        removed.append(lock.parent)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@pytest.fixture(scope="session", autouse=True)
def subprocess_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every subprocess's TMPDIR is a folder in this run's base folder, which a passing run
    removes: what tools leave in TMPDIR goes with it (Python 3.9's ensurepip leaves the CA
    bundle it extracted, 275 KB per venv with pip). This process keeps its own temp folder.
    First, the folders of earlier runs that were killed go (remove_killed_runs)."""
    for gone in remove_killed_runs(tmp_path_factory.getbasetemp().parent):
        print(f"removed {gone}: left by a test run that was killed", file=sys.stderr)
    where = tmp_path_factory.mktemp("tmpdir")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(where)
    yield where
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture(scope="session", autouse=True)
def standalone_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The tests' stand-in for the servers of standalone CPython builds, which tests cannot reach
    (tests/kit/pythonkit.py: an archive packed from the Python running the tests, in a mirror's layout,
    with uv's download metadata), given to uv as a user gives it a mirror, for the whole session:
    every `bundle create` and bootstrap here takes its standalone Python from it, never from the
    Internet. CI's unprivileged run is handed root's mirror in the same two variables."""
    mirror = session_mirror(tmp_path_factory.mktemp("standalone"))
    old = {var: os.environ.get(var) for var in (MIRROR_VAR, JSON_VAR)}
    os.environ.update({MIRROR_VAR: mirror.url, JSON_VAR: str(mirror.meta)})
    yield mirror
    for var, value in old.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Upstream", "GIT_AUTHOR_EMAIL": "up@example.org",
    "GIT_COMMITTER_NAME": "Upstream", "GIT_COMMITTER_EMAIL": "up@example.org",
    "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
}

CORE = '''"""tinypkg core: stands in for accelerate's accelerator.py."""


def device_kind(name):
    if name.startswith("cuda"):
        return "gpu"
    return "cpu"


def scaler_for(kind):
    if kind == "gpu":
        return "cuda.GradScaler"
    return None
'''

SETUP = '''from setuptools import setup, find_packages

setup(name="tinypkg", version="1.0", package_dir={"": "src"}, packages=find_packages("src"))
'''


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@dataclass
class Upstream:
    """A tiny upstream project in a git repo, released as tags."""

    repo: Path

    @property
    def url(self) -> str:
        return self.repo.as_uri()

    def write(self, rel: str, text: str) -> None:
        path = self.repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def release(self, tag: str, message: str = "release") -> str:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", message)
        git(self.repo, "tag", "-a", "-f", tag, "-m", tag)
        return git(self.repo, "rev-parse", "HEAD")

    def diff(self, edits: dict[str, str], header: str = "Description: test patch\n\n") -> str:
        """A git diff (with full index lines) of `edits` against HEAD; the repo is left as it was."""
        for rel, text in edits.items():
            self.write(rel, text)
        git(self.repo, "add", "-A")
        text = git(self.repo, "diff", "--cached", "--full-index", "HEAD")
        git(self.repo, "reset", "-q", "--hard", "HEAD")
        return header + text + "\n"


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return make_upstream(tmp_path)


def make_upstream(tmp_path: Path) -> Upstream:
    """tinypkg released as v1.0 in a git repo under `tmp_path`."""
    repo = tmp_path / "upstream" / "tinypkg"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    up = Upstream(repo)
    up.write("setup.py", SETUP)
    up.write("src/tinypkg/__init__.py", '__version__ = "1.0"\n')
    up.write("src/tinypkg/core.py", CORE)
    up.write("examples/train.py", "import tinypkg\nprint('training')\n")
    up.release("v1.0")
    return up


TPU_PATCH = {"src/tinypkg/core.py": CORE.replace(
    '    if name.startswith("cuda"):\n        return "gpu"\n',
    '    if name.startswith("cuda"):\n        return "gpu"\n    if name.startswith("tpu"):\n'
    '        return "tpu"\n').replace(
    '        return "cuda.GradScaler"\n', '        return "cuda.GradScaler"\n    if kind == "tpu":\n'
    '        return "torch_tpu.GradScaler"\n')}


@dataclass
class Project:
    """A manifest + patches folder + home, as a user's project would have them."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifests" / "test.toml"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def add_patch(self, name: str, text: str) -> Path:
        path = self.root / "patches" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def write_manifest(self, components: list[dict], extra: str = "") -> Path:
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"  # the test venvs' version
        lines = ['schema = 1', 'name = "test"', f'python = "{here}"', 'device = "tpu:0"',
                 'patches_dir = "../patches"', extra,
                 '[torch]', 'requirements = ["torch==2.1.0"]', 'index = "https://pypi.org/simple"', '']
        for comp in components:
            lines.append("[[component]]")
            for key, value in comp.items():
                if isinstance(value, list):
                    lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]".replace("'", '"'))
                elif isinstance(value, bool):
                    lines.append(f"{key} = {str(value).lower()}")
                else:
                    lines.append(f'{key} = "{value}"')
            lines.append("")
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text("\n".join(lines))
        return self.manifest

    def cli(self, *args: str, python: Path | None = None) -> int:
        argv = [args[0], "-m", str(self.manifest), "--home", str(self.home), *args[1:]]
        if python is not None:
            argv += ["--python", str(python)]
        return main(argv)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


def tiny_component(up: Upstream, commit: str | None, patches: list[str] | None = None, **kw) -> dict:
    comp = {"name": "tinypkg", "git": up.url, "tag": "v1.0", "version": "1.0"}
    if commit:
        comp["commit"] = commit
    if patches is not None:
        comp["patches"] = patches
    comp.update(kw)
    return comp


@pytest.fixture(scope="session")
def target_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv to install into, with setuptools>=64 for PEP 660 editable builds.

    Made with the interpreter running the tests; setuptools comes from the
    configured package index (pip's cache makes later sessions fast).
    """
    return venv_with(tmp_path_factory.mktemp("target"), "setuptools>=64,<70", "wheel")


@pytest.fixture(scope="session")
def hub_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the default stack's huggingface_hub (0.16.4) and Pillow, nothing heavier: what `sd-env model
    lock|fetch` and the image-folder check run in (from the configured package index, about 10 s)."""
    return venv_with(tmp_path_factory.mktemp("hub-target"), "huggingface_hub==0.16.4", "pillow")


def venv_with(folder: Path, *requirements: str) -> Path:
    """A venv in folder/venv made with the interpreter running the tests, `requirements` pip-installed."""
    where = folder / "venv"
    # symlinks (as `python -m venv` makes them): a standalone CPython's binary finds libpython at
    # $ORIGIN/../lib, which a copy in the venv's bin/ would not (a user without Python 3.9 has one)
    venv.EnvBuilder(with_pip=True, symlinks=True).create(where)
    python = where / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                   check=True)
    return python


def run_in(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def fresh_target(tmp_path: Path, target_python: Path) -> Path:
    """A per-test venv sharing the session venv's packages (fast), but with its own site."""
    where = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    site = run_in(where / "bin" / "python", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    shared = run_in(target_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # pip, setuptools and wheel come from the session venv through a .pth file.
    Path(site, "_shared_build_tools.pth").write_text(shared + "\n")
    return where / "bin" / "python"


def shared_mirrors() -> Path | None:
    """The read-only bare git mirrors of accelerate and diffusers: `shared/mirrors` beside the
    repository in CI (../shared/mirrors), or beside one of its parents (a worktree under wt/)."""
    given = os.environ.get("SD_ENV_TEST_GIT_MIRROR")
    for candidate in [Path(given)] if given else [base / "shared" / "mirrors" for base in ROOT.parents]:
        if (candidate / "huggingface" / "diffusers.git").is_dir():
            return candidate
    return None


def bootstrap(home: Path) -> subprocess.CompletedProcess:
    """./bootstrap.sh with SD_ENV_HOME=home, outside any active environment, on a PATH without any
    python3.9 (nor pyenv): as on Debian 12 or Ubuntu 22.04, sd-env's own venv is made with the
    system's python3 and the target's Python 3.9 comes from the session's standalone mirror.

    With the shared mirrors, accelerate and diffusers come from git (the real tag and commit
    checks, and diffusers' patched example script, which no sdist has); transformers, which
    is not mirrored, still takes the sdist fallback.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON")}
    env.update(SD_ENV_HOME=str(home), COLUMNS="200", PATH=path_without("python3.9", "pyenv"))
    mirrors = shared_mirrors()
    if mirrors is not None:
        env["SD_ENV_GIT_MIRROR"] = str(mirrors)
    return subprocess.run([str(ROOT / "bootstrap.sh")], env=env, capture_output=True, text=True, timeout=3600)


def path_without(*programs: str) -> str:
    """$PATH less every folder that holds one of `programs`."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, p)) for p in programs)]
    return os.pathsep.join(keep)


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory):
    """The small project's bundle, made once per session (tests/kit/bundlekit.py; downloads six, idna,
    sd-env's dependencies and uv through the configured index)."""
    from tests.kit.bundlekit import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The real environment of the default manifest (2.8 GB on a cold machine), built once per session."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    first = bootstrap(home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return home, first


@pytest.fixture(scope="session")
def real_bundle(bootstrapped, tmp_path_factory) -> Path:
    """The default manifest's bundle (2.8 GB), made once per session from the bootstrapped home
    (test_e2e_bundle installs it offline, test_image builds the image from it)."""
    home, _ = bootstrapped
    root = tmp_path_factory.mktemp("real-bundle")
    out = root / "sd14"
    assert main(["bundle", "create", str(out), "-m", str(ROOT / "manifests" / "sc7-sd14-lora.toml"),
                 "--home", str(root / "create-home"), "--from-home", str(home)]) == 0
    return out


@pytest.fixture(scope="session")
def emulator_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Paths]:
    """The torch 2.1 target the tpu emulator is built against, and the home that caches the build.

    The bootstrapped real environment by default (as in CI). While developing,
    SD_ENV_TEST_TARGET=/work/devhome reuses an existing home's venv (read only:
    the build is cached in $SD_ENV_TEST_EMULATOR_HOME, else a session folder).
    """
    existing = os.environ.get("SD_ENV_TEST_TARGET")
    if existing:
        home = os.environ.get("SD_ENV_TEST_EMULATOR_HOME") or str(tmp_path_factory.mktemp("emulator-home"))
        return Path(existing) / "venv" / "bin" / "python", Paths(Path(home))
    home, _ = request.getfixturevalue("bootstrapped")
    return home / "venv" / "bin" / "python", Paths(home)


@pytest.fixture(scope="session")
def emulator(emulator_target: tuple[Path, Paths]) -> emulation.Emulator:
    """The emulator, built once per session (about half a minute on 2 idle cores) and cached in the home."""
    python, paths = emulator_target
    return emulation.build(Runner(), python, paths)


SD15_MANIFEST = ROOT / "manifests" / "sc7-sd15-lora.toml"
ERAS = ("2.1", "2.8")  # the torch_tpu eras the emulator builds for: the sd14 stack's torch 2.1, the sd15 one's 2.8


def mirror_has(mirrors: Path | None, repo: str, tag: str) -> bool:
    return mirrors is not None and subprocess.run(
        ["git", "--git-dir", str(mirrors / "huggingface" / f"{repo}.git"), "rev-parse", "-q", "--verify",
         f"{tag}^{{commit}}"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def sd15_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sophgo's current stack (-m sc7-sd15-lora: Python 3.11, torch 2.8.0, accelerate 0.30.1, diffusers 0.29.2),
    installed once per session; SD_ENV_TEST_SD15_HOME reuses a home of it. PyPI's torch 2.8.0 is the CUDA build:
    uv takes it and its nvidia-* wheels from its cache (about 6 GB once) and links them into the venv, so the
    venv adds next to nothing on disk (bench/README.md has the figures). With a git mirror that has accelerate
    v0.30.1 and diffusers v0.29.2, they come from git (diffusers' example script is only there)."""
    existing = os.environ.get("SD_ENV_TEST_SD15_HOME")
    if existing:
        return Path(existing)
    home = tmp_path_factory.mktemp("sd15") / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON")}
    mirrors = shared_mirrors()
    # A mirror without the stack's tags is an error (a moved tag, for sd-env); no mirror at all sends git to
    # GitHub, which CI cannot reach. An empty folder as the mirror makes git fail at once: the PyPI sdists.
    has_tags = mirror_has(mirrors, "accelerate", "v0.30.1") and mirror_has(mirrors, "diffusers", "v0.29.2")
    env["SD_ENV_GIT_MIRROR"] = str(mirrors if has_tags else tmp_path_factory.mktemp("no-git-mirror"))
    got = subprocess.run([sys.executable, "-m", "sd_env", "install", "-m", str(SD15_MANIFEST), "--home", str(home)],
                         env=env, capture_output=True, text=True, timeout=3600)
    if got.returncode == 2 and "3.11" in got.stderr:
        pytest.skip(f"skipped: no Python 3.11 for the sd15 stack: {got.stderr.strip()[-500:]}")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    return home


@pytest.fixture(scope="session")
def sd15_target(sd15_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Paths]:
    """The sd15 stack's interpreter (torch 2.8) and the home that caches its emulator build."""
    if os.environ.get("SD_ENV_TEST_SD15_HOME"):  # somebody's home: the build goes to a cache of the tests'
        cache = os.environ.get("SD_ENV_TEST_EMULATOR_HOME") or str(tmp_path_factory.mktemp("emulator-home-28"))
        return sd15_home / "venv" / "bin" / "python", Paths(Path(cache))
    return sd15_home / "venv" / "bin" / "python", Paths(sd15_home)


@pytest.fixture(scope="session")
def emulated(request: pytest.FixtureRequest) -> Callable[[str], tuple[Path, emulation.Emulator]]:
    """emulated(era) -> (the target interpreter of that era, the emulator built for it), built once per era."""
    built: dict[str, tuple[Path, emulation.Emulator]] = {}

    def get(era: str) -> tuple[Path, emulation.Emulator]:
        if era not in built:
            if era == "2.1":
                built[era] = (request.getfixturevalue("emulator_target")[0], request.getfixturevalue("emulator"))
            else:
                python, paths = request.getfixturevalue("sd15_target")
                built[era] = (python, emulation.build(Runner(), python, paths))
        return built[era]

    return get


@pytest.fixture(scope="session")
def mirrored(bootstrapped) -> Path:
    """The bootstrapped home: installed from the git mirrors, so diffusers' examples/ (the training
    script) are there."""
    if shared_mirrors() is None:
        pytest.skip(f"no git mirror: provide {ROOT.parent / 'shared' / 'mirrors'} (SD_ENV_TEST_GIT_MIRROR)")
    home, _ = bootstrapped
    return home


# Session fixtures of the emulated tpu that verify/ and workflows/ share: the v0.20.0 example script
# (unpatched and patched), the target with its emulator, the tiny model, and a home around the target.
EXAMPLE = "examples/text_to_image/train_text_to_image_lora.py"
DIFFUSERS_PATCH = ROOT / "patches" / "diffusers-0.20.0-train-lora.diff"


@pytest.fixture(scope="session")
def scripts(tmp_path_factory) -> dict[str, Path]:
    """The v0.20.0 example script as upstream has it, and with our patch applied by git."""
    mirrors = shared_mirrors()
    if mirrors is None:
        pytest.skip("skipped: no shared/mirrors beside the repository; the unpatched example script exists only "
                    "in diffusers' git history (not in its sdist)")
    commit = load(ROOT / "manifests" / "sc7-sd14-lora.toml").component("diffusers").commit
    text = subprocess.run(["git", "--git-dir", str(mirrors / "huggingface" / "diffusers.git"), "show",
                           f"{commit}:{EXAMPLE}"], check=True, capture_output=True, text=True).stdout
    out = {}
    for name in ("unpatched", "patched"):
        where = tmp_path_factory.mktemp(f"diffusers-{name}")
        (where / EXAMPLE).parent.mkdir(parents=True)
        (where / EXAMPLE).write_text(text)
        if name == "patched":
            subprocess.run(["git", "apply", str(DIFFUSERS_PATCH)], cwd=where, check=True, capture_output=True,
                           env={**os.environ, "GIT_CEILING_DIRECTORIES": str(where.parent)})
        out[name] = where / EXAMPLE
    assert "import torch_tpu" not in text and "import torch_tpu" in out["patched"].read_text()
    return out


@pytest.fixture(scope="session")
def emulated_target(emulator_target, emulator) -> tuple[Path, emulation.Emulator]:
    """The target's interpreter and the emulator built for it (one build per session, cached)."""
    return emulator_target[0], emulator


@pytest.fixture(scope="session")
def tiny(emulated_target, tmp_path_factory) -> Path:
    python, _emu = emulated_target
    where = tmp_path_factory.mktemp("tiny-sd") / "tiny"
    got = subprocess.run([str(python), str(probe.script("tiny_sd.py")), "--out", str(where)], capture_output=True,
                         text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert got.returncode == 0, got.stderr[-3000:]
    return where


@pytest.fixture(scope="session")
def verify_home(emulator_target, emulator) -> Path:
    python, paths = emulator_target
    home = paths.home
    target = python.parents[2]
    if target != home:  # a development target: link what verify reads, keep what it writes here
        for name in ("venv", "src", "state.json"):
            if not (home / name).exists():
                os.symlink(target / name, home / name)
    return home


__all__ = ["CORE", "ERAS", "ROOT", "SD15_MANIFEST", "TPU_PATCH", "Project", "Upstream", "bootstrap", "git",
           "mirror_has", "run_in", "sys", "tiny_component"]
