"""Tiled upscaling: exact for a local model, bounded seams for HAT, automatic on out-of-memory."""

from __future__ import annotations

import logging

import pytest
import torch

from hatstream.inference import Upscaler
from hatstream.inference.tiling import tile_starts
from hatstream.models.bicubic import Bicubic
from hatstream.models.hat import HAT
from hatstream.models.spec import ModelInfo

CPU = torch.device("cpu")


def smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def test_tile_starts_cover_everything():
    assert tile_starts(100, 40, 32) == [0, 32, 60]
    assert tile_starts(30, 40, 32) == [0]
    for length in range(16, 200, 7):
        starts = tile_starts(length, 32, 24)
        covered = set()
        for s in starts:
            covered |= set(range(s, min(s + 32, length)))
        assert covered == set(range(length))


def test_tiles_are_exact_for_a_local_model():
    info = ModelInfo(name="bicubic", arch="bicubic", scale=2)
    x = smooth_image(70, 90)
    whole = Upscaler(Bicubic(2), info, CPU, torch.float32)(x)
    tiled = Upscaler(Bicubic(2), info, CPU, torch.float32, tile=40, tile_overlap=16)(x)
    assert (whole - tiled).abs().max().item() < 1e-5


def tiny_hat():
    torch.manual_seed(0)
    model = HAT(upscale=2, window_size=8, embed_dim=24, depths=[2], num_heads=[3], compress_ratio=3,
                squeeze_factor=8, mlp_ratio=2)
    info = ModelInfo(name="tiny", arch="HAT", scale=2, window_multiple=8)
    return model, info


def test_hat_seams_stay_within_bound():
    model, info = tiny_hat()
    x = smooth_image(64, 80)
    whole = Upscaler(model, info, CPU, torch.float32)(x)
    tiled = Upscaler(model, info, CPU, torch.float32, tile=32, tile_overlap=16)(x)
    mse = (whole - tiled).pow(2).mean().item()
    # Stated bound: tiles with 16 px overlap stay above 35 dB of the whole-frame result.
    assert 10 * torch.log10(torch.tensor(1 / mse)).item() > 35
    assert (whole - tiled).abs().max().item() < 0.1


class _SmallMemory(torch.nn.Module):
    """A model on a device that cannot hold inputs above `limit` pixels (raises as CUDA would)."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        if x.shape[-2] * x.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_falls_back_to_tiles_and_warns_once(caplog):
    info = ModelInfo(name="bicubic", arch="bicubic", scale=2)
    model = _SmallMemory(Bicubic(2), limit=48 * 48)
    up = Upscaler(model, info, CPU, torch.float32, tile_overlap=16)
    x = smooth_image(96, 96)
    with caplog.at_level(logging.WARNING):
        first = up(x)
        second = up(x)
    assert up.tile == 48
    assert torch.allclose(first, Upscaler(Bicubic(2), info, CPU, torch.float32)(x), atol=1e-5)
    assert torch.equal(first, second)
    assert sum("out of memory" in r.message for r in caplog.records) == 1
    # Too little memory for even the smallest tile: the error surfaces instead of looping.
    hopeless = Upscaler(_SmallMemory(Bicubic(2), limit=4), info, CPU, torch.float32)
    with pytest.raises(torch.OutOfMemoryError):
        hopeless(x)
