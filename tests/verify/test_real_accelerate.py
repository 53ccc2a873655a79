"""The real accelerate 0.16.0, fetched and patched by sd-env, in a real Python 3.9 + torch 2.1.0 venv.

GitHub is made unreachable on purpose (a file:// URL that does not exist), so
sd-env takes the PyPI sdist; then, on sd-env's emulated torch_tpu (the `emulator`
fixture, only on PYTHONPATH), `tests/kit/real_accelerate_probe.py` checks that
unpatched accelerate refuses fp16 on "tpu" ("requires a GPU"), the tutorial's
literal edit raises UnboundLocalError and ours builds torch_tpu's GradScaler;
and `probes/accelerate_proof.py` trains 2 fp16 steps with it, then skips a step
with an injected inf.

The torch venv is built once per machine (about 4.9 GB, from the era lock) under
$SD_ENV_TEST_CACHE/venv39-torch21 (default ~/.cache/sd-env-tests/venv39-torch21);
each test installs into its own small venv layered on top of it, so the cached
one never holds an editable install pointing at a deleted tmp_path.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.system.probe import script as probe_script
from sd_env.target.closure import find_uv
from sd_env.verify import emulation
from tests.conftest import ROOT, run_in

pytestmark = [pytest.mark.slow, pytest.mark.network]

LOCK = ROOT / "manifests" / "sc7-sd14-lora.pypi.lock.txt"
PYPI = "https://pypi.org/simple"
# Only if the lock is missing: what accelerate 0.16.0 and its editable build need.
FALLBACK = ["torch==2.1.0", "numpy<2", "packaging", "psutil", "pyyaml", "setuptools>=64,<70", "wheel"]
PATCH = ROOT / "patches" / "accelerate-0.16.0-tpu.diff"
PROBE = ROOT / "tests" / "kit" / "real_accelerate_probe.py"
COMPLETE = ".sd-env-test-complete"  # written last, with what was installed


def find_python(minor: str = "3.9") -> str | None:
    """python3.X on PATH, else pyenv's 3.X.y; each must actually run as 3.X (a pyenv shim on
    PATH fails with exit 127 when the global pyenv version is another one)."""
    candidates = [shutil.which(f"python{minor}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        candidates += sorted(glob.glob(os.path.join(root, "versions", f"{minor}.*", "bin", "python")), reverse=True)
    for candidate in filter(None, candidates):
        got = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip() == minor:
            return candidate
    return None


def cache_dir(minor: str = "3.9", torch: str = "2.1.0") -> Path:
    base = os.environ.get("SD_ENV_TEST_CACHE")
    name = f"venv{minor.replace('.', '')}-torch{''.join(torch.split('.')[:2])}"
    return (Path(base) if base else Path.home() / ".cache" / "sd-env-tests") / name


def wanted(lock: Path = LOCK) -> str:
    """What the cached venv must have been built from: the lock's sha256, or the fallback list."""
    if lock.is_file():
        return "lock sha256 " + hashlib.sha256(lock.read_bytes()).hexdigest()
    return "fallback " + " ".join(FALLBACK)


def torch_version(python: Path) -> str | None:
    got = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True)
    return got.stdout.strip() if got.returncode == 0 else None


def build_venv(where: Path, base: str, lock: Path = LOCK) -> None:
    shutil.rmtree(where, ignore_errors=True)  # only ever a half-made or outdated one (see COMPLETE)
    where.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([base, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    uv = find_uv()  # on PATH, or next to the interpreter running the tests (as sd-env finds it)
    if lock.is_file():
        if uv:
            argv = [uv, "pip", "install", "--python", str(python), "--require-hashes", "--no-deps",
                    "--index-url", PYPI, "-r", str(lock)]
        else:
            argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
                    "--require-hashes", "--index-url", PYPI, "-r", str(lock)]
    elif uv:
        argv = [uv, "pip", "install", "--python", str(python), "--index-url", PYPI, *FALLBACK]
    else:
        argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--index-url", PYPI,
                *FALLBACK]
    subprocess.run(argv, check=True, timeout=3600)


def torch_venv(minor: str = "3.9", lock: Path = LOCK, torch: str = "2.1.0") -> Path:
    """A Python 3.X venv with `torch` and the era lock of that stack, built once per machine."""
    where = cache_dir(minor, torch)
    python = where / "bin" / "python"
    marker = where / COMPLETE
    want = wanted(lock)
    if python.exists() and marker.is_file() and marker.read_text().strip() == want:
        version = torch_version(python)
        if version and version.split("+")[0] == torch:
            return python
    base = find_python(minor)
    if base is None:
        pytest.skip(f"no Python {minor} found (python{minor} on PATH or $(pyenv root)/versions/{minor}.*): "
                    f"install one, e.g. `pyenv install {minor}`")
    started = time.monotonic()
    build_venv(where, base, lock)
    version = torch_version(python)
    assert version and version.split("+")[0] == torch, f"{python} imports torch {version}"
    marker.write_text(want + "\n")
    print(f"built {where} in {time.monotonic() - started:.0f} s ({want.split()[0]})")
    return python


@pytest.fixture(scope="session")
def torch_python() -> Path:
    """A Python 3.9 venv with torch 2.1.0 and the era lock, built once and reused across sessions."""
    return torch_venv()


@pytest.fixture
def target(tmp_path: Path, torch_python: Path) -> Path:
    """A fresh venv that sees the cached venv's packages through a .pth file, with its own site."""
    where = tmp_path / "venv"
    subprocess.run([str(torch_python), "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    Path(run_in(python, purelib), "_sd_env_test_torch.pth").write_text(run_in(torch_python, purelib) + "\n")
    return python


def accelerate_manifest(tmp_path: Path) -> Path:
    gone = (tmp_path / "unreachable" / "accelerate.git").as_uri()  # git fails, sd-env takes the sdist
    text = f'''schema = 1
name = "real-accelerate"
python = "3.9"
device = "tpu:0"
patches_dir = "{PATCH.parent}"

[torch]
requirements = ["torch==2.1.0"]
index = "{PYPI}"

[[component]]
name = "accelerate"
git = "{gone}"
tag = "v0.16.0"
version = "0.16.0"
commit = "36beea9a1be9251a3ad07f7c10fd425c96954f46"
patches = ["{PATCH.name}"]
'''
    path = tmp_path / "manifests" / "accelerate.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_sd_env_patched_accelerate_builds_the_torch_tpu_scaler_and_trains(tmp_path, target, emulator, capsys):
    home = tmp_path / "home"
    argv = ["install", "-m", str(accelerate_manifest(tmp_path)), "--home", str(home), "--python", str(target),
            "--json"]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "falling back to the PyPI sdist accelerate==0.16.0" in out.err
    results = {(r["component"], r["step"]): r for r in json.loads(out.out)["results"]}
    assert results[("accelerate", "fetch")]["detail"].startswith("PyPI sdist accelerate-0.16.0.tar.gz")
    patched = results[("accelerate", "patch")]
    assert patched["status"] == "ok" and patched["detail"].startswith(f"applied {PATCH.name}")
    assert results[("accelerate", "build")]["status"] == "ok"

    checkout = home / "src" / "accelerate"
    probe = subprocess.run([str(target), str(PROBE), "--patch", str(PATCH), "--torch-tpu", str(emulator.pythonpath)],
                           capture_output=True, text=True, timeout=900)
    report = json.loads(probe.stdout.splitlines()[-1])
    variants = report["variants"]
    assert probe.returncode == 0 and report["ok"], json.dumps(report, indent=2)

    got = variants["patched"]
    assert got["torch"].startswith("2.1.0") and got["accelerate"] == "0.16.0"
    assert got["accelerate_file"].startswith(str(checkout)), got["accelerate_file"]
    assert got["device"] == "tpu:0"
    assert got["emulated"] is True and got["scaler_is_torch_tpu"] is True, got
    assert got["scale"] == 1024.0  # GradScalerKwargs(init_scale=1024.0) reached torch_tpu's scaler

    literal = variants["tutorial-literal"]
    assert literal["error_type"] == "UnboundLocalError" and "torch_tpu" in literal["error"]
    assert variants["upstream"]["error_type"] == "ValueError" and "requires a GPU" in variants["upstream"]["error"]
    assert variants["patched-no-torch_tpu"]["device"] == "cpu"

    # The patch's reason to exist: fp16 training steps on "tpu" with torch_tpu's scaler.
    env = {**os.environ, **emulation.environment(emulator)}
    trained = subprocess.run([str(target), str(probe_script("accelerate_proof.py"))], capture_output=True, text=True,
                             timeout=900, env=env)
    proof = json.loads(trained.stdout.splitlines()[-1])
    assert trained.returncode == 0 and proof["ok"], json.dumps(proof, indent=2) + trained.stderr[-2000:]
    assert proof["device"] == "tpu:0" and proof["emulated"] and proof["torch_tpu_scaler"]
    assert proof["accelerate_file"].startswith(str(checkout))
    good, bad = proof["steps"][:2], proof["steps"][2]
    assert all(s["weights_changed"] and not s["skipped"] and s["grad_device"] == "tpu:0" for s in good), good
    assert bad["inf_injected"] and bad["skipped"] and not bad["weights_changed"], bad
    assert bad["scale_after"] == bad["scale_before"] / 2
