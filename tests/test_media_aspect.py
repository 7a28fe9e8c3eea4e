"""Container-level aspect ratio in Matroska/WebM (issue 14's leftover)."""

from __future__ import annotations

from fractions import Fraction

import av
from mediagen import run_cli

from hatstream.media.probe import probe


def test_anamorphic_vp9_in_webm_warns_that_the_aspect_is_lost(tmp_path):
    # Matroska's display size comes from the AVStream's aspect, which PyAV cannot set; only the
    # H.264/HEVC VUI keeps it there.
    src = tmp_path / "sar.mkv"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(32, 27)
        for i in range(2):
            frame = av.VideoFrame(64, 48, "yuv420p")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    assert probe(src).sample_aspect_ratio == Fraction(32, 27)
    proc = run_cli(src, "-o", tmp_path / "out.webm", "--model", "bicubic", "--scale", "2")
    assert proc.returncode == 0 and "sample aspect ratio 32/27" in proc.stderr, proc.stderr
    proc = run_cli(src, "-o", tmp_path / "out.mkv", "--model", "bicubic", "--scale", "2")
    assert proc.returncode == 0 and "aspect" not in proc.stderr
    assert probe(tmp_path / "out.mkv").sample_aspect_ratio == Fraction(32, 27)
