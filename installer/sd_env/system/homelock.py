"""One lock per home: two sd-env runs that write never interleave.

`fcntl.flock` on `<home>/sd-env.lock`: the kernel drops it when the holder
dies, even by kill -9, so a lock is never stale; only the pid and command
written into the file can be (a run that was killed leaves them). Holding
the lock, a run also owns the home's scratch space, and removes the
temporary files a killed run left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sd_env.errors import InputError, SdEnvError
from sd_env.report import progress
from sd_env.system import faults, fsutil
from sd_env.system.paths import Paths


class Busy(SdEnvError):
    """Another sd-env run holds the home's lock (exit 3)."""

    exit_code = 3


@contextmanager
def hold(paths: Paths, command: str, *, wait: bool, extra: tuple[Path, ...] = ()) -> Iterator[None]:
    """Hold the home's lock for the block; `extra` folders are also cleaned of leftover temporary files."""
    try:
        paths.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(paths.home, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise Busy(f"another sd-env run ({holder}) is using {paths.home}",
                           "wait for it to finish and run again, or pass --wait to wait for it") from None
            progress(f"waiting for another sd-env run ({holder}) to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        stale = _holder(fd, default="")
        if stale:
            progress(f"a previous sd-env run ({stale}) was killed before it finished (its lock went with it); "
                     "this run completes its work")
        _write(fd, f"{os.getpid()} {command}\n")
        gits = sorted(paths.src.glob("*/.git")) + sorted(paths.repatch.glob("*/.git"))
        cleaned = fsutil.remove_leftovers([paths.home, paths.repatch, paths.wheels, *gits, *extra])
        if cleaned:
            progress(f"removed {len(cleaned)} temporary files of an interrupted run: "
                     + ", ".join(p.name for p in cleaned[:3]) + (" ..." if len(cleaned) > 3 else ""))
        shutil.rmtree(paths.work, ignore_errors=True)  # scratch belongs to the run holding the lock
        faults.point("locked")
        try:
            yield
        finally:
            shutil.rmtree(paths.work, ignore_errors=True)
            _write(fd, "")  # a run that ends, even by an error, leaves no holder behind; kill -9 does
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int, default: str = "pid unknown") -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
    pid, _, command = raw.partition(" ")
    if not pid.isdigit():
        return default
    return f"pid {pid}, `{command or '?'}`"


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)


def _unwritable(home: Path, exc: OSError) -> InputError:
    why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable",
           errno.EPERM: "is not writable", errno.ENOSPC: "is on a full disk"}.get(exc.errno or 0, exc.strerror)
    return InputError(f"the sd-env home {home} {why}",
                      "pass --home (or set SD_ENV_HOME) to a writable folder with free space")
