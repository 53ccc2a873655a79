"""The OCI image (deploy/image/): built by podman from a bundle inside a namespace with no network,
run with `--network none`, `sd-env verify --quick` as its health check.

The base image is a Debian bullseye rootfs (Python 3.9) made once per session by
deploy/image/make-base.sh (debootstrap: about a minute, from the Debian mirror). Default
suite: a bundle of a small manifest (no torch in its lock, so the image installs and patches
for real and its health check fails exactly at the Linear smoke test); the same manifest for
Python 3.11 with the CPU build of torch 2.13.0 (pip's local wheel here) on a Debian bookworm
base, whose health check passes (a 1.1 GB image); a store too small for a build. Slow suite:
the default manifest's real bundle, shared with test_e2e_bundle, gives a healthy image; it
needs about 24 GB free (build.sh checks, and the test says skipped where there is less).

Podman's state stays in a session folder: a containers.conf (runc, and open-file and process
limits this kind of machine allows: podman's default nofile is above its hard limit) and a
storage.conf with the image store there; every container and image is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import ROOT
from tests.kit.bundlekit import make_project

IMAGE_DIR = ROOT / "deploy" / "image"
BUILD, MAKE_BASE = str(IMAGE_DIR / "build.sh"), str(IMAGE_DIR / "make-base.sh")
BASE = "localhost/sd-env-test-base:bullseye"
# The tiny image's venv comes from bullseye's python3 -m venv (pip 20.3): the editable build
# needs the era's pip, setuptools and wheel, which the default lock pins with their hashes.
BUILD_TOOLS = re.compile(r"^(pip|setuptools|wheel)==\S+ \\\n(?:    --hash=\S+(?: \\)?\n)+", re.M)

needs_podman = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "runc", "debootstrap", "unshare")),
    reason="needs root, podman, runc, debootstrap and unshare (.ci/run installs them)")


@dataclass
class Engine:
    """podman with this session's configuration and image store."""

    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def script(self, path: str, *args: str, offline: bool = False, timeout: float = 1800
               ) -> subprocess.CompletedProcess:
        """A deploy/image script; `offline`: in a new network namespace (only a down loopback)."""
        argv = ["unshare", "-n", path, *args] if offline else [path, *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def inspect(self, image: str) -> dict:
        got = self("image", "inspect", image)
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)[0]

    def verify_quick(self, image: str) -> tuple[int, dict[str, dict]]:
        """The health check's command with --json, in a container with no network."""
        got = self("run", "--rm", "--network", "none", image, "sd-env", "verify", "--quick", "--json")
        return got.returncode, {c["name"]: c for c in json.loads(got.stdout)["checks"]}

    def healthcheck(self, image: str) -> tuple[int, str, str]:
        """`podman healthcheck run` on a running container of `image` (the HEALTHCHECK as podman
        runs it): its exit code, what it printed, and the container's health status after it."""
        name = f"sd-env-test-{os.getpid()}-{time.monotonic_ns()}"
        started = self("run", "-d", "--name", name, "--network", "none", image, "sleep", "infinity")
        assert started.returncode == 0, started.stderr
        try:
            got = self("healthcheck", "run", name)
            health = self("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            return got.returncode, got.stdout.strip(), health
        finally:
            self("rm", "--force", "--time", "0", name)


def podman_env(root: Path) -> tuple[dict[str, str], Path]:
    """podman's environment with its configuration, image store and temporary files in `root`,
    and the short folder under /run that holds its run-time state (with a run root of about 50
    characters or more, a pytest folder, every `podman run` waited 20 s for the container's exit
    code). bench/image_bench.py uses it too."""
    run = Path(tempfile.mkdtemp(prefix="sd-env-podman-", dir="/run"))
    (root / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
        f'[engine]\nruntime = "runc"\ntmp_dir = "{run / "libpod"}"\n')
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{run / "storage"}"\n')
    return {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"), "TMPDIR": str(root)}, run


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    env, run = podman_env(tmp_path_factory.mktemp("podman"))
    # Whatever the store, podman keeps a blob cache in /var/lib/containers/cache and runc its
    # state in /run/runc (empty once the containers are gone): removed when this session made them.
    cache, runc = Path("/var/lib/containers"), Path("/run/runc")
    had_cache, had_runc = cache.exists(), runc.exists()
    engine = Engine(env)
    yield engine
    engine("rm", "--all", "--force", "--time", "0")
    engine("rmi", "--all", "--force")
    shutil.rmtree(run, ignore_errors=True)
    if not had_cache:
        shutil.rmtree(cache, ignore_errors=True)
    if not had_runc:
        with contextlib.suppress(OSError):
            runc.rmdir()


@pytest.fixture(scope="session")
def base(podman: Engine) -> str:
    """Debian bullseye minbase with python3, python3-venv and git, imported as BASE."""
    started = time.monotonic()
    got = podman.script(MAKE_BASE, BASE, "--engine", "podman")
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-3000:]
    print(f"make-base.sh (debootstrap bullseye minbase + import): {time.monotonic() - started:.0f} s")
    return BASE


def tiny_bundle(root: Path, name: str = "test") -> Path:
    """The small manifest of test_bundle.py (tinypkg + its patch, six and idna) plus the locked
    build tools, bundled (downloads its wheels through the configured index)."""
    project, _commit = make_project(root, name)
    folder = project.manifest.parent
    tools = "".join(m.group(0) for m in BUILD_TOOLS.finditer((ROOT / "manifests" / "sc7-sd14-lora.pypi.lock.txt")
                                                                .read_text()))
    lock = folder / "test.pypi.lock.txt"
    lock.write_text(lock.read_text() + tools)
    (folder / "requirements.in").write_text("six\nidna\npip\nsetuptools\nwheel\n")
    out = root / "bundle"
    assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home)]) == 0
    return out


def build(podman: Engine, bundle: Path, base: str, tag: str, *flags: str, expect: int | None = 0
          ) -> tuple[subprocess.CompletedProcess, float]:
    """deploy/image/build.sh in a namespace with no network; its exit code must be `expect`, or
    with expect=None, 0, else the test says skipped with build.sh's numbers when the disk lacks
    the room it asks for (8 times the bundle plus 1 GiB; the default manifest's build peaked at 21 GB)."""
    started = time.monotonic()
    got = podman.script(BUILD, str(bundle), "--base", base, "--tag", tag, "--engine", "podman", *flags, offline=True)
    if expect is None and got.returncode == 3 and "error: not enough free space" in got.stderr:
        error = next(line for line in got.stderr.splitlines() if line.startswith("error: "))
        pytest.skip(f"skipped: {error.removeprefix('error: ')}")
    assert got.returncode == (expect or 0), got.stdout[-3000:] + got.stderr[-3000:]
    return got, time.monotonic() - started


def index_sha256(bundle: Path) -> str:
    return hashlib.sha256((bundle / "index.json").read_bytes()).hexdigest()


# -- build.sh and make-base.sh refuse bad input before anything runs --------------------------------------
@pytest.mark.parametrize(("args", "error", "hint"), [
    ([], "error: no bundle given", "sd-env bundle create OUT"),
    (["{tmp}"], "is not an sd-env bundle (no index.json)", "the folder made by `sd-env bundle create OUT`"),
    (["{tmp}/missing"], "is not a folder", "the folder made by"),
    (["{bundle}"], "error: no base image given", "deploy/image/make-base.sh"),
    (["{bundle}", "--base", "b", "--engine", "rkt"], "error: unknown engine rkt", "--engine podman or --engine docker"),
    (["{bundle}", "--base", "b", "--colour"], "error: unknown option --colour", "usage: deploy/image/build.sh"),
])
def test_build_sh_refuses_bad_input(tmp_path, args, error, hint):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "index.json").write_text("{}\n")
    (bundle / "bootstrap.sh").write_text("")
    argv = [a.format(tmp=tmp_path, bundle=bundle) for a in args]
    got = subprocess.run([BUILD, *argv], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and error in got.stderr and "hint: " in got.stderr and hint in got.stderr, got.stderr


def test_build_sh_refuses_a_bundle_without_its_bootstrap(tmp_path):
    (tmp_path / "index.json").write_text("{}\n")
    got = subprocess.run([BUILD, str(tmp_path), "--base", "b"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "has no bootstrap.sh: it was made by an older sd-env" in got.stderr, got.stderr


@needs_podman
def test_build_sh_names_the_command_that_makes_a_missing_base(tmp_path, podman):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "index.json").write_text("{}\n")
    (bundle / "bootstrap.sh").write_text("")
    got = podman.script(BUILD, str(bundle), "--base", "sd-env-test-nowhere:1", "--engine", "podman")
    assert got.returncode == 2, got.stderr
    assert "base image sd-env-test-nowhere:1 is not on this machine (nothing is pulled" in got.stderr
    assert "hint: make one: sudo deploy/image/make-base.sh sd-env-test-nowhere:1 --engine podman" in got.stderr


def test_make_base_sh_refuses_bad_input():
    got = subprocess.run([MAKE_BASE], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "error: no image tag given" in got.stderr, got.stderr
    got = subprocess.run([MAKE_BASE, "t:1", "--engine", "rkt"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "error: unknown engine rkt" in got.stderr, got.stderr


# -- the image of a small manifest ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_image(podman: Engine, base: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    bundle = tiny_bundle(tmp_path_factory.mktemp("image-bundle"))
    got, seconds = build(podman, bundle, base, "localhost/sd-env-test:tiny")
    print(f"tiny image built in {seconds:.0f} s")
    return "localhost/sd-env-test:tiny", bundle, got.stderr


@pytest.mark.network
@needs_podman
def test_the_tiny_image_installs_offline_and_carries_its_health_check(podman, tiny_image):
    image, bundle, log = tiny_image
    assert re.search(r"\* built localhost/sd-env-test:tiny in \d+ s: [0-9.]+[KMG]?B \(\d+ bytes\)", log), log
    config = podman.inspect(image)
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "sd-env verify --quick"]  # kept: --format docker
    assert config["Labels"]["org.sd-env.bundle-index-sha256"] == index_sha256(bundle)
    assert config["Config"]["Env"].count("SD_ENV_HOME=/opt/sd-env") == 1
    status = podman("run", "--rm", "--network", "none", image, "sd-env", "status")
    assert status.returncode == 0 and re.search(r"tinypkg \| v1\.0 \w+ \| git \w+ \| tpu\.diff: applied \| "
                                                r"1\.0 editable -> managed checkout \| nothing", status.stdout), status
    # The bundle itself is not in the image: only its small members, which verify reads.
    kept = podman("run", "--rm", "--network", "none", image, "sh", "-c",
                  "test ! -e /bundle && cd /opt/sd-env-manifest && find . -type f | sort")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.split() == ["./bootstrap.sh", "./index.json", "./manifests/requirements.in",
                                   "./manifests/test.pypi.lock.txt", "./manifests/test.toml", "./patches/tpu.diff",
                                   "./scripts/bundle-tool.sh", "./scripts/find-python.sh"]


@pytest.mark.network
@needs_podman
def test_the_tiny_image_is_unhealthy_exactly_where_torch_is_needed(podman, tiny_image):
    image, _bundle, _log = tiny_image
    code, checks = podman.verify_quick(image)
    assert code == 1
    statuses = {name: c["status"] for name, c in checks.items()}
    # pins: ok, not warn: the pkg-resources that Debian's venv adds is not counted as outside the lock
    assert statuses == {"interpreter": "ok", "pins": "ok", "sources+patches": "ok",
                        "torch_tpu": "skipped", "ulimit -n": "warn", "linear smoke": "fail",
                        "lora step": "skipped", "inference": "skipped"}
    assert checks["interpreter"]["detail"].startswith("Python 3.9.")
    assert "No module named 'torch'" in checks["linear smoke"]["detail"]
    assert "open files limit 1024" in checks["ulimit -n"]["detail"]  # this session's containers.conf
    # Within the start period (one minute) a failed check leaves the status "starting"; after
    # it, three in a row make it "unhealthy".
    assert podman.healthcheck(image) == (1, "unhealthy", "starting")


@pytest.mark.network
@needs_podman
def test_another_bundle_is_never_taken_from_the_layer_cache(podman, base, tiny_image, tmp_path):
    """A layer cache keys a RUN on its text and build arguments, not on the bind-mounted bundle:
    build.sh passes the index's sha256, so another bundle installs afresh and the same one is cached."""
    image, bundle, _log = tiny_image
    again, seconds = build(podman, bundle, base, "localhost/sd-env-test:again")
    assert "Using cache" in again.stdout and podman.inspect("localhost/sd-env-test:again")["Id"] == \
        podman.inspect(image)["Id"], again.stdout[-2000:]
    other = tiny_bundle(tmp_path, name="other")
    build(podman, other, base, "localhost/sd-env-test:other")
    shown = podman("run", "--rm", "--network", "none", "localhost/sd-env-test:other",
                   "cat", "/opt/sd-env-manifest/index.json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["manifest_name"] == "other", shown.stderr
    assert podman.inspect("localhost/sd-env-test:other")["Id"] != podman.inspect(image)["Id"]
    print(f"cached rebuild: {seconds:.1f} s")


@pytest.mark.network
@needs_podman
def test_a_hand_made_build_without_the_bundle_index_stops_at_once(podman, base, tiny_image):
    _image, bundle, _log = tiny_image
    got = podman("build", "--network", "none", "--format", "docker", "--build-arg", f"BASE={base}",
                 "-f", str(IMAGE_DIR / "Containerfile"), "-t", "localhost/sd-env-test:noindex", str(bundle))
    assert got.returncode != 0 and "error: pass --build-arg BUNDLE_INDEX=" in got.stdout + got.stderr, got.stderr
    assert "installing sd-env" not in got.stdout + got.stderr


# -- a small image with torch: healthy --------------------------------------------------------------------
# torch 2.13.0's CPU build for Python 3.11 lies in pip's find-links folder on machines of this
# kind (PyPI's Linux torch is the CUDA build, several GB): with it and what it needs, a small
# manifest's image passes its health check on Debian bookworm (Python 3.11).
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
TORCH_LOCK = {  # name==version -> sha256 of the one artifact bundled
    "torch==2.13.0+cpu": "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b",
    "filelock==4.3.1": "79e43df8e9fe509cd83a3899a7c186c8077cbbe4d200a1ed3705c2f3bb6bc487",
    "fsspec==2026.9.0": "8dd6e646e99ea382bd85f97a45e6b526a442d79423a7dc673f1e2756d05fcb5f",
    "jinja2==3.1.6": "85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67",
    "markupsafe==3.0.4": "6da83a088f8ef93b2d483a8232a4dbf4d69d3d8496b568a03c56becac43e1808",
    "mpmath==1.3.0": "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c",
    "networkx==3.6.1": "d47fbf302e7d9cbbb9e2555a0d267983d2aa476bac30e90dfbe5669bd57f3762",
    "sympy==1.14.0": "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5",
    "typing-extensions==4.16.0": "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8",
    "six==1.16.0": "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
    "idna==3.4": "90b77e79eaa3eba6de819a0c442c0b4ceefc341a7a2ab77d7562bf49f425c5c2",
    # the editable build's tools (torch asks for setuptools >= 77)
    "pip==23.2.1": "7ccf472345f20d35bdc9d1841ff5f313260c2c33fe417f48c30ac46cccabf5be",
    "setuptools==80.9.0": "062d34222ad13e0cc312a4c02d73f059e86a4acbfbdea8f8f76b28c99f306922",
    "wheel==0.41.2": "75909db2664838d015e3d9139004ee16711748a52c8f336b52882266540215d8",
}
BOOKWORM = "localhost/sd-env-test-base:bookworm"


@pytest.fixture(scope="session")
def torch_image(podman: Engine, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, float]:
    if not TORCH_WHEEL.is_file():
        pytest.skip(f"skipped: no {TORCH_WHEEL} here (the CPU build of torch for Python 3.11)")
    started = time.monotonic()
    got = podman.script(MAKE_BASE, BOOKWORM, "--suite", "bookworm", "--engine", "podman")
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-3000:]
    print(f"make-base.sh --suite bookworm: {time.monotonic() - started:.0f} s")
    root = tmp_path_factory.mktemp("torch-image")
    project, _commit = make_project(root, "torch")
    text = project.manifest.read_text()
    project.manifest.write_text(re.sub(r'python = "[0-9.]+"', 'python = "3.11"', text)
                                .replace("torch==2.1.0", "torch==2.13.0+cpu"))
    folder = project.manifest.parent
    (folder / "test.pypi.lock.txt").write_text("".join(f"{pin} \\\n    --hash=sha256:{digest}\n"
                                                       for pin, digest in TORCH_LOCK.items()))
    (folder / "requirements.in").write_text("torch==2.13.0+cpu\nsix\nidna\npip\nsetuptools\nwheel\n")
    bundle = root / "bundle"
    assert main(["bundle", "create", str(bundle), "-m", str(project.manifest), "--home", str(project.home),
                 "--reuse", str(TORCH_WHEEL.parent)]) == 0
    _got, seconds = build(podman, bundle, BOOKWORM, "localhost/sd-env-test:torch", expect=None)
    return "localhost/sd-env-test:torch", bundle, seconds


@pytest.mark.network
@needs_podman
def test_an_image_with_torch_is_healthy(podman, torch_image):
    image, _bundle, seconds = torch_image
    started = time.monotonic()
    health = podman.healthcheck(image)
    health_seconds = time.monotonic() - started
    assert health == (0, "", "healthy"), health
    code, checks = podman.verify_quick(image)
    assert code == 0, checks
    assert {name: c["status"] for name, c in checks.items()} == {
        "interpreter": "ok", "pins": "ok", "sources+patches": "ok", "torch_tpu": "skipped", "ulimit -n": "warn",
        "linear smoke": "ok", "lora step": "skipped", "inference": "skipped"}
    assert checks["interpreter"]["detail"].startswith("Python 3.11.")
    size = int(podman.inspect(image)["Size"])
    print(f"torch image: built in {seconds:.0f} s, {size / 1e9:.2f} GB; health check {health_seconds:.1f} s")


# -- a store without room ----------------------------------------------------------------------------------
@pytest.fixture
def full_store(podman: Engine, base: str, tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    """podman with its image store on a tmpfs that holds the base image and 16 MB more."""
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(store)], check=True, timeout=30)
    run = Path(tempfile.mkdtemp(prefix="sd-env-podman-", dir="/run"))
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{store}"\nrunroot = "{run}"\n')
    small = Engine({**podman.env, "CONTAINERS_STORAGE_CONF": str(conf)})
    try:
        archive = tmp_path / "base.tar"
        for got in (podman("save", "-o", str(archive), base), small("load", "-i", str(archive))):
            assert got.returncode == 0, got.stderr
        archive.unlink()
        used = shutil.disk_usage(store).used
        subprocess.run(["mount", "-o", f"remount,size={used + 16 * 2**20}", str(store)], check=True, timeout=30)
        yield small, store
    finally:
        small("rm", "--all", "--force", "--time", "0")
        small("rmi", "--all", "--force")
        subprocess.run(["umount", "--lazy", str(store)], timeout=60)
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.network
@needs_podman
def test_a_store_without_room_is_refused_before_the_build(full_store, base, tiny_image):
    small, store = full_store
    _image, bundle, _log = tiny_image
    got, _ = build(small, bundle, base, "localhost/sd-env-test:full", expect=3)
    assert re.search(rf"error: not enough free space for the build in {store}: about 1\.\dGB needed "
                     r"\(8 times the bundle plus 1 GiB\), \d+(\.\d)?[kM]B free\n", got.stderr), got.stderr
    assert "hint: free some space there (`podman system prune`)" in got.stderr and "STEP" not in got.stdout
    assert small("image", "exists", "localhost/sd-env-test:full").returncode == 1


@pytest.mark.network
@needs_podman
def test_a_build_that_fills_the_disk_says_so(full_store, base, tiny_image):
    """--no-space-check builds anyway; the disk fills inside the RUN step, and the engine's own
    error is followed by build.sh's message about space, not the hint about the bundle."""
    small, store = full_store
    _image, bundle, _log = tiny_image
    got, _ = build(small, bundle, base, "localhost/sd-env-test:full", "--no-space-check", expect=3)
    assert re.search(r"no space left on device", got.stdout + got.stderr, re.I), got.stdout[-2000:]
    assert re.search(rf"error: podman build ran out of disk space \(see above\): \S+ free now in {store}\n"
                     r"hint: the build needs about 1\.\dGB there", got.stderr), got.stderr[-2000:]
    assert "hint: check the bundle" not in got.stderr
    # Inside the RUN, the bundle's own bootstrap said it first (not "run sd-env bundle verify").
    assert re.search(r"error: (could not create the venv|pip could not install sd-env from) \S+: the disk is full\n"
                     r"hint: free space on the disk that holds /opt/sd-env/tool", got.stdout + got.stderr), got.stderr


# -- the default manifest's image: healthy -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.network
@needs_podman
def test_the_real_image_is_healthy_and_holds_no_bundle(podman, base, real_bundle):
    _got, seconds = build(podman, real_bundle, base, "localhost/sd-env-test:sd14", expect=None)
    image = "localhost/sd-env-test:sd14"
    size = int(podman.inspect(image)["Size"])
    base_size = int(podman.inspect(base)["Size"])
    du = podman("run", "--rm", "--network", "none", image, "du", "-sb", "/opt/sd-env", "/opt/sd-env-manifest",
                "/usr/local/bin/sd-env")
    installed = sum(int(line.split()[0]) for line in du.stdout.splitlines())
    bundle_bytes = sum(p.stat().st_size for p in real_bundle.rglob("*") if p.is_file())
    # The image is the base plus the installed environment; a copied bundle would add 2.6 GB more.
    assert size - base_size < installed + 100 * 2**20 < installed + bundle_bytes, (size, base_size, installed)
    started = time.monotonic()
    health = podman.healthcheck(image)
    health_seconds = time.monotonic() - started
    assert health == (0, "", "healthy"), health
    code, checks = podman.verify_quick(image)
    assert code == 0 and checks["linear smoke"]["status"] == "ok", checks
    assert checks["sources+patches"]["status"] == "ok" and checks["interpreter"]["detail"].startswith("Python 3.9.")
    print(f"real image: built in {seconds:.0f} s, {size / 1e9:.2f} GB (base {base_size / 1e9:.2f} GB, "
          f"environment {installed / 1e9:.2f} GB, bundle {bundle_bytes / 1e9:.2f} GB); "
          f"health check {health_seconds:.1f} s")
