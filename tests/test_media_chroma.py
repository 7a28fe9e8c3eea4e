"""Chroma location: read from the input (PyAV does not expose it), written to the output, and
used when chroma is upsampled for the model and subsampled again after it."""

from __future__ import annotations

import av
import numpy as np
import pytest
from mediagen import run_cli

from hatstream.media.probe import probe


def _sited_video(path, location, pix_fmt="yuv420p", codec="libx264", frames=3, picture=None):
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, pix_fmt
        s.options = {"chroma_sample_location": location} if location else {}
        for i in range(frames):
            if picture is not None:
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=pix_fmt)
            else:
                frame = av.VideoFrame(64, 48, pix_fmt)
                for p in frame.planes:
                    np.frombuffer(p, np.uint8)[:] = 100
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


@pytest.mark.parametrize("location", ["topleft", "center", "left"])
@pytest.mark.parametrize("out_name", ["out.mp4", "out.mkv"])
def test_chroma_location_is_read_and_carried(tmp_path, location, out_name):
    src = _sited_video(tmp_path / "src.mkv", location)
    assert probe(src).chroma_location == location
    out = tmp_path / out_name
    proc = run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2")
    assert proc.returncode == 0, proc.stderr
    assert probe(out).chroma_location == location


def test_untagged_and_444_sources_say_unspecified(tmp_path):
    assert probe(_sited_video(tmp_path / "a.mkv", None, codec="ffv1")).chroma_location == "unspecified"
    assert probe(_sited_video(tmp_path / "b.mkv", None, pix_fmt="yuv444p")).chroma_location == "unspecified"


# Colour misregistration: a soft red edge whose chroma is subsampled as the source's siting says,
# upscaled x4 with chroma taken as sited `assume` on the way in and out, then shown as a player
# shows the output (chroma upsampled from the siting the file says, `true`). The edge's position in Cr minus its position in Y, in output
# pixels, averaged over 8 sub-pixel phases of the edge.

def _edge(row):
    lo, hi = row[:4].mean(), row[-4:].mean()
    s = np.sign(row - (lo + hi) / 2) * np.sign(hi - lo)
    i = int(np.nonzero((s[:-1] < 0) & (s[1:] >= 0))[0][0])
    return i + ((lo + hi) / 2 - row[i]) / (row[i + 1] - row[i])


def _misregistration(true, assume, vertical=False, scale=4):
    import torch

    from hatstream.media.colour import _upsample_chroma, rgb_to_planes
    from hatstream.media.formats import ColourSpec, PlaneLayout
    from hatstream.models.bicubic import Bicubic
    from hatstream.pipeline.stage import FrameFormat, upscale_planes
    layout = PlaneLayout.from_pix_fmt("yuv420p")
    shifts = []
    for x0 in np.linspace(20, 22, 8, endpoint=False):
        t = np.clip((np.arange(64) - x0) / 3 + 0.5, 0, 1)
        rgb = np.zeros((1, 3, 16, 64), np.float32)
        rgb[0, 0], rgb[0, 1], rgb[0, 2] = 0.2 + 0.6 * t, 0.5 - 0.3 * t, 0.3
        rgb = torch.from_numpy(rgb)
        if vertical:
            rgb = rgb.transpose(2, 3).contiguous()
        planes = tuple(p[0].numpy() for p in rgb_to_planes(rgb, layout, ColourSpec("bt709", False, true)))
        fmt = FrameFormat(layout, ColourSpec("bt709", False, assume))
        y, cb, cr = upscale_planes([planes], Bicubic(scale), fmt, fmt)[0]
        shown = _upsample_chroma(torch.from_numpy(np.stack([cb, cr])[None].astype(np.float32)), y.shape, layout,
                                 true)[0, 1].numpy()
        y, shown = y.astype(np.float64), shown.astype(np.float64)
        if vertical:
            y, shown = y.T, shown.T
        shifts.append(_edge(shown.mean(axis=0)) - _edge(y.mean(axis=0)))
    return float(np.mean(shifts))


def test_chroma_siting_removes_the_colour_misregistration():
    baseline = _misregistration("center", "center")  # the measure's own bias: all centred
    # Left-sited H.264/HEVC chroma taken as centred (as before) lands ~1.5 output pixels off at x4.
    assert _misregistration("left", "center") - baseline > 1.2
    assert abs(_misregistration("left", "left") - baseline) < 0.1
    # Top-left differs from left only down the picture.
    v_baseline = _misregistration("center", "center", vertical=True)
    assert _misregistration("topleft", "left", vertical=True) - v_baseline > 1.2
    assert abs(_misregistration("topleft", "topleft", vertical=True) - v_baseline) < 0.1


def test_untagged_h264_is_taken_as_left_sited_and_tagged_so(tmp_path):
    src = _sited_video(tmp_path / "src.mp4", None)
    info = probe(src)
    assert info.chroma_location in ("unspecified", "left") and info.colour.chroma == "left"
    out = tmp_path / "out.mkv"
    assert run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2").returncode == 0
    assert probe(out).chroma_location == "left"

