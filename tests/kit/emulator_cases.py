"""Cases run on the emulated "tpu" device, in the target's interpreter.

    python emulator_cases.py              -> one JSON line: {case: [ok, detail]}
    python emulator_cases.py --bench N    -> JSON: CPU vs tpu seconds of the tiny UNet LoRA step

Each case runs an op (or a behaviour) on the CPU and on "tpu" and compares:
fp32 results must be identical, fp16 ones within fp16 rounding. The test
process imports this file only for the case names (torch is imported in
main), so pytest lists one item per case while torch is imported once.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from typing import Any, Callable

torch: Any = None  # imported in main(): pytest imports this module without torch
F: Any = None
CASES: dict[str, Callable[[], None]] = {}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    CASES[fn.__name__] = fn
    return fn


# ---- comparing CPU and tpu --------------------------------------------------

def to(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        out = value.detach().to(device)
        return out.requires_grad_(value.requires_grad) if value.is_floating_point() else out
    if isinstance(value, (list, tuple)):
        return type(value)(to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to(v, device) for k, v in value.items()}
    return value


def compare(cpu: Any, tpu: Any, tol: float = 0.0, what: str = "result") -> None:
    if isinstance(cpu, torch.Tensor):
        assert isinstance(tpu, torch.Tensor), f"{what}: {type(tpu)}"
        assert tpu.device.type == "tpu", f"{what} is on {tpu.device}"
        assert cpu.dtype == tpu.dtype, f"{what}: dtype {tpu.dtype} != {cpu.dtype}"
        assert cpu.shape == tpu.shape, f"{what}: shape {tuple(tpu.shape)} != {tuple(cpu.shape)}"
        back = tpu.detach().cpu()
        if tol == 0.0:
            exact = torch.equal(cpu.detach(), back) or (cpu.is_floating_point() and torch.allclose(
                cpu.detach(), back, rtol=0, atol=0, equal_nan=True))
            assert exact, f"{what}: max diff {_diff(cpu, back)}"
        else:
            assert torch.allclose(cpu.detach().float(), back.float(), rtol=tol, atol=tol, equal_nan=True), \
                f"{what}: max diff {_diff(cpu, back)} > {tol}"
    elif isinstance(cpu, (list, tuple)):
        assert len(cpu) == len(tpu), f"{what}: {len(tpu)} items != {len(cpu)}"
        for i, (a, b) in enumerate(zip(cpu, tpu)):
            compare(a, b, tol, f"{what}[{i}]")
    else:
        assert cpu == tpu, f"{what}: {tpu!r} != {cpu!r}"


def _diff(a: Any, b: Any) -> float:
    if a.dtype == torch.bool or not (a.is_floating_point() or b.is_floating_point()):
        return float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    return float((a.detach().double() - b.double()).abs().max()) if a.numel() else 0.0


def same(fn: Callable[..., Any], *inputs: Any, tol: float = 0.0, grad: bool = False) -> None:
    """fn on CPU inputs and on their tpu copies: results, inputs afterwards (in-place ops) and, with
    `grad`, the gradients of a sum of the (first) result must agree."""
    cpu_in = [to(x, "cpu") for x in inputs]
    tpu_in = [to(x, "tpu") for x in inputs]
    cpu_out, tpu_out = fn(*cpu_in), fn(*tpu_in)
    compare(cpu_out, tpu_out, tol)
    compare(cpu_in, tpu_in, tol, "input after the op")
    if grad:
        def first(out: Any) -> Any:
            return out[0] if isinstance(out, (tuple, list)) else out
        first(cpu_out).float().pow(2).sum().backward()
        first(tpu_out).float().pow(2).sum().backward()
        for i, (a, b) in enumerate(zip(cpu_in, tpu_in)):
            if isinstance(a, torch.Tensor) and a.requires_grad:
                compare(a.grad, b.grad, tol, f"grad of input {i}")


def rand(*shape: int, grad: bool = False, dtype: Any = None) -> Any:
    t = torch.randn(*shape, dtype=dtype or torch.float32)
    return t.requires_grad_(grad)


# ---- ops of the UNet, VAE, CLIP text model, AdamW, DDPM, LoRA -----------------

@case
def conv2d_forward_backward() -> None:
    w, b = rand(8, 4, 3, 3, grad=True), rand(8, grad=True)
    same(lambda x, w, b: F.conv2d(x, w, b, padding=1), rand(2, 4, 8, 8, grad=True), w, b, grad=True)


@case
def conv2d_stride2_and_1x1() -> None:
    same(lambda x, w: F.conv2d(x, w, stride=2, padding=1), rand(1, 4, 8, 8, grad=True), rand(4, 4, 3, 3), grad=True)
    same(lambda x, w: F.conv2d(x, w), rand(1, 4, 5, 5), rand(6, 4, 1, 1))


@case
def group_norm_forward_backward() -> None:
    same(lambda x, w, b: F.group_norm(x, 4, w, b, eps=1e-5), rand(2, 8, 4, 4, grad=True), rand(8, grad=True),
         rand(8, grad=True), grad=True)


@case
def layer_norm_forward_backward() -> None:
    same(lambda x, w, b: F.layer_norm(x, (16,), w, b), rand(2, 5, 16, grad=True), rand(16, grad=True),
         rand(16, grad=True), grad=True)


@case
def linear_forward_backward() -> None:
    same(F.linear, rand(3, 5, 16, grad=True), rand(8, 16, grad=True), rand(8, grad=True), grad=True)


@case
def activations() -> None:
    x = rand(4, 33, grad=True)
    for fn in (F.silu, F.gelu, lambda t: F.gelu(t, approximate="tanh"), torch.sigmoid, torch.tanh, F.relu,
               F.mish, torch.erf):
        same(fn, x, grad=True)


@case
def softmax_and_attention() -> None:
    same(lambda t: t.softmax(-1), rand(2, 4, 7, grad=True), grad=True)
    same(lambda t: t.log_softmax(-1), rand(2, 4, 7, grad=True), grad=True)
    q, k, v = rand(2, 2, 6, 8, grad=True), rand(2, 2, 5, 8, grad=True), rand(2, 2, 5, 8, grad=True)
    # torch 2.1 gives only CPU and CUDA tensors the fused kernel; any other device (the card too) takes the
    # math path, whose rounding differs from the CPU's flash kernel (by a few 1e-6 in the gradients).
    same(F.scaled_dot_product_attention, q, k, v, grad=True, tol=1e-5)


@case
def baddbmm_bmm_matmul() -> None:
    same(lambda c, a, b: torch.baddbmm(c, a, b, beta=0, alpha=0.125), rand(3, 4, 5), rand(3, 4, 6, grad=True),
         rand(3, 6, 5, grad=True), grad=True)
    same(torch.bmm, rand(3, 4, 6, grad=True), rand(3, 6, 5), grad=True)
    same(torch.matmul, rand(2, 3, 4, 6, grad=True), rand(6, 5, grad=True), grad=True)
    same(torch.mm, rand(4, 6).t(), rand(4, 5))  # non-contiguous input


@case
def upsample_and_pool() -> None:
    same(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"), rand(1, 3, 4, 4, grad=True), grad=True)
    same(lambda t: F.avg_pool2d(t, 2), rand(1, 3, 4, 4, grad=True), grad=True)


@case
def timestep_embedding() -> None:
    def embed(t: Any) -> Any:
        exponent = -torch.log(torch.tensor(10000.0)) * torch.arange(0, 8, dtype=torch.float32, device=t.device) / 8
        emb = t[:, None].float() * exponent.exp()[None, :]
        return torch.cat([emb.sin(), emb.cos()], dim=-1)
    same(embed, torch.tensor([1, 500, 999], dtype=torch.int64))


@case
def clip_text_ops() -> None:
    ids = torch.randint(0, 50, (2, 7))
    same(F.embedding, ids, rand(50, 16, grad=True), grad=True)
    same(lambda t: torch.full((7, 7), float("-inf"), device=t.device).triu_(1), rand(1))
    mask = torch.empty(2, 7, 7).fill_(torch.finfo(torch.float32).min).triu_(1)
    same(lambda m: m.unsqueeze(1), mask)
    same(lambda h, i: h[torch.arange(h.shape[0], device=h.device), i.argmax(dim=-1)], rand(2, 7, 16), ids)


@case
def ddpm_scheduler_ops() -> None:
    def add_noise(latents: Any, noise: Any, steps: Any) -> Any:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(device=latents.device)
        sqrt_alpha = (alphas_cumprod[steps] ** 0.5).flatten()
        while sqrt_alpha.dim() < latents.dim():
            sqrt_alpha = sqrt_alpha.unsqueeze(-1)
        sqrt_one_minus = ((1 - alphas_cumprod[steps]) ** 0.5).flatten()
        while sqrt_one_minus.dim() < latents.dim():
            sqrt_one_minus = sqrt_one_minus.unsqueeze(-1)
        return sqrt_alpha * latents + sqrt_one_minus * noise
    same(add_noise, rand(2, 4, 8, 8), rand(2, 4, 8, 8), torch.tensor([3, 800]))


@case
def mse_loss_and_reductions() -> None:
    same(lambda a, b: F.mse_loss(a.float(), b.float(), reduction="mean"), rand(2, 4, 4, grad=True), rand(2, 4, 4),
         grad=True)
    same(lambda a, b: F.mse_loss(a, b, reduction="none").mean(dim=[1, 2]), rand(2, 4, 4, grad=True), rand(2, 4, 4),
         grad=True)
    x = rand(3, 5)
    for fn in (torch.sum, torch.mean, torch.var, torch.amax, lambda t: t.std(dim=1), lambda t: t.norm(),
               lambda t: torch.linalg.vector_norm(t, 2.0), lambda t: t.cumsum(0), lambda t: t.max(dim=1),
               lambda t: t.sort(dim=1), lambda t: t.topk(2)):
        same(fn, x)


@case
def adamw_step() -> None:
    for foreach in (False, True):
        params = [rand(4, 3), rand(3)]
        cpu_p = [p.clone().requires_grad_() for p in params]
        tpu_p = [p.to("tpu").requires_grad_() for p in params]
        opts = [torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, foreach=foreach) for ps in (cpu_p, tpu_p)]
        for _ in range(3):
            grads = [rand(*p.shape) for p in params]
            for ps, opt in zip((cpu_p, tpu_p), opts):
                for p, g in zip(ps, grads):
                    p.grad = g.to(p.device)
                torch.nn.utils.clip_grad_norm_(ps, 1.0)
                opt.step()
                opt.zero_grad()
        # The multi-tensor path differs from the CPU's in the last bit (the single-tensor one is exact).
        compare(cpu_p, tpu_p, tol=1e-6 if foreach else 0.0, what=f"params (foreach={foreach})")


def old_diffusers() -> bool:
    """diffusers before 0.26 (the tutorial's 0.20.0) has LoRAAttnProcessor; later ones (0.29.2) use peft."""
    import diffusers
    from packaging.version import Version

    return Version(diffusers.__version__) < Version("0.26")


def add_lora(module: Any, targets: list[str] | None = None) -> list[Any]:
    """LoRA (rank 4) on every attention projection of `module` the way its diffusers does it; the LoRA
    parameters, initialised away from zero so that a step moves something."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets or ["to_k", "to_q", "to_v", "to_out.0"])
    if hasattr(module, "add_adapter"):
        module.add_adapter(config)
    else:
        inject_adapter_in_model(config, module)
    params = [p for n, p in module.named_parameters() if "lora" in n]
    for p in params:
        p.requires_grad_(True)
        torch.nn.init.normal_(p, std=0.1)
    return params


@case
def lora_processor() -> None:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(3)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    if old_diffusers():
        from diffusers.models.attention_processor import LoRAAttnProcessor

        attn.set_processor(LoRAAttnProcessor(hidden_size=16, cross_attention_dim=8, rank=4))
        for p in attn.processor.parameters():
            torch.nn.init.normal_(p, std=0.1)
    else:
        add_lora(attn)
    import copy
    tpu_attn = copy.deepcopy(attn).to("tpu")
    x, ctx = rand(2, 6, 16), rand(2, 3, 8)
    out_cpu, out_tpu = attn(x, ctx), tpu_attn(x.to("tpu"), ctx.to("tpu"))
    tol = sdpa_tolerance()
    compare(out_cpu, out_tpu, tol)
    out_cpu.sum().backward()
    out_tpu.sum().backward()
    for (name, a), b in zip(attn.named_parameters(), tpu_attn.parameters()):
        compare(a.grad, b.grad, tol, what=f"grad of {name}")


def sdpa_tolerance() -> float:
    """diffusers 0.20's LoRA processor computes attention with baddbmm (exact on tpu); later ones call
    scaled_dot_product_attention, where only the CPU gets the fused kernel (see softmax_and_attention)."""
    return 0.0 if old_diffusers() else 1e-5


# ---- views, in-place, out=, odd shapes and dtypes ----------------------------

@case
def views() -> None:
    x = rand(4, 6)
    for fn in (lambda t: t.t(), lambda t: t.view(3, 8), lambda t: t.reshape(2, 12), lambda t: t.transpose(0, 1)[1:],
               lambda t: t.permute(1, 0).contiguous(), lambda t: t[:, ::2], lambda t: t.unsqueeze(0).expand(3, 4, 6),
               lambda t: t.narrow(1, 2, 3), lambda t: t.select(0, 1), lambda t: t.chunk(3, dim=1),
               lambda t: t.split([2, 4], dim=1), lambda t: t.unbind(0), lambda t: t.flatten(),
               lambda t: t.unfold(1, 2, 2), lambda t: t.diagonal(), lambda t: t.as_strided((2, 2), (1, 6), 1),
               lambda t: t.view(torch.int32), lambda t: t.squeeze(), lambda t: t.repeat(2, 1)):
        same(fn, x)


@case
def view_shares_memory() -> None:
    x = torch.zeros(3, 4, device="tpu")
    v = x[1]
    v.fill_(2.0)
    x.t()[2].add_(1.0)  # in-place on a non-contiguous view
    expected = torch.zeros(3, 4)
    expected[1] = 2.0
    expected.t()[2].add_(1.0)
    compare(expected, x)
    assert v._base is x, "a view's _base is its source"


@case
def in_place_ops() -> None:
    same(lambda t, u: t.add_(u, alpha=2), rand(3, 4), rand(4))
    same(lambda t, u: t[:, 1:3].mul_(u), rand(3, 4), rand(3, 2))
    same(lambda t: t.clamp_(-0.5, 0.5), rand(5))
    same(lambda t, m: t.masked_fill_(m, 0.0), rand(3, 4), torch.rand(3, 4) > 0.5)
    same(lambda t, u: t.addcdiv_(u, u.abs() + 1, value=0.1), rand(6), rand(6))
    same(lambda t, u: t.lerp_(u, 0.3), rand(6), rand(6))
    same(lambda t, u: t.copy_(u), rand(2, 3), rand(3))  # broadcasting copy


@case
def setitem_and_index() -> None:
    def setitem(t: Any, u: Any, m: Any) -> Any:
        t[0] = u
        t[m] = 7.0
        t[:, torch.tensor([0, 2], device=t.device)] = 1.0
        return t
    same(setitem, rand(3, 4), rand(4), torch.rand(3, 4) > 0.5)
    same(lambda t, i: t.gather(1, i), rand(3, 4), torch.randint(0, 4, (3, 2)))
    same(lambda t, i: t.index_select(0, i), rand(5, 2), torch.tensor([4, 0, 4]))
    same(lambda t, m: t.masked_select(m), rand(3, 4), torch.rand(3, 4) > 0.5)
    same(lambda t: t.nonzero(), torch.rand(4, 4) > 0.5)
    same(lambda t, i: t[i], rand(5, 2), torch.tensor([1, 3]))  # a CPU index is allowed, as on CUDA


@case
def out_arguments() -> None:
    warnings.filterwarnings("ignore", "An output with one or more elements was resized")  # as on the CPU
    same(lambda a, b, o: torch.add(a, b, out=o), rand(3, 4), rand(3, 4), torch.empty(3, 4))
    same(lambda a, b, o: torch.mul(a, b, out=o), rand(3, 4), rand(3, 4), torch.empty(0))  # resized by the op
    same(lambda a, b, o: (torch.mm(a, b, out=o), o.shape), rand(2, 3), rand(3, 5), torch.empty(7, 7))
    same(lambda a, o: torch.cat([a, a], out=o), rand(2, 3), torch.empty(1))


@case
def empty_and_scalar_tensors() -> None:
    same(lambda t: (t + 1, t.sum(), t.reshape(0, 5)), torch.empty(0))
    same(lambda t: torch.cat([t, torch.empty(0, 3, device=t.device)]), rand(2, 3))
    same(lambda t: (t * 2, t.item()), torch.tensor(3.5))
    same(lambda t: t * torch.tensor(2.0), rand(3))  # a CPU scalar tensor is allowed, as on CUDA
    same(lambda t: (t.max(), t.argmax(), t.max().item()), rand(7))


@case
def int_and_bool_dtypes() -> None:
    a, b = torch.randint(-5, 5, (4, 3), dtype=torch.int32), torch.randint(1, 5, (4, 3), dtype=torch.int32)
    same(lambda x, y: (x + y, x * y, x // y, x % y, x.sum(), x.to(torch.float32), x.abs()), a, b)
    same(lambda x: (x.long() * 3, x.to(torch.int64).cumsum(0)), a)
    p, q = torch.rand(5) > 0.5, torch.rand(5) > 0.5
    same(lambda x, y: (x & y, x | y, ~x, x.any(), x.all(), x.sum(), torch.where(x, 1.0, 2.0)), p, q)
    same(lambda x, y: (x > y, x == y, x.eq(0)), a, b)
    same(lambda x: x.isfinite(), torch.tensor([1.0, float("inf"), float("nan")]))


@case
def factories_on_device() -> None:
    def make(t: Any) -> Any:
        d = t.device
        return (torch.zeros(2, 3, device=d), torch.ones(4, dtype=torch.int32, device=d),
                torch.full((2,), 5.0, device=d),
                torch.arange(0, 10, 3, device=d), torch.linspace(0, 1, 5, device=d), torch.eye(3, device=d),
                torch.zeros_like(t), torch.empty_like(t).fill_(1.0), t.new_zeros(3), torch.tensor([1, 2], device=d))
    same(make, rand(2))


@case
def dtype_conversions() -> None:
    same(lambda t: (t.half(), t.half().float(), t.to(torch.bfloat16), t.double(), t.int()), rand(3, 4))


# ---- fp16 (CPU kernels of torch 2.1 lacking Half compute in float) ------------

FP16_TOL = 2e-3


def same_fp16(fn: Callable[..., Any], *inputs: Any) -> None:
    """fn on tpu in fp16 against fn on the CPU in fp32 rounded to fp16."""
    halves = [x.half() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    expected = fn(*[x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in halves])
    got = fn(*[to(x, "tpu") for x in halves])
    assert got.dtype == torch.float16, f"fp16 op returned {got.dtype}"
    compare(expected.half(), got, FP16_TOL)


def lacks_half_on_cpu(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except RuntimeError as exc:
        assert "not implemented for 'Half'" in str(exc), str(exc)
        return True
    return False


@case
def fp16_ops() -> None:
    # An op whose CPU kernel lacks Half goes through the float path: conv2d in torch 2.1, avg_pool3d in both.
    assert lacks_half_on_cpu(lambda: F.avg_pool3d(rand(1, 2, 4, 4, 4).half(), 2)), "avg_pool3d has a Half CPU kernel"
    same_fp16(lambda x: F.avg_pool3d(x, 2), rand(1, 2, 4, 4, 4))
    assert lacks_half_on_cpu(lambda: F.conv2d(rand(1, 4, 6, 6).half(), rand(4, 4, 3, 3).half())) != era_28(), \
        "conv2d's Half CPU kernel: torch 2.1 lacks it, 2.8 has it"
    same_fp16(torch.mm, rand(8, 16), rand(16, 4))
    same_fp16(lambda x, w, b: F.conv2d(x, w, b, padding=1), rand(1, 4, 6, 6), rand(4, 4, 3, 3), rand(4))
    same_fp16(lambda x, w, b: F.linear(x, w, b), rand(2, 16), rand(8, 16), rand(8))
    same_fp16(lambda x, w, b: F.group_norm(x, 2, w, b), rand(1, 4, 4, 4), rand(4), rand(4))
    same_fp16(lambda x: x.softmax(-1), rand(3, 9))
    same_fp16(torch.baddbmm, rand(2, 3, 3), rand(2, 3, 4), rand(2, 4, 3))
    same_fp16(lambda x, y: x * y + 1, rand(5), rand(5))
    same_fp16(lambda t: F.silu(t), rand(7))


# ---- behaviours --------------------------------------------------------------

@case
def registration_surface() -> None:
    import torch_tpu

    assert torch_tpu.EMULATED is True
    assert torch.tpu is torch_tpu.tpu and torch.tpu.is_available() and torch.tpu.device_count() >= 1
    x = torch.ones(2).tpu()
    assert x.is_tpu and not torch.ones(1).is_tpu and x.device == torch.device("tpu:0")
    assert repr(x) == "tensor([1., 1.], device='tpu:0')", repr(x)
    assert torch.equal(x.cpu(), torch.ones(2))
    m = torch.nn.Linear(2, 2).to("tpu")
    assert m.weight.device.type == "tpu" and torch.nn.Linear(2, 2).tpu().weight.is_tpu
    assert x.untyped_storage().device.type == "tpu"
    torch.tpu.init()
    assert torch.tpu.is_initialized() and torch.tpu.current_device() == 0
    torch.tpu.set_device("tpu:0")
    assert torch.device("tpu", 0).type == "tpu"


@case
def same_device_rule() -> None:
    layer = torch.nn.Linear(4, 2).to("tpu")
    for fn in (lambda: layer(torch.ones(3, 4)), lambda: torch.ones(3, device="tpu") + torch.ones(3),
               lambda: torch.cat([torch.ones(1, device="tpu"), torch.ones(1)])):
        try:
            fn()
        except RuntimeError as exc:
            assert "Expected all tensors to be on the same device" in str(exc) and "tpu:0" in str(exc), str(exc)
        else:
            raise AssertionError("mixing tpu and CPU tensors did not raise")


def refused(fn: Callable[[], Any], *words: str) -> str:
    try:
        fn()
    except RuntimeError as exc:
        assert all(w in str(exc) for w in words), str(exc)
        return str(exc)
    raise AssertionError(f"not refused (expected an error with {words})")


@case
def cpu_scalars_only_where_cuda_takes_them() -> None:
    # Elementwise ops take a 0-dim CPU tensor (TensorIterator's CPU scalars), as on CUDA ...
    same(lambda t: (t * torch.tensor(2.0), torch.where(t > 0, t, torch.tensor(0.0)), t.clamp(max=torch.tensor(0.5)),
                    t.masked_fill(t > 0, torch.tensor(1.0)), t.clone().fill_(torch.tensor(3.0))), rand(3))
    # ... other ops do not, as on CUDA: a 0-dim CPU tensor there is a placement bug.
    x, w = torch.ones(2, 3, device="tpu"), torch.ones(3, 4, device="tpu")
    for fn in (lambda: torch.addmm(torch.tensor(1.0), x, w), lambda: F.linear(x, w.t(), torch.tensor(1.0)),
               lambda: torch.index_select(x, 0, torch.tensor(0))):
        refused(fn, "Expected all tensors to be on the same device", "cpu")


@case
def device_argument_keeps_its_index() -> None:
    assert torch.tpu.device_count() >= 2, "run with SG_MAX_DEVICE_COUNT=2 (test_emulator does)"
    one = torch.device("tpu:1")
    got = {"tril_indices": torch.tril_indices(3, 3, device="tpu:1").device, "zeros": torch.zeros(2, device=one).device,
           "arange": torch.arange(4, device=one).device, "randn": torch.randn(2, device=one).device,
           "zeros_like": torch.zeros_like(torch.ones(2, device="tpu:0"), device=one).device,
           "full": torch.full((2,), 1.0, device=one).device}
    assert all(d == one for d in got.values()), got
    with torch.tpu.device(1):
        assert torch.tril_indices(3, 3, device="tpu").device == one  # no index: the current device
    assert torch.tril_indices(3, 3, device="tpu").device == torch.device("tpu:0")


@case
def layer_norm_half_statistics_are_float() -> None:
    # CUDA returns mean and rstd in float for a Half input; computing in float and rounding back gave Half.
    x, w, b = rand(2, 5, 16).half().to("tpu"), rand(16).half().to("tpu"), rand(16).half().to("tpu")
    out, mean, rstd = torch.native_layer_norm(x, [16], w, b, 1e-5)
    assert (out.dtype, mean.dtype, rstd.dtype) == (torch.float16, torch.float32, torch.float32), \
        (out.dtype, mean.dtype, rstd.dtype)
    ref_out, ref_mean, ref_rstd = torch.native_layer_norm(x.cpu().float(), [16], w.cpu().float(), b.cpu().float(),
                                                          1e-5)
    compare(ref_out.half(), out, FP16_TOL)
    compare(ref_mean, mean, 1e-3, "mean")
    compare(ref_rstd, rstd, 1e-2, "rstd")
    xg = x.detach().clone().requires_grad_(True)
    F.layer_norm(xg, (16,), w, b).float().pow(2).sum().backward()
    assert xg.grad.dtype == torch.float16 and bool(xg.grad.isfinite().all())


@case
def rng_reproducible() -> None:
    torch.manual_seed(1234)
    a = torch.randn(5, device="tpu"), torch.rand(3, device="tpu"), torch.randint(0, 9, (4,), device="tpu")
    torch.manual_seed(1234)
    b = torch.randn(5, device="tpu"), torch.rand(3, device="tpu"), torch.randint(0, 9, (4,), device="tpu")
    compare([t.cpu() for t in a], list(b), what="draws after the same torch.manual_seed")
    assert not torch.equal(a[0].cpu(), torch.randn(5, device="tpu").cpu()), "the stream did not advance"
    # The device has a stream of its own, as a card has: the same seed draws other numbers than the
    # CPU's, so code that relies on CPU/device parity fails here as it would on the card.
    torch.manual_seed(1234)
    assert not torch.equal(torch.randn(5), a[0].cpu()), "tpu draws equal the CPU's for the same seed"
    assert torch.tpu.initial_seed() == 1234
    torch.tpu.manual_seed(99)
    c = torch.randn(5, device="tpu")
    torch.tpu.manual_seed(99)
    compare(c.cpu(), torch.randn(5, device="tpu"), what="draws after torch.tpu.manual_seed")
    g = torch.Generator(device="tpu")
    assert g.device.type == "tpu"
    g.manual_seed(7)
    first = torch.randn(4, generator=g, device="tpu")
    g.manual_seed(7)
    compare(first.cpu(), torch.randn(4, generator=g, device="tpu"), what="Generator(device='tpu') draws")
    state = torch.tpu.get_rng_state()
    x = torch.randn(3, device="tpu")
    torch.tpu.set_rng_state(state)
    compare(x.cpu(), torch.randn(3, device="tpu"), what="after set_rng_state")
    t = torch.empty(1000, device="tpu").uniform_(generator=g)
    assert 0.4 < float(t.mean()) < 0.6
    try:
        torch.randn(2, device="tpu", generator=torch.Generator())
    except RuntimeError as exc:
        assert "generator" in str(exc).lower(), str(exc)
    else:
        raise AssertionError("a CPU generator was accepted for a tpu draw")


@case
def autocast_dtypes() -> None:
    lin = torch.nn.Linear(8, 4).to("tpu")
    conv = torch.nn.Conv2d(3, 3, 3).to("tpu")
    x, img = torch.randn(2, 8, device="tpu"), torch.randn(1, 3, 5, 5, device="tpu")
    with torch.autocast("tpu", dtype=torch.float16):
        assert torch.tpu.is_autocast_enabled() and torch.tpu.get_autocast_dtype() == torch.float16
        got = {"linear": lin(x).dtype, "mm": torch.mm(x, x.t()).dtype, "matmul": torch.matmul(x, x.t()).dtype,
               "addmm": torch.addmm(x[:, :2], x, x[:2].t()).dtype, "conv": conv(img).dtype,
               "bmm": torch.bmm(x[None], x.t()[None]).dtype, "add": (x + x).dtype,
               "group_norm": F.group_norm(conv(img), 1).dtype}
    assert not torch.tpu.is_autocast_enabled()
    want = {"linear": torch.float16, "mm": torch.float16, "matmul": torch.float16, "addmm": torch.float16,
            "conv": torch.float16, "bmm": torch.float16, "add": torch.float32, "group_norm": torch.float32}
    if era_28():  # the 2.8-era plugin registers no autocast kernel ("forbid autocast"): nothing is cast
        want = dict.fromkeys(want, torch.float32)
    assert got == want, f"{got} != {want}"
    with torch_tpu_autocast():
        assert lin(x).dtype == (torch.float32 if era_28() else torch.float16)
    assert lin(x).dtype == torch.float32, "autocast leaked out of its block"


@case
def autocast_training_with_scaler() -> None:
    from torch_tpu.tpu.amp import GradScaler

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.SiLU(),
                                torch.nn.Flatten(), torch.nn.Linear(64, 2)).to("tpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = GradScaler(init_scale=1024.0)  # 2**16 overflows these fp16 grads: a skipped first step, as on CUDA
    x, y = torch.randn(2, 3, 6, 6, device="tpu"), torch.randn(2, 2, device="tpu")
    before = [p.detach().cpu().clone() for p in model.parameters()]
    for _ in range(2):
        with torch.autocast("tpu", dtype=torch.float16):
            out = model(x)
            assert out.dtype == (torch.float32 if era_28() else torch.float16), out.dtype
            loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert scaler.get_scale() == 1024.0, scaler.get_scale()
    assert all(not torch.equal(a, b.detach().cpu()) for a, b in zip(before, model.parameters())), "no update"


def era_28() -> bool:
    """The emulator built for torch 2.8 emulates torch_tpu 2.8.0.post1; for torch 2.1, 2.1.0.post1."""
    return torch.__version__.startswith("2.8.")


def torch_tpu_autocast() -> Any:
    import torch_tpu

    return torch_tpu.tpu.amp.autocast()


@case
def grad_scaler() -> None:
    from torch_tpu.tpu.amp import GradScaler

    p = torch.nn.Parameter(torch.ones(3, device="tpu"))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = GradScaler(init_scale=1024.0, growth_interval=2)
    assert scaler.is_enabled()
    loss = (p * 2).sum()
    scaled = scaler.scale(loss)
    assert float(scaled) == float(loss) * 1024 and scaled.device.type == "tpu"
    scaled.backward()
    scaler.unscale_(opt)
    compare(torch.full((3,), 2.0), p.grad, what="unscaled grad")
    scaler.step(opt)
    scaler.update()
    compare(torch.full((3,), 0.8), p.detach(), what="param after a good step")
    assert scaler.get_scale() == 1024.0 and scaler._get_growth_tracker() == 1
    # a step with inf is skipped and the scale is halved
    opt.zero_grad()
    scaler.scale((p * float("inf")).sum()).backward()
    scaler.step(opt)
    scaler.update()
    compare(torch.full((3,), 0.8), p.detach(), what="param after a skipped step")
    assert scaler.get_scale() == 512.0 and scaler._get_growth_tracker() == 0
    # growth after growth_interval good steps
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 1024.0, scaler.get_scale()
    # fp16 gradients are refused, as by the CUDA scaler
    h = torch.nn.Parameter(torch.ones(2, device="tpu", dtype=torch.float16))
    hopt = torch.optim.SGD([h], lr=0.1)
    hscaler = GradScaler()
    hscaler.scale(h.float().sum()).backward()
    try:
        hscaler.unscale_(hopt)
    except ValueError as exc:
        assert "FP16" in str(exc)
    else:
        raise AssertionError("fp16 gradients were unscaled")
    # state_dict round trip
    state = scaler.state_dict()
    other = GradScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state and state["scale"] == 1024.0, state
    # a CPU tensor is refused
    try:
        GradScaler().scale(torch.ones(1))
    except AssertionError:
        pass
    else:
        raise AssertionError("scale() accepted a CPU tensor")


# ---- a training step of a tiny UNet with LoRA --------------------------------

def lora_unet(seed: int = 0) -> tuple[Any, Any]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    unet.requires_grad_(False)
    if not old_diffusers():
        return unet, add_lora(unet)
    from diffusers.loaders import AttnProcsLayers
    from diffusers.models.attention_processor import LoRAAttnProcessor

    procs = {}
    for name in unet.attn_processors:
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        procs[name] = LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=4)
    unet.set_attn_processor(procs)
    layers = AttnProcsLayers(unet.attn_processors)
    for p in layers.parameters():  # LoRA's up weights start at zero; make the step move something
        torch.nn.init.normal_(p, std=0.02)
    return unet, list(layers.parameters())


def lora_steps(device: str, steps: int = 1, seed: int = 0) -> tuple[list[float], list[Any]]:
    unet, params = lora_unet(seed)
    unet.to(device)
    # Module.to() on a PrivateUse1 device replaces parameters: take them after the move.
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        latents = torch.randn(2, 4, 16, 16, generator=gen).to(device)
        noise = torch.randn(2, 4, 16, 16, generator=gen).to(device)
        text = torch.randn(2, 7, 32, generator=gen).to(device)
        steps_t = torch.randint(0, 1000, (2,), generator=gen).to(device)
        pred = unet(latents + 0.1 * steps_t[:, None, None, None] / 1000, steps_t, text).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, [p.detach().cpu() for p in params]


@case
def unet_lora_training_step() -> None:
    cpu_losses, cpu_params = lora_steps("cpu", steps=2)
    tpu_losses, tpu_params = lora_steps("tpu", steps=2)
    tol = sdpa_tolerance()
    assert all(abs(a - b) <= tol * abs(a) for a, b in zip(cpu_losses, tpu_losses)), \
        f"losses {tpu_losses} != {cpu_losses}"
    assert len(cpu_params) == len(tpu_params) > 0
    for i, (a, b) in enumerate(zip(cpu_params, tpu_params)):
        assert torch.allclose(a, b, rtol=tol, atol=tol), f"LoRA parameter {i} differs by {_diff(a, b)}"


def bench(steps: int) -> dict[str, float]:
    """Seconds per LoRA step on CPU and tpu, side by side: alternating rounds of `steps` steps after a
    warm-up, the best round of each (robust to other load on the machine)."""
    best = {"cpu": float("inf"), "tpu": float("inf")}
    for device in best:
        lora_steps(device, steps=1)
    for _ in range(3):
        for device in best:
            started = time.perf_counter()
            lora_steps(device, steps=steps)
            best[device] = min(best[device], (time.perf_counter() - started) / steps)
    return {**best, "threads": torch.get_num_threads(), "slowdown": best["tpu"] / best["cpu"]}


def main(argv: list[str]) -> int:
    global torch, F
    import torch as _torch
    import torch.nn.functional as _F
    import torch_tpu  # noqa: F401  (the emulator, from PYTHONPATH)

    torch, F = _torch, _F
    if argv[:1] == ["--bench"]:
        if len(argv) > 2:
            torch.set_num_threads(int(argv[2]))
        print(json.dumps(bench(int(argv[1]))))
        return 0
    wanted = argv or list(CASES)
    results = {}
    for name in wanted:
        torch.manual_seed(0)
        try:
            CASES[name]()
            results[name] = [True, ""]
        except Exception as exc:
            results[name] = [False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
