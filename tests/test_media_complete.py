"""The completeness check: files cut the way editors and ffmpeg users cut them are not "truncated".

Each container declares its length its own way (MP4 counts samples an edit list hides, AVI counts
empty drop chunks, FFmpeg's Matroska writes each stream's end time as DURATION), and a file that
ends where it says must go through, with exactly the frames a player shows.
"""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
from mediagen import Audio, Clip, make_video, moving_pattern

from hatstream.errors import HatstreamError
from hatstream.media.decode import DecodeStats, read_frames
from hatstream.media.probe import probe


def _stream_copy_cut(src, dst, start: Fraction):
    """What `ffmpeg -ss START -i src -c copy dst` does: copy from the keyframe before START, with
    timestamps moved so that START is 0 (the pre-roll gets negative ones, which the MP4 muxer
    hides behind an edit list)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        inp.seek(int(start / s.time_base), stream=s, backward=True)
        shift = int(start / s.time_base)
        for p in inp.demux(s):
            if p.size:
                p.pts -= shift
                p.dts -= shift
                p.stream = o
                out.mux(p)
    return dst


def test_stream_copy_cut_mp4_is_not_truncated(tmp_path):
    src = make_video(tmp_path / "src.mp4", Clip(frames=100, codec="libx264", options={"g": "25", "bf": "2"}))
    cut = _stream_copy_cut(src, tmp_path / "cut.mp4", Fraction(3, 2))
    info = probe(cut)
    stats = DecodeStats()
    frames = list(read_frames(info, stats=stats))
    assert info.frames_exact and info.frames > len(frames)  # the sample count includes the pre-roll
    assert stats.discarded == info.frames - len(frames) > 0
    assert len(frames) == 62 and frames[0].pts == 0  # 100 frames from 1.5 s at 25 fps: 2.5 s left


def test_matroska_video_starting_late_is_not_truncated(tmp_path):
    # FFmpeg's Matroska muxer writes the stream's end time (2.42 s) as its DURATION tag.
    pts = tuple(1420 + 40 * i for i in range(25))
    src = make_video(tmp_path / "late.mkv", Clip(frames=25, time_base=Fraction(1, 1000), pts=pts,
                                                 audio=(Audio("aac"),)))
    info = probe(src)
    assert info.start_time == pytest.approx(1.42) and info.duration == pytest.approx(1.0)
    assert [f.pts for f in read_frames(info)] == list(pts)


def test_matroska_cut_short_is_still_truncated(tmp_path):
    pts = tuple(1420 + 40 * i for i in range(100))
    src = make_video(tmp_path / "late.mkv", Clip(frames=100, time_base=Fraction(1, 1000), pts=pts))
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HatstreamError, match="truncated"):
        list(read_frames(probe(cut)))


def _avi_with_drop_chunks(path, ticks):
    """An AVI at 25 fps whose frames sit at `ticks`: the muxer fills each gap with empty chunks,
    as capture cards and Cinepak encoders write "drop" frames; the index lists them all."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.codec_context.time_base = Fraction(1, 25)
        v.options = {"g": "1"}
        for i, t in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(moving_pattern(i, 64, 48), format="rgb24").reformat(format="yuv420p")
            frame.pts = t
            out.mux(v.encode(frame))
        out.mux(v.encode())
    return path


def test_avi_drop_chunks_are_not_a_truncation(tmp_path):
    ticks = [0, 1, 2, 5, 9, 10, 16, 22, 23, 30, 31, 40]
    src = _avi_with_drop_chunks(tmp_path / "drop.avi", ticks)
    with av.open(str(src)) as c:
        assert c.streams.video[0].frames == 41  # index entries, empty ones included
    info = probe(src)
    assert [f.pts for f in read_frames(info)] == ticks


def test_avi_cut_short_is_truncated(tmp_path):
    src = _avi_with_drop_chunks(tmp_path / "drop.avi", list(range(0, 80, 2)))
    data = src.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(HatstreamError, match="truncated"):
        list(read_frames(probe(cut), "conceal"))
