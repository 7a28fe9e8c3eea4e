"""GPU-only checks: they skip without CUDA and run on a lent GPU machine (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

import hat_cases
from hatstream.inference import Upscaler
from hatstream.models.registry import build_from_state_dict

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def fixture(name):
    fx = hat_cases.case(name)
    model, info = build_from_state_dict(fx.state, name)
    return model, info, [{"input": x, "output": y} for x, y in zip(fx.inputs, fx.outputs)]


def psnr(a, b):
    mse = (a.float().cpu() - b.float().cpu()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1 / max(mse, 1e-20))).item()


@pytest.mark.parametrize("name", ["small_x4_w16", "hatdim30_x4"])
def test_fixtures_on_cuda_fp32(name, monkeypatch):
    monkeypatch.setenv("HATSTREAM_STRICT_ATTENTION", "1")  # padded heads must take a fused kernel
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, info, cases = fixture(name)
    up = Upscaler(model, info, CUDA, torch.float32)
    for case in cases:
        y = up(case["input"].to(CUDA)).cpu()
        assert (y - case["output"].clamp(0, 1)).abs().max().item() < 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_on_cuda(dtype):
    model, info, cases = fixture("small_x4_w16")
    ref = cases[0]["output"].clamp(0, 1)
    y = Upscaler(model, info, CUDA, dtype)(cases[0]["input"].to(CUDA))
    assert torch.isfinite(y).all()
    assert psnr(y, ref) > 50


def test_compiled_equals_eager():
    model, info, cases = fixture("small_x4_w16")
    x = cases[0]["input"].to(CUDA)
    eager = Upscaler(model, info, CUDA, torch.bfloat16)(x)
    model2, _, _ = fixture("small_x4_w16")
    compiled = Upscaler(model2, info, CUDA, torch.bfloat16, compile=True)
    compiled(x)
    assert psnr(compiled(x), eager) > 50
