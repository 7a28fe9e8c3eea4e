"""Super-whites and super-blacks: kept where the output holds them, counted where it clips them,
and the residual that keeps them upscaled only around where it is non-zero (on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hatstream.media.colour import _add_upscaled, planes_to_tensors, unrepresentable
from hatstream.media.formats import ColourSpec, PlaneLayout
from hatstream.models.bicubic import Bicubic
from hatstream.pipeline.stage import ClipCounter, FrameFormat, upscale_planes

YUV420 = PlaneLayout.from_pix_fmt("yuv420p")
LIMITED = FrameFormat(YUV420, ColourSpec("bt709", False))


def _frame(hot: bool):
    y = np.full((24, 32), 128, np.uint8)
    if hot:
        y[4:8, 4:10] = 250   # 24 pixels of camera super-white
        y[16:18, 20:24] = 4  # 8 of super-black
    return y, np.full((12, 16), 128, np.uint8), np.full((12, 16), 128, np.uint8)


@pytest.mark.parametrize("dst, expected", [
    (LIMITED, 0),                                                    # 16-235 output keeps 4..250
    (FrameFormat(YUV420, ColourSpec("bt709", True)), 32),            # full range clips them
    (FrameFormat(PlaneLayout.from_pix_fmt("gbrp"), ColourSpec("rgb", True)), 32),
])
def test_clipped_pixels_are_counted_for_the_summary(dst, expected):
    counter = ClipCounter()
    out = upscale_planes([_frame(True), _frame(False)], Bicubic(2), LIMITED, dst, clipped=counter)
    assert len(out) == 2 and out[0][0].shape == (48, 64)
    assert counter.total == expected
    if dst is LIMITED:
        assert out[0][0].max() >= 248 and out[0][0].min() <= 6  # kept through the model


def test_unrepresentable_counts_per_frame():
    rgb = torch.full((2, 3, 4, 4), 0.5)
    rgb[0, :, 0, 0] = 1.05
    rgb[1, 0, 1, :] = -0.1
    gbr = PlaneLayout.from_pix_fmt("gbrp")
    assert unrepresentable(rgb, gbr, ColourSpec("rgb", True)).tolist() == [1, 4]
    # 1.05 of white is Y 245: still inside the 8-bit limited range's codes.
    assert unrepresentable(rgb[:1], YUV420, ColourSpec("bt709", False)).tolist() == [0]


@pytest.mark.parametrize("size", [(144, 256), (108, 192), (54, 96), (72, 128)])
def test_residual_upscaled_around_its_box_equals_the_whole_frame(size):
    # x4, x3, and the chroma planes of x3 and x4 4:2:0 (x1.5, x2).
    g = torch.Generator().manual_seed(0)
    residual = torch.zeros(2, 36, 64)
    residual[0, 10:13, 20:30] = torch.rand(3, 10, generator=g)
    residual[1, 0:2, 60:64] = 1.0
    residual[1, 35, 0] = -0.5
    plane = torch.zeros(2, *size)
    _add_upscaled(plane, residual)
    whole = F.interpolate(residual[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
    assert torch.allclose(plane, whole, atol=1e-6)
    assert plane.abs().max() > 0.5


def test_frames_without_super_whites_are_untouched_by_the_residual():
    counter = ClipCounter()
    a = upscale_planes([_frame(False)], Bicubic(2), LIMITED, LIMITED, clipped=counter)[0]
    ref = [t.numpy() for t in planes_to_tensors([_frame(False)])]
    assert counter.total == 0 and a[0].shape == (48, 64) and int(a[0].max()) == int(ref[0].max())
