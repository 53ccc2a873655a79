"""The device rows: torch_tpu (Sophgo's, not Google's) and a Linear layer on the device, from one
probe that imports torch once.
"""

from __future__ import annotations

from sd_env.report import FAIL, OK, SKIPPED
from sd_env.system import driver as libsophon
from sd_env.system import probe
from sd_env.target import envs, torchtpu
from sd_env.verify.context import ONE_THREAD, Check, Context, _problem, _where


def _torch_checks(ctx: Context) -> probe.ProbeResult:
    return probe.run(ctx.runner, ctx.python, probe.script("torch_checks.py"),
                     ["--want", ctx.man.device, "--device-timeout", str(ctx.timeouts["device"])],
                     timeout=ctx.timeouts["device"] + ctx.timeouts["linear"], env=ONE_THREAD)


def _split(got: probe.ProbeResult) -> tuple[probe.ProbeResult, probe.ProbeResult | None]:
    """torch_checks.py's result as the device probe's and the linear probe's; no linear
    result when the process died (a torch_tpu crash): then linear runs on its own."""
    if got.data is None:
        return got, None
    if "device_timeout" in got.data:
        seconds = float(got.data["device_timeout"])
        return probe.ProbeResult(None, f"timed out after {seconds:.0f} s (killed)", seconds, got.stderr_tail,
                                 got.stderr), None
    device = got.data["device"]
    linear = got.data["linear"]
    linear_seconds = float(linear.get("seconds", 0.0))
    return (probe.ProbeResult(device, None, max(0.0, got.seconds - linear_seconds), got.stderr_tail, got.stderr),
            probe.ProbeResult(linear, None, linear_seconds, got.stderr_tail, got.stderr))


# 4 ---------------------------------------------------------------------------
def check_torch_tpu(ctx: Context, inv: envs.Inventory, got: probe.ProbeResult | None = None) -> Check:
    google = torchtpu.installed_google(inv)
    ctx.driver = libsophon.read(ctx.runner)
    present, driver_text = ctx.driver.present, ctx.driver.text
    ctx.facts["driver"] = driver_text
    if google is not None:
        return Check("torch_tpu", FAIL, f"Google's torch-tpu {google['version']} is installed, not Sophgo's: "
                     f"{torchtpu.COLLISION}. Remove it: pip uninstall torch-tpu")
    if got is None:
        got = probe.run(ctx.runner, ctx.python, probe.script("device.py"), [], timeout=ctx.timeouts["device"])
    if got.data is None:
        return Check("torch_tpu", FAIL, f"the device probe {got.problem}\n{got.stderr_tail}", got.seconds)
    data = got.data
    ctx.facts["torch_tpu"] = (f"importable ({data.get('file')}), available={data['available']}, "
                              f"devices={data['count']}") if data["importable"] else f"not importable ({data['error']})"
    if data["importable"] and data["available"] and data["count"] > 0:
        ctx.device, ctx.device_count = ctx.man.device, int(data["count"])
        return Check("torch_tpu", OK, f"Sophgo torch_tpu, {data['count']} device(s); {driver_text}", got.seconds)
    if present and not data["importable"]:
        return Check("torch_tpu", FAIL, f"the SC7 driver is present ({driver_text}) but torch_tpu does not import: "
                     f"{data['error']}. Install Sophgo's wheel: sd-env install --torch-tpu-wheel PATH", got.seconds)
    if present:
        return Check("torch_tpu", FAIL, f"the SC7 driver is present ({driver_text}) but torch_tpu sees no device "
                     "(is_available() is False): check `bm-smi` and the card's firmware", got.seconds)
    why = "torch_tpu is not installed" if not data["importable"] else "torch_tpu sees no device"
    return Check("torch_tpu", SKIPPED, f"skipped: no SC7 card here ({why}; {driver_text}); the checks below "
                 "run on the CPU, and only a card can show the tpu path", got.seconds)


# 6 ---------------------------------------------------------------------------
def check_linear(ctx: Context, got: probe.ProbeResult | None = None) -> Check:
    if got is None:
        got = probe.run(ctx.runner, ctx.python, probe.script("linear.py"), ["--device", ctx.device],
                        timeout=ctx.timeouts["linear"], env=ONE_THREAD)
    where = _where(ctx)
    if not got.ok or got.data is None:
        return Check("linear smoke", FAIL, f"{where}: {_problem(got)}", got.seconds, ctx.device)
    d = got.data
    return Check("linear smoke", OK, f"{where}: Linear(768, 3) on rand(8, 1024, 768) -> {d['shape']}, max error "
                 f"vs CPU {d['max_error']:.2e} (tolerance {d['tolerance']:g}), {d['seconds']:.3f} s",
                 got.seconds, d["device"])
