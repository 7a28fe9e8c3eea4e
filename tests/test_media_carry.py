"""Streams beside the video that cameras and editors add: timecode tracks, cover art, picture subtitles."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from mediagen import Audio, Clip, make_video, run_cli

from hatstream.media.carry import CarriedStream, check_streams, plan_streams
from hatstream.media.encode import EncodeSettings, add_video_stream, resolve_encoding
from hatstream.media.probe import open_input, probe

TIMECODE = "10:00:00:00"


def _prores_with_timecode(path):
    # What a camera or editor writes (`ffmpeg -c:v prores_ks -c:a pcm_s16le -timecode ...`): the
    # MOV muxer turns the timecode tag into a tmcd data track.
    return make_video(path, Clip(frames=6, codec="prores_ks", pix_fmt="yuv422p10le", audio=(Audio("pcm_s16le"),),
                                 video_metadata={"timecode": TIMECODE}))


def _timecodes(path):
    with av.open(str(path)) as c:
        return [(s.type, s.metadata.get("timecode")) for s in c.streams]


def test_check_streams_writes_a_trailer_and_drops_a_broken_timecode_copy(tmp_path):
    src = _prores_with_timecode(tmp_path / "tc.mov")
    assert ("data", TIMECODE) in _timecodes(src)
    info = probe(src)
    enc = resolve_encoding(EncodeSettings(codec="prores_ks"), "mov", info.layout, info.colour, info.colour_tags)

    def add_video(out):
        return add_video_stream(out, enc, info.width, info.height, info.time_base, info.average_rate,
                                None, None, {})
    copied_tmcd = CarriedStream(2, "data", "data")
    # Copied as a template, the tmcd track has no frame rate: MOV fails only when it writes its trailer.
    assert check_streams(src, "mov", [copied_tmcd], add_video) == []
    with open_input(src) as inp:
        assert [item.kind for item in plan_streams(inp)] == ["audio"]  # the muxer rebuilds the track


def test_prores_with_timecode_goes_through_keeping_the_timecode(tmp_path):
    src = _prores_with_timecode(tmp_path / "tc.mov")
    for name in ("out.mov", "out.mkv"):
        proc = run_cli(src, "-o", tmp_path / name, "--model", "bicubic", "--codec", "prores_ks")
        assert proc.returncode == 0, proc.stderr
    assert _timecodes(tmp_path / "out.mov") == [("video", TIMECODE), ("audio", None), ("data", TIMECODE)]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].metadata.get("TIMECODE") == TIMECODE


def _add_cover(src, dst):
    """Remux `src` with a cover picture, as `ffmpeg -i v.mp4 -i cover.jpg -map 0 -map 1 -c copy
    -disposition:v:1 attached_pic` does; returns the picture's bytes."""
    pic = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24").reformat(format="yuvj420p")
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        cover = out.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 32
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        packets = cover.encode(pic) + cover.encode()
        for p in inp.demux():
            if p.size:
                p.stream = mapping[p.stream_index]
                out.mux(p)
        for p in packets:
            p.pts = p.dts = 0
            out.mux(p)
    return b"".join(bytes(p) for p in packets)


def _covers(path):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux() if p.size and p.stream.disposition & av.stream.Disposition.attached_pic]


def test_mp4_cover_art_is_copied_unchanged(tmp_path):
    src = make_video(tmp_path / "plain.mp4", Clip(frames=4, codec="libx264", audio=(Audio("aac"),)))
    picture = _add_cover(src, tmp_path / "cover.mp4")
    proc = run_cli(tmp_path / "cover.mp4", "-o", tmp_path / "out.mp4", "--model", "bicubic")
    assert proc.returncode == 0, proc.stderr
    assert "not carried" not in proc.stderr
    assert _covers(tmp_path / "out.mp4") == [picture]
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].frames == 4 and c.streams.video[0].width == 128  # the main video is upscaled


def test_picture_subtitles_into_mp4_suggest_only_what_works(tmp_path):
    src = make_video(tmp_path / "plain.mkv", Clip(frames=4))
    with av.open(str(src)) as inp, av.open(str(tmp_path / "dvb.mkv"), "w") as out:
        video = out.add_stream_from_template(inp.streams.video[0])
        sub = out.add_stream("dvbsub")
        for p in inp.demux():
            if p.size:
                p.stream = video
                out.mux(p)
        p = av.Packet(b"\x20\x00\x0f\x10\x00\x01\x00\x00\xff")  # one (empty) DVB page
        p.pts, p.dts, p.duration, p.time_base, p.stream = 0, 0, 100, Fraction(1, 1000), sub
        out.mux(p)
    proc = run_cli(tmp_path / "dvb.mkv", "-o", tmp_path / "out.mp4", "--model", "bicubic")
    assert proc.returncode == 2 and "dvbsub" in proc.stderr
    assert "--subtitles drop" in proc.stderr and ".mkv" in proc.stderr and "mov_text" not in proc.stderr
    assert not (tmp_path / "out.mp4").exists()
