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
