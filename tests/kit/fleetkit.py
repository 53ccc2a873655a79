"""A fleet of hosts on one machine, for the Ansible tests: network namespaces on a bridge.

Each host is a network namespace with one veth on a private bridge in the root
namespace (a /24 of its own, no default route: the hosts reach each other and the
control machine's bridge address, nothing else), and its own sshd started through
`ip netns exec NS unshare --mount --uts`, so it also has its own hostname and its
own mounts: a private folder bind-mounted at the same path on every host (its
install folder), a tmpfs on /run, and private overlays on the paths a test asks
for (/var/lib/dpkg and /usr/local/bin for the driver packages: the hosts share the
machine's root filesystem, and a package "installed" on one host must not appear
on the others or stay on the machine), and empty folders over paths a host must
not see (pyenv's Pythons, for a host without Python 3.9). Host keys and a client key are generated;
the inventory and known_hosts files are written for Ansible.

Teardown (always, from `__exit__`): every pid in each namespace is killed (the
listening sshd and its per-connection children, which would keep a namespace
alive), then the veths, the bridge and the namespaces are deleted. Every command
is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "deploy" / "ansible"

STEP_TIMEOUT = 30.0  # any one ip/ssh-keygen/mount command
SSH_UP_TIMEOUT = 20.0  # an sshd to accept connections
PRIVATE = "private"  # the folder every host sees at Fleet.mount, its own behind it


def run(*argv: str, timeout: float = STEP_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def available() -> str | None:
    """None when this machine has what a fleet needs (root, ip, unshare, ssh, sshd), else why not;
    cheap (no namespace is made: see netns_works)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mounts)"
    missing = [tool for tool in ("ip", "unshare", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("sshd (apt-get install openssh-server; .ci/run does)")
    if missing:
        return f"needs {', '.join(missing)}"
    return None


def netns_works() -> str | None:
    """None when a network namespace can be made here (a container may forbid it), else why not."""
    probe = run("ip", "netns", "add", f"sdfprobe{os.getpid()}", check=False)
    run("ip", "netns", "del", f"sdfprobe{os.getpid()}", check=False)
    return f"cannot make a network namespace: {probe.stderr.strip()}" if probe.returncode != 0 else None


@dataclass
class Host:
    name: str  # the inventory name and the host's hostname
    ns: str
    address: str
    root: Path  # this host's folder on the control machine (keys, config, private mounts)
    process: subprocess.Popen | None = None

    @property
    def private(self) -> Path:
        """What the host sees at Fleet.mount, seen from the control machine."""
        return self.root / PRIVATE

    def pids(self) -> list[int]:
        got = run("ip", "netns", "pids", self.ns, check=False)
        return [int(p) for p in got.stdout.split()] if got.returncode == 0 else []


@dataclass
class Fleet:
    """`count` hosts under `where`; use as a context manager (teardown always runs)."""

    where: Path
    count: int = 2
    overlays: tuple[str, ...] = ()  # root-filesystem folders each host gets a private writable copy of
    empties: tuple[str, ...] = ()  # root-filesystem folders each host sees as a private empty folder
    hidden: dict[str, tuple[str, ...]] = field(default_factory=dict)  # host name -> folders it sees empty
    hosts: list[Host] = field(default_factory=list)
    tag: str = field(default_factory=lambda: f"sdf{os.getpid() % 100000}")
    subnet: str = ""

    @property
    def mount(self) -> Path:
        """The same path on every host, each with its own folder behind it (install folders go here)."""
        return self.where / "mnt"

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def key(self) -> Path:
        return self.where / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.where / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.where / "inventory.ini"

    def __enter__(self) -> Fleet:
        try:
            self._up()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- bring-up -----------------------------------------------------------------------------------------
    def _up(self) -> None:
        self.where.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(exist_ok=True)
        self.subnet = self.subnet or _free_subnet()
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-client", "-f", str(self.key))
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            host = Host(f"node{i}", f"{self.tag}n{i}", f"{self.subnet}.{10 + i}", self.where / f"node{i}")
            self.hosts.append(host)
            self._network(host, i)
            self._sshd(host)
        known = []
        for host in self.hosts:
            _wait_for_port(host.address, 22, SSH_UP_TIMEOUT, host)
            pub = (host.root / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{host.address} {pub[0]} {pub[1]}\n")
        self.known_hosts.write_text("".join(known))
        self._write_inventory()

    def _network(self, host: Host, i: int) -> None:
        outside, inside = f"{self.tag}v{i}", f"{self.tag}p{i}"
        run("ip", "netns", "add", host.ns)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.ns)
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        inns = ("ip", "netns", "exec", host.ns)
        run(*inns, "ip", "link", "set", "lo", "up")
        run(*inns, "ip", "link", "set", inside, "name", "eth0")
        run(*inns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        run(*inns, "ip", "link", "set", "eth0", "up")

    def _sshd(self, host: Host) -> None:
        host.private.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f",
            str(host.root / "ssh_host_ed25519_key"))
        shutil.copy(self.key.with_suffix(".pub"), host.root / "authorized_keys")
        config = host.root / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {host.address}", "Port 22", f"HostKey {host.root / 'ssh_host_ed25519_key'}",
            f"PidFile {host.root / 'sshd.pid'}", f"AuthorizedKeysFile {host.root / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "PrintMotd no", "UseDNS no", "MaxStartups 50",
            "Subsystem sftp internal-sftp", ""]))
        # Inside the host's own mount and UTS namespaces: its hostname, its private folder at the
        # shared path, its own /run (sshd needs /run/sshd), and private overlays; then sshd.
        lines = ["set -e", f"hostname {host.name}", f"mount --bind {host.private} {self.mount}",
                 "mount -t tmpfs -o mode=755 tmpfs /run", "mkdir -m 755 /run/sshd"]
        for n, folder in enumerate(self.overlays):
            upper, work = host.root / f"overlay{n}" / "upper", host.root / f"overlay{n}" / "work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t overlay overlay -o lowerdir={folder},upperdir={upper},workdir={work} {folder}")
        for n, folder in enumerate((*self.empties, *self.hidden.get(host.name, ()))):
            (host.root / f"empty{n}").mkdir(exist_ok=True)
            lines.append(f"mount --bind {host.root / f'empty{n}'} {folder}")
        lines.append(f"exec /usr/sbin/sshd -D -e -f {config}")
        log = open(host.root / "sshd.log", "wb")  # noqa: SIM115 (sshd's own log, closed when the host goes)
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, "unshare", "--mount", "--uts", "--propagation", "private",
             "sh", "-c", "\n".join(lines)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def _write_inventory(self) -> None:
        ssh_args = f"-F /dev/null -o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes"
        lines = ["[fleet]"]
        # Each host's Ansible scratch space is in its private folder: the hosts share /root.
        lines += [f"{h.name} ansible_host={h.address} ansible_remote_tmp={self.mount}/.ansible-tmp" for h in self.hosts]
        # The hosts' system Python (root's shell here may put pyenv shims first on the PATH).
        lines += ["", "[fleet:vars]", "ansible_user=root", "ansible_python_interpreter=/usr/bin/python3",
                  f"ansible_ssh_private_key_file={self.key}",
                  f"ansible_ssh_common_args='{ssh_args}'", ""]
        self.inventory.write_text("\n".join(lines))

    # -- teardown -----------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Kill every process in each namespace, then delete veths, bridge and namespaces (idempotent).
        Every step is tried even when one fails; the first failure is raised at the end."""
        problems: list[BaseException] = []
        for host in self.hosts:
            try:
                _kill_all(host)
                if host.process is not None:
                    host.process.wait(timeout=STEP_TIMEOUT)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                problems.append(exc)
        for i, host in enumerate(self.hosts, start=1):
            for argv in (("ip", "link", "del", f"{self.tag}v{i}"), ("ip", "netns", "del", host.ns)):
                try:
                    run(*argv, check=False)
                except subprocess.SubprocessError as exc:
                    problems.append(exc)
        try:
            run("ip", "link", "del", self.bridge, check=False)
        except subprocess.SubprocessError as exc:
            problems.append(exc)
        if problems:
            raise problems[0]

    def set_link(self, host: Host, up: bool) -> None:
        """Take `host` off the network (its veth's bridge end down: nothing reaches it) or back on."""
        run("ip", "link", "set", f"{self.tag}v{self.hosts.index(host) + 1}", "up" if up else "down")

    def host_ssh(self, host: Host, command: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        """`command` on `host` over ssh, as Ansible connects."""
        return run("ssh", "-F", "/dev/null", "-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                   "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{host.address}", command,
                   timeout=timeout, check=False)


def _kill_all(host: Host, timeout: float = STEP_TIMEOUT) -> None:
    """TERM then KILL every pid in the namespace until none is left (or `timeout`)."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        pids = host.pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.kill(pid, sig)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.ns}: pids {pids} survive SIGKILL")
        time.sleep(0.2)
        sig = signal.SIGKILL  # after one polite round


def _free_subnet() -> str:
    """A 10.x.y/24 no route of this machine covers (checked against `ip -4 route`)."""
    taken = run("ip", "-4", "route").stdout + run("ip", "-4", "addr").stdout
    for n in range(os.getpid() % 200, os.getpid() % 200 + 200):
        candidate = f"10.{231 + n // 250 % 20}.{n % 250}"
        if f"{candidate}." not in taken:
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet for the fleet bridge")


def _wait_for_port(address: str, port: int, timeout: float, host: Host) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.process is not None and host.process.poll() is not None:
            raise RuntimeError(f"{host.name}: sshd exited ({host.process.returncode}): "
                               f"{(host.root / 'sshd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{host.name}: sshd not listening on {address}:{port} after {timeout:.0f} s")


# -- the control machine: ansible-core in its own venv, and playbook runs -------------------------------------
def control_python() -> str | None:
    """A Python >= 3.11 for ansible-core 2.19, found as scripts/find-python.sh finds one, or as
    python3.N on the PATH; the venv running the tests (Python 3.9) is not on that PATH: the
    control machine's Python is the system's."""
    venvs = [v + os.sep for v in (os.environ.get("VIRTUAL_ENV"), sys.prefix if sys.prefix != sys.base_prefix else None)
             if v]
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not any((p + os.sep).startswith(v) for v in venvs))
    env = {k: v for k, v in os.environ.items() if k not in ("SD_ENV_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = path
    got = subprocess.run(["bash", "-c", f". {ROOT / 'scripts' / 'find-python.sh'} && find_python 11"], env=env,
                         capture_output=True, text=True, timeout=STEP_TIMEOUT)
    found = got.stdout.strip() or next(filter(None, (shutil.which(f"python3.{n}", path=path) for n in (13, 12, 11))),
                                       None)
    return found or None


def control_venv(where: Path, python: str) -> Path:
    """A venv with deploy/ansible/requirements.txt installed; returns its bin folder."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, timeout=300)
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(ANSIBLE / "requirements.txt")], check=True, timeout=600)
    return where / "bin"


_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


@dataclass
class Played:
    """One ansible-playbook run: exit code, output, seconds, each host's PLAY RECAP counts, and
    each output line with the second it appeared (for per-host timings)."""

    code: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]
    lines: list[tuple[float, str]] = field(default_factory=list)

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}

    def task_started(self, task: str) -> float | None:
        """When the header of the first task whose name starts with `task` appeared."""
        return next((t for t, line in self.lines if line.startswith(f"TASK [sd_env : {task}")), None)

    def host_done(self, task: str, host: str) -> float | None:
        """When `host`'s result of the first task named `task...` appeared (None: not run for it)."""
        inside = False
        for t, line in self.lines:
            if line.startswith("TASK ["):
                if inside:
                    return None
                inside = line.startswith(f"TASK [sd_env : {task}")
            elif inside and line.startswith(("ok:", "changed:", "fatal:")) and f"[{host}" in line:
                return t
        return None


def playbook(bin_dir: Path, fleet: Fleet, variables: dict, *extra: str, timeout: float = 3600.0,
             echo: bool = False) -> Played:
    """deploy/ansible/site.yml over the fleet's inventory, with `variables` as extra vars."""
    scratch = fleet.where / "ansible"
    scratch.mkdir(exist_ok=True)
    (scratch / "vars.json").write_text(json.dumps(variables))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_HOME": str(scratch / "home"),
           "ANSIBLE_LOCAL_TEMP": str(scratch / "tmp"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(scratch / "cp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen([str(bin_dir / "ansible-playbook"), "-i", str(fleet.inventory), str(ANSIBLE / "site.yml"),
                           "-e", f"@{scratch / 'vars.json'}", *extra], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        killer = threading.Timer(timeout, proc.kill)  # bounded like every other step
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))
                if echo:
                    print(f"{lines[-1][0]:7.1f} {lines[-1][1]}", flush=True)
        finally:
            killer.cancel()
    output = "\n".join(line for _, line in lines)
    recap = {m.group(1): {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
             for m in _RECAP.finditer(output[output.rfind("PLAY RECAP"):])}
    return Played(proc.returncode, output, time.monotonic() - started, recap, lines)
