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
