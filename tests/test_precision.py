"""bf16 and the overflow-safe fp16 path stay close to fp32, with no inf or NaN."""

from __future__ import annotations

import copy

import pytest
import torch

import hat_cases
from hatstream.inference import Upscaler
from hatstream.models.hat_rescale import rescale_trunk, trunk_peak
from hatstream.models.registry import build_from_state_dict

CPU = torch.device("cpu")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()


@pytest.fixture(scope="module")
def fixture_model():
    fx = hat_cases.case("small_x4_w16")
    model, info = build_from_state_dict(fx.state, "small_x4_w16")
    return model, info, fx.inputs[0]


def test_rescaling_preserves_the_function_exactly(fixture_model):
    model, _, x = fixture_model
    inflated = copy.deepcopy(model)
    rescale_trunk(inflated, 2.0**14)
    with torch.no_grad():
        assert torch.allclose(inflated(x), model(x), atol=1e-5)
    assert trunk_peak(inflated, x) > 65504 > trunk_peak(model, x) * 2**14 / 2


def test_fp16_is_safe_on_an_inflated_checkpoint(fixture_model):
    model, info, x = fixture_model
    ref = Upscaler(copy.deepcopy(model), info, CPU, torch.float32)(x)
    inflated = copy.deepcopy(model)
    rescale_trunk(inflated, 2.0**14)  # trunk now past fp16's 65504 on this input
    # Plain fp16 overflows: this is the failure the safe path exists for.
    with torch.no_grad():
        plain = copy.deepcopy(inflated).half()(x.half())
    assert not torch.isfinite(plain).all()
    out = Upscaler(inflated, info, CPU, torch.float16)(x)
    assert torch.isfinite(out).all()
    assert psnr(out, ref) > 50


def test_bf16_within_bound(fixture_model):
    model, info, x = fixture_model
    ref = Upscaler(copy.deepcopy(model), info, CPU, torch.float32)(x)
    out = Upscaler(copy.deepcopy(model), info, CPU, torch.bfloat16)(x)
    assert torch.isfinite(out).all()
    assert psnr(out, ref) > 50


def _deep_tiny_hat():
    # Eight blocks in four groups: a trunk long enough for bf16's rounding of it to show.
    cfg = {**hat_cases._COMMON, "upscale": 4, "window_size": 8, "embed_dim": 48, "depths": [2, 2, 2, 2],
           "num_heads": [6] * 4, "compress_ratio": 3, "squeeze_factor": 16}
    torch.manual_seed(0)
    from hatstream.models.hat import HAT

    return hat_cases.perturbed(HAT(**cfg).state_dict())


def test_bf16_keeps_the_trunk_layernorms_and_ends_in_fp32():
    model, info = build_from_state_dict(_deep_tiny_hat(), "deep")
    up = Upscaler(model, info, CPU, torch.bfloat16)
    m = up.model
    assert up.input_dtype == torch.float32
    assert m.layers[0].residual_group.blocks[0].attn.qkv.weight.dtype == torch.bfloat16  # branches: bf16
    assert all(n.weight.dtype == torch.float32 for n in m.modules() if isinstance(n, torch.nn.LayerNorm))
    assert m.conv_first.weight.dtype == m.conv_before_upsample[0].weight.dtype == torch.float32
    seen = []
    hooks = [blk.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for blk in m.modules() if type(blk).__name__ in ("HAB", "OCAB", "RHAG")]
    y = up(torch.rand(1, 3, 16, 16))
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.float32}  # every residual add is carried in fp32
    assert y.dtype == torch.float32


def test_bf16_accuracy_on_a_deeper_trunk():
    # With every tensor in bf16 this was 55.8 dB from fp32; the fp32 trunk, LayerNorms and ends
    # give 61.6 dB (HAT-S x4: 49.3 -> 56.3 dB, benchmarks/RESULTS.md).
    state = _deep_tiny_hat()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, info = build_from_state_dict(state, "deep")
        outs[dtype] = Upscaler(model, info, CPU, dtype)(x)
    assert psnr(outs[torch.bfloat16], outs[torch.float32]) > 59


def test_cpu_flags_decide_native_bf16():
    from hatstream.inference.precision import cpu_flags, cpu_has_native_bf16

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_flags(avx2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert not cpu_has_native_bf16(cpu_flags(avx2))
    assert not cpu_has_native_bf16(frozenset({"avx512f", "avx512_vnni"}))  # AVX-512 alone is not enough
    assert cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_tile", "amx_bf16"}))
    assert cpu_flags("") == frozenset()
    # And on this machine, against the kernel's own report read independently of the code under test.
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    native = any(w in ("avx512_bf16", "amx_bf16") for line in text.splitlines()
                 if line.startswith("flags") for w in line.split())
    assert cpu_has_native_bf16() == native


def test_auto_precision_follows_the_cpu(monkeypatch):
    import hatstream.inference.precision as precision
    from hatstream.models.spec import ModelInfo

    info = ModelInfo(name="HAT", arch="HAT", scale=2, window_multiple=8, supports_bf16=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2"}))
    assert precision.resolve_precision("auto", CPU, info) == torch.float32
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset({"avx512_bf16"}))
    assert precision.resolve_precision("auto", CPU, info) == torch.bfloat16


def test_auto_keeps_bicubic_in_fp32_even_on_a_bf16_cpu(monkeypatch):
    # bf16 would round 10-bit video to ~8 bits near white, and interpolation gains nothing from it.
    import hatstream.inference.precision as precision
    from hatstream.models.registry import load_builtin

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16"}))
    _, info = load_builtin("bicubic", 2)
    assert precision.resolve_precision("auto", CPU, info) == torch.float32


def test_each_architecture_entry_backs_its_fp16_claim_with_its_own_prepare(fixture_model):
    # The registry entry, not the upscaler, makes `supports_fp16` true: its prepare alone turns a
    # checkpoint whose trunk overflows fp16 into a finite fp16 model.
    from hatstream.models.bicubic import Bicubic
    from hatstream.models.chain import join_passes
    from hatstream.models.registry import ARCHITECTURES, build_from_state_dict, load_builtin

    model, info, x = fixture_model
    inflated = copy.deepcopy(model)
    rescale_trunk(inflated, 2.0**14)
    bicubic, bicubic_info = load_builtin("bicubic", 2)
    twice = lambda m: build_from_state_dict(join_passes([m.state_dict()] * 2), "chain")  # noqa: E731
    built = {"HAT": (inflated, info, (model, info)), "bicubic": (bicubic, bicubic_info, None),
             "HAT-chain": (*twice(inflated), twice(model))}
    assert {a.name for a in ARCHITECTURES} == set(built)
    for arch in ARCHITECTURES:
        net, net_info, plain = built[arch.name]
        assert net_info.supports_fp16
        ref = copy.deepcopy(net).float()(x) if isinstance(net, Bicubic) else Upscaler(
            copy.deepcopy(plain[0]), plain[1], CPU, torch.float32)(x)
        prepared = arch.prepare(copy.deepcopy(net), CPU, torch.float16)
        assert prepared.input_dtype == torch.float16
        with torch.no_grad():
            out = prepared.model(x.to(prepared.input_dtype))
        assert torch.isfinite(out).all(), arch.name
        assert psnr(out.clamp(0, 1), ref.clamp(0, 1)) > 50, arch.name
