"""`hatstream run` carries audio, subtitles, chapters, metadata and rotation over exactly."""

from __future__ import annotations

import av
from mediagen import Audio, Clip, dump_packets, frame_times, make_video, run_cli, video_stream_info

TWO_TRACKS = (Audio("aac", language="eng", title="English", tone=440),
              Audio("libopus", language="fra", title="Francais", tone=660))
CUES = ((0, 200, "Hello"), (200, 400, "<i>World</i>"))
CHAPTERS = ((0, 240, "Opening"), (240, 480, "Ending"))


def _streams(path):
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name if s.codec_context else None,
                 s.metadata.get("language"), s.metadata.get("title")) for s in c.streams]


def _packets_by_kind(path, kind):
    """The packets of every stream of `kind`, in stream order, without the stream indexes."""
    dump = dump_packets(path, kind)
    return [dump[i] for i in sorted(dump)]


def test_two_audio_tracks_copied_bit_identical(tmp_path):
    src = make_video(tmp_path / "a.mkv", Clip(frames=12, audio=TWO_TRACKS))
    proc = run_cli(src, "--model", "bicubic", "--codec", "ffv1")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "a.x2.mkv"
    assert _streams(out)[1:] == [("audio", "aac", "eng", "English"), ("audio", "opus", "fra", "Francais")]
    src_audio, out_audio = _packets_by_kind(src, "audio"), _packets_by_kind(out, "audio")
    assert len(out_audio) == 2 and all(len(p) > 10 for p in out_audio)
    assert out_audio == src_audio  # pts, dts, duration, time base and bytes of every packet
    assert frame_times(out) == frame_times(src)


def test_two_audio_tracks_in_mp4_with_rotation(tmp_path):
    audio = (Audio("aac", language="eng"), Audio("libmp3lame", rate=44100, language="deu"))
    src = make_video(tmp_path / "r.mp4", Clip(frames=10, codec="libx264", rotation=90, audio=audio))
    proc = run_cli(src, "--model", "bicubic")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "r.x2.mp4"
    info = video_stream_info(out)
    assert info["rotation"] == 90 and (info["width"], info["height"]) == (128, 96)
    assert [s[2] for s in _streams(out)[1:]] == ["eng", "deu"]
    assert _streams(out)[1:] == _streams(src)[1:]
    # MP4 may pick its own audio time base, so compare times and bytes rather than raw ticks.
    def timed(path):
        return [[(p[0] * p[3], p[2] * p[3], p[4]) for p in s] for s in _packets_by_kind(path, "audio")]
    assert timed(out) == timed(src)


def test_subtitles_chapters_and_metadata_in_mkv(tmp_path):
    src = make_video(tmp_path / "s.mkv", Clip(frames=12, audio=(Audio("aac", language="eng"),), subtitles=CUES,
                                              chapters=CHAPTERS, metadata={"title": "A test clip", "comment": "hi"},
                                              video_metadata={"title": "Main camera"}))
    proc = run_cli(src, "--model", "bicubic", "--codec", "ffv1")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "s.x2.mkv"
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.chapters() == a.chapters() and len(b.chapters()) == 2
        assert b.metadata["title"] == "A test clip"
        assert {k: v for k, v in b.metadata.items() if k != "ENCODER"} == \
            {k: v for k, v in a.metadata.items() if k != "ENCODER"}
        assert b.streams.video[0].metadata.get("title") == "Main camera"
    assert _streams(out)[2] == _streams(src)[2]
    assert _streams(out)[2][0::2] == ("subtitle", "eng")
    assert _packets_by_kind(out, "subtitle") == _packets_by_kind(src, "subtitle")


def test_subrip_into_mp4_is_refused_before_writing(tmp_path):
    src = make_video(tmp_path / "s.mkv", Clip(frames=6, subtitles=CUES))
    out = tmp_path / "s.mp4"
    proc = run_cli(src, "-o", out, "--model", "bicubic")
    assert proc.returncode == 2
    assert proc.stderr.startswith("hatstream: error: ") and proc.stderr.count("\n") == 1
    assert "subtitle stream #1" in proc.stderr and "mkv" in proc.stderr and "--subtitles mov_text" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mkv"]


def test_subtitles_converted_to_mov_text_or_dropped(tmp_path):
    src = make_video(tmp_path / "s.mkv", Clip(frames=12, subtitles=CUES, chapters=CHAPTERS))
    converted, dropped = tmp_path / "conv.mp4", tmp_path / "drop.mp4"
    proc = run_cli(src, "-o", converted, "--model", "bicubic", "--subtitles", "mov_text")
    assert proc.returncode == 0, proc.stderr
    assert _streams(converted)[1][:3] == ("subtitle", "mov_text", "eng")
    texts = [p[4] for p in _packets_by_kind(converted, "subtitle")[0]]
    assert any(b"Hello" in t for t in texts) and any(b"World" in t for t in texts)
    with av.open(str(converted)) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["Opening", "Ending"]
    proc = run_cli(src, "-o", dropped, "--model", "bicubic", "--subtitles", "drop")
    assert proc.returncode == 0, proc.stderr
    # (MP4 stores chapters in a text track of its own, which shows up as a data stream.)
    assert [s[0] for s in _streams(dropped) if s[0] != "data"] == ["video"]


def test_opus_into_mov_is_refused_naming_the_fix_and_aac_fixes_it(tmp_path):
    src = make_video(tmp_path / "o.mkv", Clip(frames=8, audio=(Audio("libopus", language="eng"),)))
    out = tmp_path / "o.mov"
    proc = run_cli(src, "-o", out, "--model", "bicubic")
    assert proc.returncode == 2, proc.stderr
    assert "audio stream #1 (opus)" in proc.stderr and "--audio-codec aac" in proc.stderr
    assert not out.exists()
    proc = run_cli(src, "-o", out, "--model", "bicubic", "--audio-codec", "aac")
    assert proc.returncode == 0, proc.stderr
    assert _streams(out)[1][:3] == ("audio", "aac", "eng")
    with av.open(str(out)) as c, av.open(str(src)) as s:
        a = c.streams.audio[0]
        assert abs(float(a.duration * a.time_base) - float(s.duration / av.time_base)) < 0.05


def test_colour_tags_are_carried(tmp_path):
    tags = (9, 1, 9, 14)  # BT.2020 matrix and primaries, limited range, BT.2020 10-bit transfer
    src = make_video(tmp_path / "t.mkv", Clip(frames=3, pix_fmt="yuv420p10le", colour_tags=tags))
    proc = run_cli(src, "--model", "bicubic", "--codec", "ffv1")
    assert proc.returncode == 0, proc.stderr
    assert video_stream_info(tmp_path / "t.x2.mkv")["colour_tags"] == tags
