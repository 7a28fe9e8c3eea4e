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


class _TileCounter(_SmallMemory):
    """_SmallMemory that also stops a fallback which would crawl through a huge number of tiles."""

    def forward(self, x):
        if len(self.sizes) > 3000:
            raise AssertionError("more than 3000 tiles for one frame: the fallback crawls")
        return super().forward(x)


def test_tiles_stop_at_a_floor_where_the_step_is_half_a_tile():
    from hatstream.errors import HatstreamError

    info = ModelInfo(name="bicubic", arch="bicubic", scale=2, window_multiple=16)  # overlap 32
    x = smooth_image(360, 640)
    # Fits only below 70x70: the tile halves 640, 320, 160, 80, then stops at the floor, 64, and
    # steps 32 (not 1 pixel, as a 32 px tile with a 32 px overlap would).
    model = _TileCounter(Bicubic(2), limit=70 * 70)
    up = Upscaler(model, info, CPU, torch.float32)
    y = up(x)
    assert up.tile == 64 and y.shape == (1, 3, 720, 1280)
    assert torch.allclose(y, Upscaler(Bicubic(2), info, CPU, torch.float32)(x), atol=1e-5)
    assert len(model.sizes) < 300
    # Below the floor: a one-line error (HatstreamError), after a handful of tries.
    hopeless = _TileCounter(Bicubic(2), limit=60 * 60)
    with pytest.raises(HatstreamError, match="even in 64 px tiles"):
        Upscaler(hopeless, info, CPU, torch.float32)(x)
    assert len(hopeless.sizes) <= 6
    with pytest.raises(ValueError, match="twice the overlap"):
        Upscaler(Bicubic(2), info, CPU, torch.float32, tile=48, tile_overlap=32)(x)


def test_cpu_out_of_memory_messages_are_recognised():
    from hatstream.inference.upscaler import is_out_of_memory

    for text in ("could not create a primitive",  # oneDNN, as a memory limit makes it fail
                 "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 452984832 bytes. Error code 12 (Cannot allocate memory)",
                 "std::bad_alloc"):
        assert is_out_of_memory(RuntimeError(text)), text
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the exceptions allocators raise


_UNDER_A_LIMIT = """
import resource, sys
import torch
from torch import nn
from hatstream.inference import Upscaler
from hatstream.models.spec import ModelInfo

torch.manual_seed(0)
torch.set_num_threads(1)
# Local (two 3x3 convs), so tiles with a 16 px overlap give exactly the whole-frame result.
net = nn.Sequential(nn.Conv2d(3, 192, 3, padding=1), nn.ReLU(), nn.Conv2d(192, 12, 3, padding=1), nn.PixelShuffle(2))
up = Upscaler(net, ModelInfo(name="conv", arch="conv", scale=2), torch.device("cpu"), torch.float32, tile_overlap=16)
x = torch.rand(1, 3, 768, 768)
crop = x[..., 300:364, 300:364]
expected = up(crop)[..., 32:96, 32:96]
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
# A whole frame needs two 450 MB activations (192 x 768 x 768 floats, before and after the ReLU); a 384 px
# tile needs two of 113 MB, and oneDNN reserves address space of its own (with 250 MB, even 32 px tiles
# sometimes failed in "could not create a primitive"): 500 MB more is all there is.
resource.setrlimit(resource.RLIMIT_AS, (vm + (500 << 20),) * 2)
y = up(x)
got = y[..., 632:696, 632:696]
print(up.tile, tuple(y.shape), float((got - expected).abs().max()))
"""


def test_cpu_out_of_memory_under_a_real_limit_falls_back_to_tiles(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "(1, 3, 1536, 1536)" in res.stdout, res.stdout
    tile, diff = int(res.stdout.split()[0]), float(res.stdout.split()[-1])
    assert 32 <= tile < 768 and diff < 1e-5, res.stdout
    assert "out of memory" in res.stderr  # the one warning
