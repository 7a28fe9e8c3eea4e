"""The HAT architecture reproduces the reference implementation's outputs (computed live: tests/hat_cases.py)."""

from __future__ import annotations

import pytest
import torch

import hat_cases
from conftest import shared_path_or_skip
from hatstream.inference import Upscaler
from hatstream.models.hat import (
    pad_heads,
    HAT,
    relative_position_index_oca,
    relative_position_index_sa,
    shift_mask_patterns,
)
from hatstream.models.registry import build_from_state_dict

CASES = list(hat_cases.CONFIGS)


def load_case(name):
    return hat_cases.case(name)


@pytest.mark.parametrize("name", CASES)
def test_reproduces_reference_outputs(name):
    fx = load_case(name)
    model = HAT(**fx.config).eval()
    model.load_state_dict(fx.state, strict=True)
    ws, s = fx.config["window_size"], fx.config["upscale"]
    for x, expected in zip(fx.inputs, fx.outputs):
        y = hat_cases.official_wrapper(model, x, ws, s)
        assert y.shape == expected.shape
        assert (y - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_upscaler_matches_reference_clamped(name):
    # The loaded-model path (inferred config, strict load, padding, clamp) gives the same numbers.
    fx = load_case(name)
    model, info = build_from_state_dict(fx.state, name)
    for key in ("window_size", "embed_dim", "upscale", "compress_ratio", "squeeze_factor", "mlp_ratio",
                "resi_connection", "depths", "num_heads"):
        assert info.hyperparameters[key] == fx.config[key], key
    up = Upscaler(model, info, torch.device("cpu"), torch.float32)
    for x, expected in zip(fx.inputs, fx.outputs):
        y = up(x)
        assert (y - expected.clamp(0, 1)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_index_buffers_match_released_ones(name):
    # Strict loading copies the checkpoint's buffers, so check our own derivation separately.
    fx = load_case(name)
    ws = fx.config["window_size"]
    ows = ws + int(fx.config["overlap_ratio"] * ws)
    assert torch.equal(relative_position_index_sa(ws), fx.state["relative_position_index_SA"])
    assert torch.equal(relative_position_index_oca(ws, ows), fx.state["relative_position_index_OCA"])


@pytest.mark.parametrize("name", ["tiny_x2_w8", "small_x4_w16", "small_x3_w8", "hatdim30_x4"])
def test_shared_fixtures_when_present(name):
    # An independent cross-check where ../shared exists: golden outputs made once by the reference.
    fx = torch.load(shared_path_or_skip("fixtures", "hat", f"{name}.pt"), weights_only=True)
    model = HAT(**fx["config"]).eval()
    model.load_state_dict(fx["checkpoint"]["params_ema"], strict=True)
    for case in fx["cases"]:
        y = hat_cases.official_wrapper(model, case["input"], fx["config"]["window_size"], fx["config"]["upscale"])
        assert (y - case["output"]).abs().max().item() < 1e-5


def test_oca_index_has_the_released_negative_values():
    idx = relative_position_index_oca(16, 24)
    assert idx.shape == (256, 576)
    assert idx.min().item() == -880 and idx.max().item() == 640
    assert (idx < 0).sum().item() == 92_800


def window_partition(x, ws):
    """The reference's partition: (B, H, W, C) -> (B*nW, ws, ws, C), row-major windows."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def reference_shift_mask(h, w, ws, shift):
    """The reference's per-window mask: 9 labelled regions, -100 where labels differ."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).view(-1, ws * ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("h,w", [(32, 48), (16, 16), (16, 40), (48, 16)])
def test_mask_patterns_equal_reference_mask(h, w):
    ws = 8
    ref = reference_shift_mask(h, w, ws, ws // 2).view(h // ws, w // ws, ws * ws, ws * ws)
    pats = shift_mask_patterns(ws, ws // 2)
    for r in range(h // ws):
        for c in range(w // ws):
            kind = 2 * (r == h // ws - 1) + (c == w // ws - 1)
            assert torch.equal(ref[r, c], pats[kind]), (r, c)


def test_bias_cache_reused_and_rebuilt():
    fx = load_case("tiny_x2_w8")
    model = HAT(**fx.config).eval()
    model.load_state_dict(fx.state)
    attn = model.layers[0].residual_group.blocks[0].attn
    rpi = model.relative_position_index_SA
    with torch.no_grad():
        first = attn.bias(rpi, torch.float32)
        assert attn.bias(rpi, torch.float32) is first  # reused across frames
        assert attn.bias(rpi, torch.bfloat16) is not first  # a new dtype builds anew
        model.layers[0].residual_group.blocks[0].attn.relative_position_bias_table.add_(1.0)
        rebuilt = attn.bias(rpi, torch.float32)
    assert rebuilt is not first
    assert rebuilt.shape == (1, 3, 64, 64)
    assert torch.allclose(rebuilt, first.float() + 1.0)
    # The shift masks are cached per device too.
    assert model.shift_masks(torch.device("cpu")) is model.shift_masks(torch.device("cpu"))


def test_gradients_flow_for_training():
    fx = load_case("tiny_x2_w8")
    model = HAT(**fx.config)
    model.load_state_dict(fx.state)
    y = model(torch.rand(2, 3, 16, 16))
    y.mean().backward()
    table = model.layers[0].residual_group.blocks[1].attn.relative_position_bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_padded_heads_give_the_same_output():
    # HAT/HAT-L widths (head dim 30) padded to 32 for the fused GPU kernels; checked here on CPU.
    fx = load_case("hatdim30_x4")
    model, _ = build_from_state_dict(fx.state, "hatdim30")
    pad_heads(model, 8)
    assert model.layers[0].residual_group.blocks[0].attn.head_dim == 32
    assert model.layers[0].residual_group.overlap_attn.qkv.out_features == 3 * 6 * 32
    with torch.no_grad():
        y = model(fx.inputs[0])  # 16x32: already a multiple of the window
    assert (y - fx.outputs[0]).abs().max().item() < 1e-5


def test_attention_never_falls_back_to_the_math_kernel(monkeypatch):
    # With the debug switch on, a math-kernel fallback raises. On this CPU the fused kernel is
    # CPU flash attention, which takes the model's 4-D biases (a 3-D one would fall back).
    monkeypatch.setenv("HATSTREAM_STRICT_ATTENTION", "1")
    fx = load_case("small_x3_w8")
    model, info = build_from_state_dict(fx.state, "small_x3_w8")
    up = Upscaler(model, info, torch.device("cpu"), torch.float32)
    assert (up(fx.inputs[1]) - fx.outputs[1].clamp(0, 1)).abs().max().item() < 1e-5
    q = k = v = torch.rand(2, 3, 64, 10)
    from hatstream.inference.upscaler import fused_attention_only

    with fused_attention_only(), pytest.raises(RuntimeError):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(3, 64, 64))


@pytest.mark.parametrize("shift", [0, 4])
def test_window_plan_matches_roll_and_partition(shift):
    from hatstream.models.hat import window_plan

    b, h, w, ws, c = 2, 24, 32, 8, 5
    x = torch.randn(b, h, w, c)
    plan = window_plan(b, h, w, ws, shift, 12, torch.device("cpu"))
    gathered = x.reshape(-1, c).index_select(0, plan.order).view(-1, b, ws * ws, c)  # (nW, B, n, C)
    rolled = torch.roll(x, (-shift, -shift), dims=(1, 2))
    reference = window_partition(rolled, ws).view(b, -1, ws * ws, c).transpose(0, 1)  # (nW, B, n, C)
    # Same windows, grouped by mask pattern: compare as sets of windows in plan order.
    wins = {tuple(reference[i, 0, 0].tolist()): i for i in range(reference.shape[0])}
    for i in range(gathered.shape[0]):
        assert torch.equal(gathered[i], reference[wins[tuple(gathered[i, 0, 0].tolist())]])
    back = gathered.reshape(-1, c).index_select(0, plan.inverse).view(b, h, w, c)
    assert torch.equal(back, x)
    assert plan.groups[-1][1] == gathered.shape[0] * b


def test_hat_is_public_where_the_readme_says():
    import hatstream.models
    from hatstream.models import HAT as PublicHAT, HATConfig

    assert PublicHAT is HAT and HATConfig is hatstream.models.hat.HATConfig
    assert isinstance(PublicHAT(**hat_cases.case("tiny_x2_w8").config), HAT)
