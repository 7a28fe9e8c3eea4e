"""Real-world media of the DVD and DivX age (issue 14): demuxers, rebuilt timestamps, interlacing,
anamorphic pixels, playable pixel formats, and Matroska for inputs hatstream does not write.

Every file is made here with PyAV (see `oldmedia`) and goes through the real CLI.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from mediagen import run_cli
from oldmedia import (NTSC, codecs, combing, decoded, interlaced_picture, mp4_without_ctts, packed_divx_avi, packets,
                      program_stream, scene, write)

from hatstream.media.encode import choose_layout
from hatstream.media.formats import PlaneLayout
from hatstream.media.probe import ALLOWED_DEMUXERS, REBUILT_PTS_DEMUXERS


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def _audio(path) -> list[list[bytes]]:
    """Every audio packet's bytes, per stream in stream order (bit-exact copies compare equal)."""
    return [v for _, v in sorted(packets(path, "audio").items())]


def _steps(n: int, rate: Fraction, start: Fraction = Fraction(0)) -> list[Fraction]:
    return [start + Fraction(i) / rate for i in range(n)]


# --- which demuxers may open an input -------------------------------------------------------

def test_allow_list_names_real_demuxers_and_keeps_playlists_out():
    demuxers = {n for n in av.formats_available if av.ContainerFormat(n).is_input}
    for name in ALLOWED_DEMUXERS + tuple(REBUILT_PTS_DEMUXERS):
        assert name in demuxers or any(name in d.split(",") for d in demuxers), name
    for wanted in ("mpeg", "mpegvideo", "h264", "hevc", "dv", "ivf", "m4v", "mjpeg", "avi"):
        assert wanted in ALLOWED_DEMUXERS
    for refused in ("hls", "dash", "concat", "image2", "image2pipe", "lavfi", "sdp", "rtp", "rtsp",
                    "ffmetadata", "rawvideo", "webm_dash_manifest"):
        assert refused not in ALLOWED_DEMUXERS


@pytest.mark.parametrize("name,text", [
    ("list.mpg", "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:/etc/hostname\n#EXT-X-ENDLIST\n"),
    ("script.ts", "ffconcat version 1.0\nfile '/etc/hostname'\n"),
])
def test_playlists_and_scripts_with_video_names_are_refused(tmp_path, name, text):
    src = tmp_path / name
    src.write_text(text)
    proc = run_cli(src, "--model", "bicubic")
    assert proc.returncode != 0
    assert proc.stderr.startswith("hatstream: error:") and "Traceback" not in proc.stderr
    assert "supported container" in proc.stderr or "not a video file" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- the DVD: MPEG-2 program stream, interlaced TFF, SAR 8:9, MP2 + AC-3 --------------------

def test_dvd_program_stream_keeps_times_aspect_and_audio_and_is_deinterlaced(tmp_path):
    src = program_stream(tmp_path / "title.vob", frames=4)
    times, frames, facts = decoded(src)
    assert facts["sar"] == Fraction(8, 9) and all(f.interlaced_frame for f in frames)
    # A full DVD frame size (MPEG-2 has SAR 8:9 only at 720x480): slow on a busy CPU.
    proc = _ok(run_cli(src, "--model", "bicubic", "--preset", "ultrafast", timeout=900))
    out = tmp_path / "title.x2.mkv"
    # The one line that says why the output is not a .vob, and what the run did.
    assert "title.vob is an MPEG program stream" in proc.stderr and "Matroska (title.x2.mkv)" in proc.stderr
    assert "deinterlaced interlaced frames with bwdif (top field first)" in proc.stdout
    out_times, out_frames, out_facts = decoded(out)
    # A program stream's pts are real: every frame keeps its own (rounded to MKV's 1 ms).
    assert len(out_times) == len(times) == 4
    assert all(abs(a - b) <= Fraction(1, 1000) for a, b in zip(out_times, times))
    assert (out_facts["width"], out_facts["height"]) == (1440, 960)
    assert out_facts["sar"] == Fraction(8, 9)  # 1440x960 at 8:9 still shows 4:3
    assert out_facts["pix_fmt"] == "yuv420p" and not any(f.interlaced_frame for f in out_frames)
    assert codecs(out, "audio") == ["mp2", "ac3"]
    assert _audio(out) == _audio(src)


def test_deinterlacing_removes_the_comb(tmp_path):
    # The same moving scene, once interlaced (fields 1/2 frame apart) and once progressive.
    inter = write(tmp_path / "i.mpg", "mpeg2video", 5, 176, 120, fmt="dvd", rate=NTSC, tff=True,
                  picture=interlaced_picture, options={"b": "6000000"})
    prog = write(tmp_path / "p.mpg", "mpeg2video", 5, 176, 120, fmt="dvd", rate=NTSC,
                 picture=lambda i, w, h: scene(i + 0.25, w, h), options={"b": "6000000"})

    def comb(path, step=1):
        _, frames, _ = decoded(path)
        return np.mean([combing(f.to_ndarray(format="gray", threads=1)[::step, ::step]) for f in frames[1:-1]])

    reference, source = comb(prog), comb(inter)
    assert source > 10 * reference  # the test clip really combs
    _ok(run_cli(inter, "-o", tmp_path / "off.mkv", "--model", "bicubic", "--codec", "ffv1", "--deinterlace", "off"))
    proc = _ok(run_cli(inter, "-o", tmp_path / "auto.mkv", "--model", "bicubic", "--codec", "ffv1"))
    assert "deinterlaced" in proc.stdout
    # Compare at the input's size: every second output row and column of the x2 bicubic output.
    off, auto = comb(tmp_path / "off.mkv", 2), comb(tmp_path / "auto.mkv", 2)
    assert off > 10 * reference, (off, reference)
    assert auto < 2 * reference, (auto, reference)
    # One frame out per frame in, at the same times (same rate).
    assert decoded(tmp_path / "auto.mkv")[0] == decoded(tmp_path / "off.mkv")[0]
    assert len(decoded(tmp_path / "auto.mkv")[0]) == 5


def test_progressive_input_is_not_deinterlaced_unless_asked(tmp_path):
    src = write(tmp_path / "p.mkv", "ffv1", 4, 64, 48)
    proc = _ok(run_cli(src, "-o", tmp_path / "a.mkv", "--model", "bicubic", "--codec", "ffv1"))
    assert "deinterlaced" not in proc.stdout
    proc = _ok(run_cli(src, "-o", tmp_path / "b.mkv", "--model", "bicubic", "--codec", "ffv1", "--deinterlace", "on"))
    assert "deinterlaced every frame with bwdif" in proc.stdout
    assert decoded(tmp_path / "b.mkv")[0] == decoded(src)[0]


# --- AVI: MPEG-4 Part 2 with B-frames, times from the rate, old audio codecs ------------------

def test_avi_mpeg4_b_frames_get_the_times_a_player_shows_and_keep_every_audio_track(tmp_path):
    src = write(tmp_path / "divx.avi", "mpeg4", 12, 64, 48, bframes=2, audio_rate=44100,
                audio=("ac3", "libmp3lame", "pcm_s16le", "pcm_u8"))
    # FFmpeg's own guess starts one frame late (pts = dts + a guessed B-frame delay).
    assert decoded(src)[0][0] == Fraction(1, 25)
    proc = _ok(run_cli(src, "--model", "bicubic"))
    out = tmp_path / "divx.x2.mkv"
    assert "divx.avi is AVI" in proc.stderr and "12 frames" in proc.stdout
    times, _, facts = decoded(out)
    assert times == _steps(12, Fraction(25))
    assert (facts["width"], facts["height"], facts["pix_fmt"]) == (128, 96, "yuv420p")
    assert codecs(out, "audio") == ["ac3", "mp3float", "pcm_s16le", "pcm_u8"]
    assert _audio(out) == _audio(src)


def test_divx_packed_b_frames_play_in_order_at_their_slots(tmp_path):
    src = packed_divx_avi(tmp_path / "packed.avi", 12)
    # FFmpeg's own frame pts go backwards here (1, 3, 2, 5, 4, ...): the "damaged" file.
    pts = [t for t in decoded(src)[0]]
    assert any(b < a for a, b in zip(pts, pts[1:]))
    out = tmp_path / "packed.mkv"
    _ok(run_cli(src, "-o", out, "--model", "bicubic", "--codec", "ffv1"))
    times, frames, _ = decoded(out)
    assert times == _steps(12, Fraction(25))
    # Frame k shows picture k (flat grey 20 + 15 k): nothing reordered, repeated or lost.
    levels = [round((float(f.to_ndarray(format="gray", threads=1).mean()) - 20) / 15) for f in frames]
    assert levels == list(range(12)), levels


def test_mp4_with_decode_times_only_plays_in_order(tmp_path):
    src = mp4_without_ctts(tmp_path / "noctts.mp4", 12)
    pts = decoded(src)[0]
    assert any(b < a for a, b in zip(pts, pts[1:]))  # what the decoder hands out
    out = tmp_path / "out.mkv"
    _ok(run_cli(src, "-o", out, "--model", "bicubic", "--codec", "ffv1"))
    times, frames, _ = decoded(out)
    assert times == sorted(pts) == _steps(12, Fraction(25))
    levels = [round((float(f.to_ndarray(format="gray", threads=1).mean()) - 20) / 15) for f in frames]
    assert levels == list(range(12)), levels


def test_mp4_with_real_pts_is_not_rebuilt(tmp_path):
    # The same B-frame H.264 with its composition times: they are the file's own and kept (VFR).
    from mediagen import Clip, make_video
    pts = (0, 3000, 9000, 9500, 20000, 21000, 30000, 45000)
    src = make_video(tmp_path / "vfr.mp4", Clip(frames=8, codec="libx264", time_base=Fraction(1, 90000), pts=pts))
    from hatstream.media.probe import probe
    assert not probe(src).rebuilt_pts


def test_adpcm_alone_becomes_flac_while_the_other_tracks_are_copied(tmp_path):
    src = write(tmp_path / "cam.avi", "mjpeg", 3, 64, 48, pix_fmt="yuvj422p", audio=("adpcm_ms", "pcm_s16le"),
                audio_rate=22050)
    proc = _ok(run_cli(src, "--model", "bicubic"))
    assert proc.stderr.count("adpcm_ms") == 1 and "FLAC (lossless)" in proc.stderr
    out = tmp_path / "cam.x2.mkv"
    assert codecs(out, "audio") == ["flac", "pcm_s16le"]
    assert _audio(out)[1] == _audio(src)[1]  # the PCM track is still copied bit-exact

    def samples(path, index):
        with av.open(str(path)) as c:
            # (samples, channels) whether the decoder's format is planar (ADPCM, ALAC) or packed (FLAC).
            return np.concatenate([f.to_ndarray().T if f.format.is_planar else
                                   f.to_ndarray().reshape(-1, f.layout.nb_channels)
                                   for f in c.decode(c.streams.audio[index])])
    # FLAC holds exactly the samples the ADPCM decodes to.
    a, b = samples(src, 0), samples(out, 0)
    assert a.size > 0 and np.array_equal(a, b[:len(a)])
    # MOV takes no FLAC: ALAC there, as lossless; WebM only Opus (resampled to 48 kHz).
    _ok(run_cli(src, "-o", tmp_path / "cam.mov", "--model", "bicubic"))
    assert codecs(tmp_path / "cam.mov", "audio") == ["alac", "pcm_s16le"]
    assert np.array_equal(a, samples(tmp_path / "cam.mov", 0)[:len(a)])


def test_explicit_avi_output_is_refused_naming_the_choices(tmp_path):
    src = write(tmp_path / "in.avi", "mpeg4", 3, 64, 48)
    proc = run_cli(src, "-o", tmp_path / "out.avi", "--model", "bicubic")
    assert proc.returncode != 0
    assert "cannot write out.avi" in proc.stderr and ".mkv" in proc.stderr and ".mp4" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.avi"]


@pytest.mark.parametrize("name,codec,fmt,options", [
    ("open-gop.avi", "mpeg4", None, {"g": "8"}),
    ("raw.h264", "libx264", "h264", {"bframes": "2"}),
])
def test_rebuilt_times_run_in_one_pass_and_say_so(tmp_path, name, codec, fmt, options):
    # 30 frames (1.2 s) against 0.3 s segments: cut, these would be 4 segments. FFmpeg's mpeg4
    # with B-frames makes open GOPs here (the two B-frames after keyframe packet 7 show before it),
    # and raw H.264 packets carry no times at all: neither can be cut exactly (plan_segments).
    src = write(tmp_path / name, codec, 30, 64, 48, fmt=fmt, bframes=2, options=options)
    one, cut = tmp_path / "one.mkv", tmp_path / "cut.mkv"
    # Shorter than one segment: nothing to say (a raw stream's length is counted from its packets).
    proc = _ok(run_cli(src, "-o", one, "--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "2"))
    assert "resumable" not in proc.stderr
    proc = _ok(run_cli(src, "-o", cut, "--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0.3"))
    assert proc.stderr.count("not in resumable segments, so an interrupted run starts over") == 1, proc.stderr
    assert not (tmp_path / ".cut.mkv.hatstream-work").exists()
    (t1, f1, _), (t2, f2, _) = decoded(one), decoded(cut)
    assert t1 == t2 == _steps(30, Fraction(25))
    assert all(np.array_equal(a.to_ndarray(), b.to_ndarray()) for a, b in zip(f1, f2)) and len(f1) == len(f2)


# --- elementary streams -----------------------------------------------------------------------

@pytest.mark.parametrize("name,codec,fmt,options", [
    ("clip.m1v", "mpeg1video", "mpeg1video", {}),
    ("clip.m2v", "mpeg2video", "mpeg2video", {}),
    ("clip.h264", "libx264", "h264", {"bframes": "2"}),
    ("clip.m4v", "mpeg4", "m4v", {}),
])
def test_elementary_streams_count_their_frames_from_zero(tmp_path, name, codec, fmt, options):
    src = write(tmp_path / name, codec, 10, 64, 48, fmt=fmt, bframes=2 if codec.startswith("mpeg") else None,
                options=options)
    proc = _ok(run_cli(src, "--model", "bicubic"))
    # .m4v is also Apple's MP4 extension, which hatstream writes; the others become Matroska.
    out = tmp_path / ("clip.x2.m4v" if name.endswith(".m4v") else "clip.x2.mkv")
    assert ("elementary stream" in proc.stderr or "raw H.264" in proc.stderr) == (out.suffix == ".mkv")
    times, _, facts = decoded(out)
    # Rounded to Matroska's 1 ms: k/25 s is exact there.
    assert times == _steps(10, Fraction(25)), times
    assert (facts["width"], facts["height"], facts["pix_fmt"]) == (128, 96, "yuv420p")


# --- playable pixel formats -------------------------------------------------------------------

def test_mjpeg_422_in_mov_comes_out_420_unless_chroma_is_kept(tmp_path):
    src = write(tmp_path / "cam.mov", "mjpeg", 4, 64, 48, pix_fmt="yuvj422p", audio=("pcm_s16le",))
    _ok(run_cli(src, "--model", "bicubic"))
    times, _, facts = decoded(tmp_path / "cam.x2.mov")
    # 4:2:0, High profile, not High 4:2:2 (the h264 decoder names full range yuvj420p).
    assert facts["pix_fmt"] in ("yuv420p", "yuvj420p") and facts["profile"] == "High"
    assert times == decoded(src)[0]
    assert _audio(tmp_path / "cam.x2.mov") == _audio(src)
    _ok(run_cli(src, "-o", tmp_path / "keep.mkv", "--model", "bicubic", "--keep-chroma"))
    assert decoded(tmp_path / "keep.mkv")[2]["pix_fmt"] in ("yuv422p", "yuvj422p")


@pytest.mark.parametrize("source,codec,keep,expected", [
    ("yuvj422p", "libx264", False, "yuv420p"),
    ("yuv422p10le", "libx264", False, "yuv420p10le"),   # 10-bit stays 10-bit
    ("yuv444p12le", "libx265", False, "yuv420p12le"),
    ("gbrp", "libx264", False, "yuv420p"),
    ("yuv411p", "libx264", True, "yuv422p"),            # DV 4:1:1 kept: no chroma lost, 4:2:0 would
    ("yuv444p", "libx264", True, "yuv444p"),
    ("yuv422p", "ffv1", False, "yuv422p"),              # lossless keeps chroma
])
def test_default_pixel_format_plays_anywhere(source, codec, keep, expected):
    assert choose_layout(codec, PlaneLayout.from_pix_fmt(source), None, keep).pix_fmt == expected


def test_anamorphic_matroska_keeps_its_display_aspect(tmp_path):
    src = write(tmp_path / "wide.mkv", "mpeg4", 3, 72, 48, sar=Fraction(32, 27))
    assert decoded(src)[2]["sar"] == Fraction(32, 27)
    _ok(run_cli(src, "--model", "bicubic"))
    facts = decoded(tmp_path / "wide.x2.mkv")[2]
    assert (facts["width"], facts["height"], facts["sar"]) == (144, 96, Fraction(32, 27))


def test_preview_frames_are_deinterlaced_as_run_decodes_them(tmp_path):
    # `hatstream preview` seeks to a frame; with an interlaced source it must show the frame that
    # `run`'s decode loop gives (bwdif from its neighbours), not the combed one.
    from hatstream.media.decode import read_frames
    from hatstream.media.deinterlace import plan_deinterlace
    from hatstream.media.probe import probe
    from hatstream.media.seek import frames_at

    src = write(tmp_path / "i.mpg", "mpeg2video", 5, 176, 120, fmt="dvd", rate=NTSC, tff=True,
                picture=interlaced_picture, options={"b": "6000000"})
    info = probe(src)
    plan = plan_deinterlace(info, "auto")
    assert plan is not None
    run_frames = list(read_frames(info, deinterlace="auto"))
    t = float((run_frames[2].pts - run_frames[0].pts) * info.time_base)
    seen = frames_at(info, [t], plan)[0]
    assert seen.pts == run_frames[2].pts
    assert all(np.array_equal(a, b) for a, b in zip(seen.planes, run_frames[2].planes))
    combed = frames_at(info, [t])[0]
    assert combing(combed.planes[0]) > 10 * combing(seen.planes[0])
