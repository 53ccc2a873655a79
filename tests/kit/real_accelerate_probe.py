#!/usr/bin/env python
"""Probe the real (patched) accelerate 0.16.0 on sd-env's emulated ``torch_tpu``.

Run it with the target interpreter: one that can import torch (2.1) and the
accelerate checkout patched with ``patches/accelerate-0.16.0-tpu.diff``.
There is no Sophgo card here: ``--torch-tpu DIR`` is the folder of sd-env's
emulation (``emulation.build(...).pythonpath``), put first on PYTHONPATH of
each child, so ``torch.device("tpu:0")`` is a real PrivateUse1 device and
``torch_tpu.tpu.amp.GradScaler`` the emulation's CUDA-like scaler.

Each variant runs in a fresh interpreter (the backend rename and accelerate's
shared state are process-wide) with ``ACCELERATE_TORCH_DEVICE=tpu:0`` and
creates ``Accelerator(mixed_precision="fp16")``:

* ``patched``: the installed accelerate; the scaler must be torch_tpu's
  GradScaler, built with the GradScalerKwargs handler's kwargs (init_scale).  The child
  does not import torch_tpu itself: the patched accelerate must do it.
* ``patched-no-torch_tpu``: the installed accelerate without torch_tpu on the
  path and no ACCELERATE_TORCH_DEVICE: import and an fp16 Accelerator on the
  CPU must work (``accelerate.accelerator.torch_tpu is None``).
* ``upstream``: a copy of the installed package with the patch reversed;
  expected ``ValueError: fp16 mixed precision requires a GPU`` (no CUDA).
* ``tutorial-literal``: the upstream copy with the tutorial's literal edit
  (``import torch_tpu`` inside the ``elif``); expected ``UnboundLocalError``
  from the GPU check, because the function-level import makes ``torch_tpu`` a
  local name of ``Accelerator.__init__``.  Only when CUDA is unavailable: with
  CUDA, ``and`` short-circuits before ``torch_tpu`` is read.

The last two need ``git`` (to reverse the patch when the installed copy is
patched) and the patch file (``--patch``, default ``../patches/`` next to this
file).  Output: one JSON line; exit 0 when every variant run met its
expectation, 1 otherwise.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

VARIANTS = ("patched", "patched-no-torch_tpu", "upstream", "tutorial-literal")
PATCH_MARK = "import torch_tpu\nexcept ImportError:"  # our module-level guarded import
DEFAULT_PATCH = Path(__file__).resolve().parents[2] / "patches" / "accelerate-0.16.0-tpu.diff"

def tutorial_literal_edit(source: str) -> str:
    """Apply the tutorial's edit, as printed in the tutorial, to upstream accelerator.py."""
    cond = re.compile(
        r'(\n\s*if not torch\.cuda\.is_available\(\) and not parse_flag_from_env\("ACCELERATE_USE_MPS_DEVICE"\))'
        r'(:\n\s*raise ValueError\(err\.format\(mode="fp16")'
    )
    source, n1 = cond.subn(r"\1 and not torch_tpu.tpu.is_available()\2", source, count=1)
    scaler = re.compile(r"(\n(\s*)else:\n\s*self\.scaler = torch\.cuda\.amp\.GradScaler\(\*\*kwargs\))")
    elif_ = (
        r'\n\2elif self.device.type == "tpu":'
        r"\n\2    import torch_tpu"
        r"\n\2    self.scaler = torch_tpu.tpu.amp.GradScaler(**kwargs)\1"
    )
    source, n2 = scaler.subn(elif_, source, count=1)
    if (n1, n2) != (1, 1):
        raise RuntimeError(f"tutorial edit did not match upstream accelerator.py ({n1}, {n2})")
    return source


def upstream_copy(dest: Path, patch: Path) -> Path:
    """Copy the installed accelerate package to dest/src/accelerate, unpatched."""
    spec = importlib.util.find_spec("accelerate")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("accelerate is not importable")
    pkg = dest / "src" / "accelerate"
    shutil.copytree(next(iter(spec.submodule_search_locations)), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if PATCH_MARK in (pkg / "accelerator.py").read_text():
        if not patch.is_file():
            raise RuntimeError(f"installed accelerate is patched and {patch} is missing")
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(dest.parent))  # never a repo around dest
        proc = subprocess.run(["git", "apply", "-R", str(patch)], cwd=dest, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("git apply -R failed: " + proc.stderr.strip())
    return dest / "src"


def child(variant: str) -> dict:
    """Runs in a fresh interpreter; PYTHONPATH and env are set by the parent."""
    out = {"variant": variant}
    try:
        import torch

        out["torch"] = torch.__version__
        import accelerate
        import accelerate.accelerator as acc_mod

        out["accelerate"] = accelerate.__version__
        out["accelerate_file"] = acc_mod.__file__
        out["module_torch_tpu"] = repr(getattr(acc_mod, "torch_tpu", "<absent>"))[:120]
        if variant in ("upstream", "tutorial-literal"):
            import torch_tpu  # noqa: F401  (what the patched training script does, after accelerate)
        from accelerate.utils import GradScalerKwargs

        accelerator = accelerate.Accelerator(
            mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024.0)]
        )
        out["device"] = str(accelerator.device)
        out["native_amp"] = accelerator.native_amp
        scaler = accelerator.scaler
        out["scaler_class"] = None if scaler is None else f"{type(scaler).__module__}.{type(scaler).__qualname__}"
        tpu = sys.modules.get("torch_tpu")
        out["emulated"] = bool(getattr(tpu, "EMULATED", False))
        out["scaler_is_torch_tpu"] = tpu is not None and isinstance(scaler, tpu.tpu.amp.GradScaler)
        out["scale"] = None if scaler is None else float(scaler.get_scale())
        out["error_type"] = None
    except BaseException as exc:  # report, never crash without JSON
        out["error_type"] = type(exc).__name__
        out["error"] = str(exc)[:300]
        out["where"] = traceback.format_exception(type(exc), exc, exc.__traceback__)[-2].strip()[:300]
    return out


def expectation(variant: str, res: dict) -> bool:
    if variant == "patched":
        return (
            res.get("error_type") is None
            and res.get("device") == "tpu:0"
            and res.get("scaler_is_torch_tpu") is True
            and res.get("scale") == 1024.0
        )
    if variant == "patched-no-torch_tpu":
        return res.get("error_type") is None and res.get("device") == "cpu" and res.get("module_torch_tpu") == "None"
    if variant == "upstream":
        return res.get("error_type") == "ValueError" and "requires a GPU" in res.get("error", "")
    if variant == "tutorial-literal":
        return res.get("error_type") == "UnboundLocalError" and "torch_tpu" in res.get("error", "")
    return False


def run_variant(variant: str, patch: Path, torch_tpu: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="sd-env-acc-probe-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
        paths = []
        if variant != "patched-no-torch_tpu":
            paths.append(str(torch_tpu))
            env["ACCELERATE_TORCH_DEVICE"] = "tpu:0"
        if variant in ("upstream", "tutorial-literal"):
            try:
                src = upstream_copy(tmp / "acc", patch)
            except Exception as exc:
                return {"variant": variant, "skipped": str(exc)}
            if variant == "tutorial-literal":
                f = src / "accelerate" / "accelerator.py"
                f.write_text(tutorial_literal_edit(f.read_text()))
            paths.insert(0, str(src))
        env["PYTHONPATH"] = os.pathsep.join([*paths, env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", variant],
                env=env, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"variant": variant, "error_type": "Timeout", "ok": False}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"variant": variant, "error_type": "NoOutput", "rc": proc.returncode,
                    "stderr": proc.stderr[-500:], "ok": False}
        res = json.loads(lines[-1])
        if variant in ("upstream", "tutorial-literal") and not str(res.get("accelerate_file", "")).startswith(str(tmp)):
            res["ok"] = False
            res["problem"] = "the copied accelerate was not the one imported"
            return res
        res["ok"] = expectation(variant, res)
        return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", choices=VARIANTS, help="default: all")
    ap.add_argument("--patch", type=Path, default=DEFAULT_PATCH)
    ap.add_argument("--torch-tpu", type=Path, help="the folder holding sd-env's emulated torch_tpu (required)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if args.torch_tpu is None:
        ap.error("--torch-tpu DIR is required (sd-env's emulated torch_tpu)")
    results = {v: run_variant(v, args.patch, args.torch_tpu, args.timeout) for v in (args.variant or VARIANTS)}
    ran = [r for r in results.values() if "skipped" not in r]
    ok = bool(ran) and all(r.get("ok") for r in ran)
    print(json.dumps({"probe": "real_accelerate", "python": sys.version.split()[0], "ok": ok, "variants": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
