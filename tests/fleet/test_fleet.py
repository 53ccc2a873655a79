"""deploy/ansible over a fleet of two hosts on this machine (tests/kit/fleetkit.py): network
namespaces on a bridge, each with its own sshd, hostname and private install folder.

The bundle is test_bundle.py's small manifest (a tiny upstream in git + a patch, a
lock of six and idna). verify --quick needs torch for its Linear row: each host's
target (sd_env_python) is a venv of its own that sees the torch 2.1 environment's
site-packages through a .pth file (conftest's emulator_target), hence `slow`.
The tests run in order and share the fleet: first run, second run, a host off the network
(its old report forgotten, listed missing), a broken host and its repair, then the driver
stand-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import run_in
from tests.kit import fleetkit
from tests.kit.bundlekit import BUILD_PINS, PINS, make_project

why_not = fleetkit.available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not is not None, reason=f"skipped: {why_not}")]

PATCHED = Path("src") / "tinypkg" / "core.py"  # the file tpu.diff patches
STANDIN = "sophon-driver-standin"
STANDIN_VERSION = "0.0.0-standin"


@pytest.fixture(scope="module")
def ansible_bin(tmp_path_factory) -> Path:
    python = fleetkit.control_python()
    if python is None:
        pytest.skip("skipped: no Python >= 3.11 for ansible-core 2.19 (the control machine's)")
    return fleetkit.control_venv(tmp_path_factory.mktemp("control") / "venv", python)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fleet-bundle")
    # setuptools and wheel in the lock: a venv the install makes itself (node2's, without Python 3.9)
    # builds the component with them; the torch targets already have these very versions
    project, _ = make_project(root, pins={**PINS, **BUILD_PINS})
    out = root / "bundle"
    assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home)]) == 0
    return out


PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, emulator_target, standalone_mirror):
    """Two hosts, each with its own dpkg database, /usr/local/bin and /var/log (overlays: a package
    installed on one host appears neither on the other nor on this machine, nor in its dpkg.log) and
    a target venv seeing torch. node2 sees pyenv's folder empty: no Python 3.9 of its own (its
    target venv's base is the session mirror's standalone 3.9, unpacked outside pyenv)."""
    cannot = fleetkit.netns_works()
    if cannot:
        pytest.skip(f"skipped: {cannot}")
    torch_python, _ = emulator_target
    torch_site = run_in(torch_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    where = tmp_path_factory.mktemp("fleet")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    archive = next(standalone_mirror.root.glob(f"*/cpython-{here}.*.tar.gz"))
    (where / "python-base").mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(where / "python-base")], check=True, timeout=120)
    base = where / "python-base" / "python" / "bin" / f"python{here}"
    hidden = {"node2": (str(PYENV),)} if PYENV.is_dir() else {}
    try:
        with fleetkit.Fleet(where, 2, overlays=("/var/lib/dpkg", "/usr/local/bin", "/var/log"), hidden=hidden) as fleet:
            for host in fleet.hosts:
                target = host.private / "target"
                subprocess.run([str(base), "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
                site = run_in(target / "bin" / "python", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                Path(site, "_torch_env.pth").write_text(torch_site + "\n")
            yield fleet
    finally:
        _purge_standin()


def _purge_standin() -> None:
    """The stand-in lives in the hosts' private dpkg overlays only; if it ever reached this machine, purge it."""
    if subprocess.run(["dpkg-query", "-W", STANDIN], capture_output=True).returncode == 0:
        subprocess.run(["dpkg", "--purge", STANDIN], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def variables(fleet, small_bundle, tmp_path_factory) -> dict:
    return {"sd_env_bundle": str(small_bundle), "sd_env_bundle_id": sha256_of(small_bundle / "index.json"),
            "sd_env_home": str(fleet.mount / "home"),
            "sd_env_reports": str(tmp_path_factory.mktemp("reports")),
            "sd_env_python": str(fleet.mount / "target" / "bin" / "python"), "sd_env_verify": "quick"}


def play(ansible_bin: Path, fleet: fleetkit.Fleet, variables: dict, *extra: str) -> fleetkit.Played:
    got = fleetkit.playbook(ansible_bin, fleet, variables, *extra)
    print(f"ansible-playbook {' '.join(extra)}: {got.seconds:.1f} s, changed {got.changed()}")
    return got


def reports(variables: dict) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(variables["sd_env_reports"]).glob("*.json"))}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def failed_checks(doc: dict) -> list[str]:
    return [c["name"] for c in doc["checks"] if c["status"] == "fail"]


@pytest.fixture(scope="module")
def first(ansible_bin, fleet, variables) -> fleetkit.Played:
    return play(ansible_bin, fleet, variables)


def fleet_report(variables: dict, capsys, *extra: str) -> tuple[int, dict[str, dict]]:
    """`sd-env fleet-report REPORTS --json` on the control machine: its exit code and its hosts by name."""
    capsys.readouterr()
    code = main(["fleet-report", variables["sd_env_reports"], "--json", *extra])
    doc = json.loads(capsys.readouterr().out)
    return code, {h["name"]: h for h in doc["hosts"]}


def results(output: str, task: str) -> list[str]:
    """The result lines (ok/changed/skipping/fatal) of the task named `task` in a playbook's output."""
    section = output.split(f"TASK [sd_env : {task}")[-1].split("TASK [")[0]
    return [line for line in section.splitlines() if line.startswith(("ok:", "changed:", "skipping:", "fatal:"))]


def test_a_bundle_with_another_id_is_refused_by_every_host_with_nothing_installed(ansible_bin, fleet, variables):
    """Runs before the first real run: nothing may reach or be installed on any host."""
    wrong = {**variables, "sd_env_bundle_id": "0" * 64}
    got = play(ansible_bin, fleet, wrong)
    assert got.code != 0 and got.recap["node1"]["failed"] == got.recap["node2"]["failed"] == 1, got.output[-6000:]
    assert f"is bundle {variables['sd_env_bundle_id']}, not sd_env_bundle_id {'0' * 64}: refused" in got.output
    unanchored = play(ansible_bin, fleet, {**variables, "sd_env_bundle_id": ""})
    assert unanchored.code != 0 and "the bundle is unanchored: set sd_env_bundle_id" in unanchored.output
    for host in fleet.hosts:
        assert not (host.private / "home").exists()


def test_the_first_run_installs_every_host_from_the_bundle(first, fleet, variables, capsys):
    assert first.code == 0, first.output[-6000:]
    assert set(first.recap) == {"node1", "node2"}
    for host in fleet.hosts:
        assert first.recap[host.name]["failed"] == 0 and first.recap[host.name]["changed"] > 0
        home = host.private / "home"
        assert "torch_tpu.GradScaler" in (home / "src" / "tinypkg" / PATCHED).read_text()
        assert json.loads((home / "state.json").read_text())["components"]["tinypkg"]["patches"]
        index = Path(variables["sd_env_bundle"]) / "index.json"
        assert (home / "bundle.copied").read_text().strip() == sha256_of(index)  # the copy's mark
    docs = reports(variables)
    assert set(docs) == {"node1", "node2"}
    for name, doc in docs.items():
        assert doc["exit_code"] == 0 and failed_checks(doc) == [], (name, doc["checks"])
        assert doc["host"] == name  # each host's own hostname, from its own UTS namespace
    code, hosts = fleet_report(variables, capsys)
    assert code == 0
    assert [(h["ready"], h["differs"], h["hostname"]) for h in hosts.values()] == [(True, [], "node1"),
                                                                                (True, [], "node2")]
    assert hosts["node1"]["versions"] == hosts["node2"]["versions"] and "tinypkg v1.0" in hosts["node1"]["versions"]


def test_a_second_run_changes_nothing(first, ansible_bin, fleet, variables):
    again = play(ansible_bin, fleet, variables)
    assert again.code == 0, again.output[-6000:]
    assert again.changed() == {"node1": 0, "node2": 0}, again.output[-6000:]
    # the host's copy of this bundle is marked complete: not one file is compared or sent
    assert sorted(results(again.output, "Copy the tar to the host")) == ["skipping: [node1]", "skipping: [node2]"]


def test_a_host_that_is_down_keeps_no_ready_report(first, ansible_bin, fleet, variables, capsys):
    """node2 off the network: the play forgets its previous report before contacting it, so the
    fleet report lists it as missing, never with its last "ready"; and node1's report, already some
    seconds old, is stale for a --max-age shorter than that."""
    node2 = fleet.hosts[1]
    report = Path(variables["sd_env_reports"]) / "node2.json"
    assert json.loads(report.read_text())["exit_code"] == 0  # the runs above left it ready
    fleet.set_link(node2, up=False)
    try:
        # a new ssh connection (not the runs' shared one, which would hang on the dead link), given up after 3 s
        down = play(ansible_bin, fleet, {**variables, "ansible_ssh_args": "-o ControlMaster=no -o ConnectTimeout=3"},
                    "--tags", "verify", "--limit", "node2")
    finally:
        fleet.set_link(node2, up=True)
    assert down.recap["node2"]["unreachable"] == 1, down.output[-3000:]
    assert not report.exists()
    code, hosts = fleet_report(variables, capsys, "--inventory", str(fleet.inventory))
    assert code == 1 and hosts["node1"]["ready"]
    assert (hosts["node2"]["ready"], hosts["node2"]["missing"], hosts["node2"]["report"]) == (False, True, "missing")
    code, hosts = fleet_report(variables, capsys, "--max-age", "1")
    assert code == 1 and hosts["node1"]["stale"] and not hosts["node1"]["ready"]


def test_a_broken_host_is_reported_and_the_next_run_repairs_it(first, ansible_bin, fleet, variables, capsys):
    node1 = fleet.hosts[0]
    (node1.private / "home" / "src" / "tinypkg" / PATCHED).unlink()
    read = play(ansible_bin, fleet, variables, "--tags", "verify")
    assert read.code != 0 and read.recap["node1"]["failed"] == 1 and read.recap["node2"]["failed"] == 0
    assert read.changed() == {"node1": 0, "node2": 0}
    assert "node1 is not ready: verify failed: sources+patches" in read.output, read.output[-6000:]
    code, hosts = fleet_report(variables, capsys)
    assert code == 1
    assert (hosts["node1"]["ready"], hosts["node1"]["failed"]) == (False, ["sources+patches"])
    assert (hosts["node2"]["ready"], hosts["node2"]["failed"]) == (True, [])

    repair = play(ansible_bin, fleet, variables)
    assert repair.code == 0, repair.output[-6000:]
    assert repair.changed()["node1"] > 0 and repair.changed()["node2"] == 0
    # the change is the install's (it restored and re-patched the file), on node1 only
    assert sorted(results(repair.output, "Run the bundle's bootstrap.sh")) == ["changed: [node1]", "ok: [node2]"]
    assert "torch_tpu.GradScaler" in (node1.private / "home" / "src" / "tinypkg" / PATCHED).read_text()
    code, hosts = fleet_report(variables, capsys)
    assert code == 0 and all(h["ready"] for h in hosts.values())


def test_a_damaged_bundle_copy_is_named_then_only_its_bad_file_is_sent_again(first, ansible_bin, fleet, variables):
    node2 = fleet.hosts[1]
    index = json.loads((Path(variables["sd_env_bundle"]) / "index.json").read_text())
    wheel = next(m["path"] for m in index["members"] if m["kind"] == "package")
    copy = node2.private / "home" / "bundle" / wheel
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))

    failed = play(ansible_bin, fleet, variables)
    assert failed.recap["node2"]["failed"] == 1 and failed.recap["node1"]["failed"] == 0
    said = "node2 is not ready: the install failed (bootstrap.sh exit 1): error: bundle member"
    assert f"{said} {wheel}" in failed.output, failed.output[-6000:]
    assert (node2.private / "home" / "bundle.copied").read_text() == "damaged\n"  # the next run compares every file

    healed = play(ansible_bin, fleet, variables)
    assert healed.code == 0, healed.output[-6000:]
    assert "(item=1 files)" in healed.output  # the one damaged wheel travelled, to node2 only
    assert sorted(results(healed.output, "Copy the tar to the host")) == ["changed: [node2]", "skipping: [node1]"]
    assert healed.changed()["node1"] == 0
    assert sha256_of(copy) == next(m["sha256"] for m in index["members"] if m["path"] == wheel)


def test_the_bundle_is_never_copied_into_a_folder_of_someone_elses(first, ansible_bin, fleet, variables):
    """Pruning deletes what the bundle does not list: a destination holding a user's files (and no
    mark of the role's) is refused with those files untouched; the home itself is refused at once."""
    for host in fleet.hosts:
        (host.private / "data" / "datasets").mkdir(parents=True)
        (host.private / "data" / "state.json").write_text("{}")
        (host.private / "data" / "datasets" / "captions.jsonl").write_text('{"text": "mine"}\n')
    got = play(ansible_bin, fleet, {**variables, "sd_env_bundle_dest": str(fleet.mount / "data")}, "--tags", "bundle")
    assert got.recap["node1"]["failed"] == got.recap["node2"]["failed"] == 1, got.output[-6000:]
    assert "holds files and was not made by this role" in got.output
    for host in fleet.hosts:
        assert sorted(p.name for p in (host.private / "data").rglob("*")) == ["captions.jsonl", "datasets",
                                                                             "state.json"]
    home = play(ansible_bin, fleet, {**variables, "sd_env_bundle_dest": variables["sd_env_home"]}, "--tags", "bundle")
    assert home.code != 0 and "not the home, nor a folder above it" in home.output


def test_a_host_without_python_3_9_gets_a_working_environment_from_the_bundles_python(first, ansible_bin, fleet,
                                                                                     variables, emulator_target):
    """node2 has no Python 3.9 of its own (pyenv's folder is empty there, its PATH has no python3.9)
    and no sd_env_python: its bootstrap.sh unpacks the bundle's standalone Python for sd-env's own
    venv and the target venv. The small bundle carries no torch, so before verify the test lets
    that venv see the torch environment's other packages (as the fixture does for the other targets)."""
    node2 = fleet.hosts[1]
    seen = fleet.host_ssh(node2, "command -v python3.9 pyenv; python3 -c 'import sys; print(sys.version_info[1])'")
    assert "python3.9" not in seen.stdout and "pyenv" not in seen.stdout and seen.stdout.split()[-1] != "9", seen
    home = fleet.mount / "home-nopy"
    given = {**variables, "sd_env_home": str(home), "sd_env_python": ""}
    got = play(ansible_bin, fleet, given, "--limit", "node2", "--tags", "bundle,install")
    assert results(got.output, "Run the bundle's bootstrap.sh") == ["changed: [node2]"], got.output[-6000:]
    index = json.loads((Path(variables["sd_env_bundle"]) / "index.json").read_text())
    stem = index["interpreter"][len("python/"):-len(".tar.gz")]
    private = node2.private / "home-nopy"
    for venv in ("tool", "venv"):
        cfg = (private / venv / "pyvenv.cfg").read_text()
        assert f"home = {home / 'python' / stem / 'bin'}" in cfg, (venv, cfg)
    torch_python, _ = emulator_target
    torch_site = Path(run_in(torch_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    site = private / "venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "_torch_env.pth").write_text(f"{torch_view(torch_site, site, private.parent / 'torch-view')}\n")
    checked = play(ansible_bin, fleet, given, "--limit", "node2", "--tags", "verify")
    assert checked.code == 0, checked.output[-6000:]
    doc = reports(variables)["node2"]
    assert doc["exit_code"] == 0 and failed_checks(doc) == [] and doc["python"] == f"{home}/venv/bin/python"


def torch_view(torch_site: Path, site: Path, view: Path) -> Path:
    """A folder of links to what `torch_site` holds, less every distribution and top-level name `site`
    already has (two copies of one distribution fail verify's pins row)."""
    def project(name: str) -> str:
        return name.split("-")[0].lower().replace("_", "-")

    own = {project(p.name) for p in site.glob("*.dist-info")} | {p.name for p in site.iterdir()}
    view.mkdir(exist_ok=True)
    for entry in torch_site.iterdir():
        if entry.suffix == ".pth" or entry.name in own or (entry.suffix in (".dist-info", ".egg-info")
                                                           and project(entry.name) in own):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def standin_deb(where: Path, version: str = STANDIN_VERSION) -> Path:
    """A tiny .deb standing in for Sophgo's driver package: only a bm-smi that prints a version."""
    root = where / f"standin-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {STANDIN}\nVersion: {version}\nArchitecture: all\nMaintainer: sd-env tests "
        "<tests@sd-env.invalid>\nDescription: stand-in for Sophgo's libsophon driver (sd-env's fleet test)\n"
        " Not a driver: installs only a bm-smi script that prints a made-up driver version.\n")
    smi = root / "usr" / "local" / "bin" / "bm-smi"
    smi.parent.mkdir(parents=True)
    smi.write_text("#!/bin/sh\n# stand-in: the line `bm-smi --noloop --text_format` prints on a card's host\n"
                   f"echo '| SDK Version: 0.0.0    Driver Version: {version} |'\n")
    smi.chmod(0o755)
    deb = where / f"{STANDIN}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return deb


def test_driver_packages_are_installed_from_the_named_files_once(first, ansible_bin, fleet, variables, tmp_path,
                                                                 capsys):
    """The hosts' dpkg databases and /usr/local/bin are private overlays: the stand-in is installed on
    each host for real (dpkg -i) and never on this machine. A driver without Sophgo's torch_tpu is a
    host that is not ready, and verify says so: the torch_tpu row fails naming the driver."""
    given = {**variables, "sd_env_driver_debs": [str(standin_deb(tmp_path))]}
    # the driver step and the report (the bundle and install steps are the tests' above: CI time)
    got = play(ansible_bin, fleet, given, "--tags", "driver,verify")
    assert got.recap["node1"]["failed"] == got.recap["node2"]["failed"] == 1, got.output[-6000:]
    assert sorted(results(got.output, "Install them with dpkg -i")) == ["changed: [node1]", "changed: [node2]"]
    for host in fleet.hosts:
        listed = fleet.host_ssh(host, f"dpkg-query -W -f '${{Version}}' {STANDIN}")
        assert listed.stdout == STANDIN_VERSION, listed.stdout + listed.stderr
    for name, doc in reports(variables).items():
        assert doc["facts"]["driver"]["version"] == STANDIN_VERSION, (name, doc["facts"]["driver"])
        assert failed_checks(doc) == ["torch_tpu"]
        torch_tpu = next(c for c in doc["checks"] if c["name"] == "torch_tpu")
        assert "the SC7 driver is present" in torch_tpu["detail"] and "torch_tpu does not import" in torch_tpu["detail"]
    code, hosts = fleet_report(variables, capsys)
    assert code == 1 and [h["driver"] for h in hosts.values()] == [STANDIN_VERSION, STANDIN_VERSION]

    again = play(ansible_bin, fleet, given, "--tags", "driver,verify")
    assert again.changed() == {"node1": 0, "node2": 0}, again.output[-6000:]
    assert sorted(results(again.output, "Install them with dpkg -i")) == ["skipping: [node1]", "skipping: [node2]"]
    # this machine never had it
    assert subprocess.run(["dpkg-query", "-W", STANDIN], capture_output=True).returncode != 0
    assert not Path("/usr/local/bin/bm-smi").exists()
