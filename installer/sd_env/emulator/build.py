"""Build the emulator against the torch of the interpreter running this script.

    python build.py check          -> JSON: versions, compiler, headers
    python build.py build OUTDIR   -> OUTDIR/torch_tpu (Python package + _C extension), JSON

Run by sd-env with the target's interpreter (never imported by sd-env).
Compiles the C++ files in parallel with torch.utils.cpp_extension's include
paths and flags, without needing ninja in the target environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compiler() -> str | None:
    wanted = os.environ.get("CXX")
    if wanted:
        return shutil.which(wanted.split()[0]) and wanted
    return next((name for name in ("c++", "g++", "clang++") if shutil.which(name)), None)


def check() -> dict:
    from importlib import metadata  # not `import torch`: that alone takes seconds

    try:
        torch = metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        torch = None
    include = Path(sysconfig.get_paths()["include"])
    return {"torch": torch, "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "compiler": compiler(), "headers": (include / "Python.h").is_file(), "include": str(include),
            "machine": sysconfig.get_platform()}


def build(out: Path) -> dict:
    import torch
    from torch.utils import cpp_extension

    cxx = compiler()
    assert cxx, "no C++ compiler"
    started = time.monotonic()
    package = out / "torch_tpu"
    shutil.copytree(HERE / "torch_tpu", package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    objects = out / "obj"
    objects.mkdir()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O2", "-std=c++17", "-fPIC", "-w", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{sysconfig.get_paths()['include']}"]
    flags += [f"-I{p}" for p in cpp_extension.include_paths()]
    # torch's own pybind11 ABI tags (as cpp_extension reads them): with other ones the extension gets
    # pybind11 internals of its own and cannot take torch's objects (the sccl backend takes a gloo one).
    flags += [f'-DPYBIND11_{name}="{getattr(torch._C, f"_PYBIND11_{name}")}"'
              for name in ("COMPILER_TYPE", "STDLIB", "BUILD_ABI") if getattr(torch._C, f"_PYBIND11_{name}", None)]
    sources = sorted((HERE / "csrc").glob("*.cpp"))
    jobs = max(1, os.cpu_count() or 1)
    running: list[tuple[Path, subprocess.Popen]] = []
    for source in sources:
        while len(running) >= jobs:
            _finish(running.pop(0))
        cmd = [*cxx.split(), *flags, "-c", str(source), "-o", str(objects / (source.stem + ".o"))]
        running.append((source, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
    while running:
        _finish(running.pop(0))
    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    target = package / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    link = [*cxx.split(), "-shared", *map(str, sorted(objects.glob("*.o"))), *libs, "-o", str(target)]
    subprocess.run(link, check=True)
    shutil.rmtree(objects)
    return {"ok": True, "seconds": round(time.monotonic() - started, 1), "extension": str(target)}


def _finish(job: tuple[Path, subprocess.Popen]) -> None:
    source, proc = job
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err)
        raise SystemExit(f"compiling {source.name} failed (exit {proc.returncode})")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        print(json.dumps(check()))
    else:
        print(json.dumps(build(Path(sys.argv[2]))))
