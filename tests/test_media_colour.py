"""Colour conversion (hatstream.media.colour) checked against FFmpeg's swscale, and pixel layouts."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace

from hatstream.media.colour import planes_to_rgb, planes_to_tensors, rgb_to_planes, tensors_to_planes
from hatstream.media.formats import ColourSpec, PlaneLayout, canonical_pix_fmt

CASES = [  # (swscale colorspace, our matrix name)
    (Colorspace.ITU709, "bt709"),
    (Colorspace.ITU601, "bt601"),
    (Colorspace.BT2020, "bt2020"),
]


def _rgb_image(seed=0, h=16, w=24):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _planes_of(frame, layout):
    out = []
    for plane, (h, w) in zip(frame.planes, layout.plane_shapes(frame.width, frame.height)):
        row = plane.line_size // layout.dtype.itemsize
        out.append(np.frombuffer(plane, layout.dtype, count=row * h).reshape(h, row)[:, :w].copy())
    return tuple(out)


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv444p10le"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("cs, matrix", CASES)
def test_yuv_to_rgb_matches_swscale(cs, matrix, full, pix_fmt):
    rgb = _rgb_image()
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=pix_fmt, dst_colorspace=cs, dst_color_range=ColorRange.JPEG if full else ColorRange.MPEG,
        threads=1)
    layout = PlaneLayout.from_pix_fmt(pix_fmt)
    tensors = planes_to_tensors([_planes_of(frame, layout)])
    back = planes_to_rgb(tensors, layout, ColourSpec(matrix, full))[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(back - rgb).max() < 2.5  # swscale's own rounding into YUV, nothing more


@pytest.mark.parametrize("cs, matrix", CASES)
def test_rgb_to_yuv_matches_swscale(cs, matrix):
    rgb = _rgb_image(1)
    layout = PlaneLayout.from_pix_fmt("yuv444p10le")
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv444p10le", dst_colorspace=cs, dst_color_range=ColorRange.MPEG, threads=1)
    want = _planes_of(ref, layout)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    got = tensors_to_planes(rgb_to_planes(tensor, layout, ColourSpec(matrix, False)))[0]
    for g, w in zip(got, want):
        assert g.dtype == np.uint16
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 2


def test_known_code_values():
    layout8 = PlaneLayout.from_pix_fmt("yuv420p")
    spec = ColourSpec("bt709", False)
    white = [torch.full((1, 2, 2), 235, dtype=torch.uint8), torch.full((1, 1, 1), 128, dtype=torch.uint8),
             torch.full((1, 1, 1), 128, dtype=torch.uint8)]
    assert torch.allclose(planes_to_rgb(white, layout8, spec), torch.ones(1, 3, 2, 2))
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    y, u, v = rgb_to_planes(red, layout8, spec)
    # BT.709 limited-range red: Y 63, Cb 102, Cr 240 (ITU-R BT.709 table values).
    assert (int(y[0, 0, 0]), int(u[0, 0, 0]), int(v[0, 0, 0])) == (63, 102, 240)
    y, u, v = rgb_to_planes(red, PlaneLayout.from_pix_fmt("yuv420p10le"), spec)
    assert (int(y[0, 0, 0]), int(u[0, 0, 0]), int(v[0, 0, 0])) == (250, 409, 960)


def test_ten_bit_codes_survive_a_round_trip_exactly():
    layout = PlaneLayout.from_pix_fmt("yuv444p10le")
    spec = ColourSpec("bt2020", False)
    rng = np.random.default_rng(3)
    # Codes near grey stay inside the RGB cube, so the only loss would be quantisation.
    planes = tuple(rng.integers(500, 530, (1, 8, 8)).astype(np.uint16) for _ in range(3))
    tensors = [torch.from_numpy(p) for p in planes]
    back = rgb_to_planes(planes_to_rgb(tensors, layout, spec), layout, spec)
    for a, b in zip(planes, back):
        assert np.array_equal(a, b.numpy())


def test_gbr_planes_are_rgb():
    layout = PlaneLayout.from_pix_fmt("gbrp")
    rgb = _rgb_image(2)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="gbrp", threads=1)
    out = planes_to_rgb(planes_to_tensors([_planes_of(frame, layout)]), layout, ColourSpec("rgb", True))
    assert np.array_equal((out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), rgb)


@pytest.mark.parametrize("name, depth, shift, canonical", [
    ("yuv420p", 8, (1, 1), "yuv420p"),
    ("yuvj422p", 8, (1, 0), "yuvj422p"),
    ("yuv420p10le", 10, (1, 1), "yuv420p10le"),
    ("yuv444p12le", 12, (0, 0), "yuv444p12le"),
    ("nv12", None, None, "yuv420p"),
    ("p010le", None, None, "yuv420p10le"),
    ("rgb24", None, None, "gbrp"),
    ("gray10le", None, None, "yuv444p10le"),
    ("yuva420p", 8, (1, 1), "yuva420p"),  # alpha is a plane of its own (tests/test_media_alpha.py)
    ("rgba", None, None, "gbrap"),
    ("ya8", None, None, "yuva444p"),
])
def test_layouts(name, depth, shift, canonical):
    layout = PlaneLayout.from_pix_fmt(name)
    if depth is None:
        assert layout is None
    else:
        assert (layout.bit_depth, layout.chroma_shift) == (depth, shift)
    assert canonical_pix_fmt(name) == canonical
    assert PlaneLayout.from_pix_fmt(canonical) is not None


def test_swscale_single_threaded_is_deterministic():
    # Why every swscale call here and in hatstream passes threads=1: with av 18.1.0 (FFmpeg
    # 8.1.2) the default threaded conversion returns different rows now and then. If this
    # ever fails, single-threaded swscale is not a safe reference either.
    rgb = _rgb_image(4)
    results = set()
    for _ in range(200):
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv444p10le", dst_colorspace=Colorspace.BT2020, dst_color_range=ColorRange.MPEG, threads=1)
        results.add(b"".join(bytes(p) for p in f.planes))
    assert len(results) == 1


def test_odd_sizes_round_chroma_up():
    layout = PlaneLayout.from_pix_fmt("yuv420p")
    assert layout.plane_shapes(65, 49) == [(49, 65), (25, 33), (25, 33)]
    rgb = torch.rand(1, 3, 49, 65)
    planes = rgb_to_planes(rgb, layout, ColourSpec("bt601", False))
    assert [tuple(p.shape[1:]) for p in planes] == layout.plane_shapes(65, 49)


def test_untagged_streams_get_the_players_guess():
    yuv = PlaneLayout.from_pix_fmt("yuv420p")
    assert ColourSpec.from_tags(2, 0, 480, yuv) == ColourSpec("bt601", False)
    assert ColourSpec.from_tags(2, 0, 720, yuv) == ColourSpec("bt709", False)
    assert ColourSpec.from_tags(9, 2, 480, yuv) == ColourSpec("bt2020", True)
    assert ColourSpec.from_tags(2, 0, 480, PlaneLayout.from_pix_fmt("yuvj420p")).full_range
