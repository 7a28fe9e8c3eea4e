"""Streams beside the video that cameras and editors add: timecode tracks, cover art, picture subtitles."""

from __future__ import annotations

import av
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
