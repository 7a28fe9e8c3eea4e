"""Probing and decoding real files: frame counts, estimates, timestamps, rotation, damage handling."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from mediagen import Clip, make_video

from hatstream.errors import HatstreamError
from hatstream.media.decode import DecodeStats, read_frames
from hatstream.media.probe import open_input, probe


def test_mp4_counts_frames_and_mkv_estimates_them(tmp_path):
    mp4 = probe(make_video(tmp_path / "a.mp4", Clip(frames=17, codec="libx264")))
    mkv = probe(make_video(tmp_path / "a.mkv", Clip(frames=17)))
    assert (mp4.frames, mp4.frames_exact) == (17, True)
    assert mkv.frames_exact is False and abs(mkv.frames - 17) <= 1  # MKV says 0; duration x rate


def test_probe_reads_rotation_colour_and_depth(tmp_path):
    info = probe(make_video(tmp_path / "r.mp4", Clip(frames=3, codec="libx264", pix_fmt="yuv420p10le",
                                                      rotation=270, colour_tags=(1, 1, 1, 1))))
    assert info.rotation in (270.0, -90.0) and info.display_matrix is not None
    assert info.bit_depth == 10 and info.layout.pix_fmt == "yuv420p10le"
    assert info.colour_tags == (1, 1, 1, 1) and info.colour.matrix == "bt709" and not info.colour.full_range


def test_decoded_frames_keep_pts_and_tight_planes(tmp_path):
    pts = (0, 7, 19, 20, 41, 90)
    info = probe(make_video(tmp_path / "v.mkv", Clip(time_base=Fraction(1, 1000), pts=pts, width=34, height=22)))
    frames = list(read_frames(info))
    assert [f.pts for f in frames] == list(pts) and [f.index for f in frames] == list(range(6))
    assert [p.shape for p in frames[0].planes] == [(22, 34), (11, 17), (11, 17)]
    assert all(p.flags["C_CONTIGUOUS"] and p.dtype == np.uint8 for p in frames[0].planes)


def test_conceal_repeats_the_previous_frame_for_an_undecodable_packet(tmp_path):
    import av
    src = make_video(tmp_path / "g.mkv", Clip(frames=8, codec="mjpeg", pix_fmt="yuvj420p"))
    with av.open(str(src)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][4]
    data = bytearray(src.read_bytes())
    for k in range(pos + size // 3, pos + size // 3 + 200):
        data[k] ^= 0x5A
    bad = tmp_path / "b.mkv"
    bad.write_bytes(bytes(data))
    info = probe(bad)
    with pytest.raises(HatstreamError, match=r"0\.160s"):
        list(read_frames(info))
    stats = DecodeStats()
    frames = list(read_frames(info, "conceal", stats))
    assert [f.pts for f in frames] == [0, 40, 80, 120, 160, 200, 240, 280]
    assert stats.repeated == 1 and stats.repaired == 1 and frames[4].repaired
    assert all(np.array_equal(a, b) for a, b in zip(frames[4].planes, frames[3].planes))


def test_open_input_refuses_non_files(tmp_path):
    with pytest.raises(HatstreamError, match="not a regular file"):
        open_input("/dev/zero")
    with pytest.raises(HatstreamError, match="does not exist"):
        open_input(tmp_path / "http:" / "x.mp4")
