"""`hatstream run` end to end on real media: frame count, timestamps, VFR, bit depth, colour, containers.

Each test writes a tiny clip with PyAV, runs the CLI as a subprocess, and reads the result back.
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
from mediagen import SWS_THREADS, Clip, frame_times, make_video, read_planes, run_cli, video_stream_info


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def test_mkv_lossless_keeps_frame_count_and_timestamps(tmp_path):
    src = make_video(tmp_path / "clip.mkv", Clip(frames=15))
    proc = _ok(run_cli(src, "--model", "bicubic", "--codec", "ffv1", "--batch", "4"))
    out = tmp_path / "clip.x2.mkv"  # the default name, beside the input
    assert out.exists()
    assert "15 frames" in proc.stdout and str(out) in proc.stdout
    info = video_stream_info(out)
    assert (info["codec"], info["width"], info["height"], info["pix_fmt"]) == ("ffv1", 128, 96, "yuv420p")
    assert frame_times(out) == frame_times(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "clip.x2.mkv"]  # no temp files left


def test_lossless_bicubic_output_matches_reference_resize(tmp_path):
    # With a lossless codec, the output luma must be the input upscaled by bicubic: this fails if
    # frames were reordered, repeated, shifted or came out of another frame.
    src = make_video(tmp_path / "c.mkv", Clip(frames=6, pix_fmt="yuv444p"))
    out = tmp_path / "o.mkv"
    _ok(run_cli(src, "-o", out, "--model", "bicubic", "--codec", "ffv1", "--batch", "3"))
    a, b = read_planes(src), read_planes(out)
    assert len(a) == len(b) == 6
    for i, (pa, pb) in enumerate(zip(a, b)):
        small = pb[0].reshape(48, 2, 64, 2).astype(float).mean(axis=(1, 3))
        err = np.abs(small - pa[0]).mean()
        other = np.abs(small - a[(i + 1) % 6][0]).mean()
        assert err < 3 and other > err + 3, (i, err, other)


def test_mp4_default_codec_is_x264_and_timestamps_survive_b_frames(tmp_path):
    src = make_video(tmp_path / "in.mp4", Clip(frames=20, codec="libx264"))
    _ok(run_cli(src, "--model", "bicubic", "--json"))
    out = tmp_path / "in.x2.mp4"
    info = video_stream_info(out)
    assert info["codec"] == "h264" and (info["width"], info["height"]) == (128, 96)
    assert frame_times(out) == frame_times(src)
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == 20


def test_variable_frame_rate_keeps_every_timestamp(tmp_path):
    pts = (0, 3000, 9000, 9500, 20000, 21000, 30000, 45000, 46000, 50000, 51500, 70000)
    src = make_video(tmp_path / "vfr.mp4", Clip(codec="libx264", time_base=Fraction(1, 90000), pts=pts))
    out = tmp_path / "vfr.up.mp4"
    _ok(run_cli(src, "-o", out, "--model", "bicubic", "--codec", "libx264", "--crf", "30"))
    expected = [Fraction(p, 90000) for p in pts]
    assert frame_times(src) == expected
    assert frame_times(out) == expected


def test_variable_frame_rate_in_matroska(tmp_path):
    pts = (0, 40, 50, 130, 140, 300, 310, 320, 500, 540)
    src = make_video(tmp_path / "vfr.mkv", Clip(time_base=Fraction(1, 1000), pts=pts))
    _ok(run_cli(src, "--model", "bicubic", "--codec", "ffv1"))
    assert frame_times(tmp_path / "vfr.x2.mkv") == [Fraction(p, 1000) for p in pts]


def _flat_10bit(i):
    # A neutral grey (inside the RGB cube) whose codes are not multiples of 4: any trip through
    # 8 bits would change them. A constant picture stays constant under bicubic.
    return (np.full((48, 64), 515 + i, np.uint16), np.full((24, 32), 509, np.uint16), np.full((24, 32), 517, np.uint16))


def test_10bit_input_stays_10bit_without_truncation(tmp_path):
    src = make_video(tmp_path / "ten.mkv", Clip(frames=4, pix_fmt="yuv420p10le", planes=_flat_10bit,
                                                colour_tags=(1, 1, 1, 1)))
    _ok(run_cli(src, "--model", "bicubic", "--codec", "ffv1"))
    out = tmp_path / "ten.x2.mkv"
    assert video_stream_info(out)["pix_fmt"] == "yuv420p10le"
    for i, planes in enumerate(read_planes(out)):
        for plane, want in zip(planes, (515 + i, 509, 517)):
            assert plane.dtype == np.uint16
            assert np.all(plane == want), (i, want, np.unique(plane))


def test_10bit_default_codec_keeps_10bit(tmp_path):
    src = make_video(tmp_path / "ten.mp4", Clip(frames=4, codec="libx264", pix_fmt="yuv420p10le"))
    _ok(run_cli(src, "--model", "bicubic"))
    info = video_stream_info(tmp_path / "ten.x2.mp4")
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p10le"


PATCHES = [(235, 30, 30), (30, 200, 40), (20, 40, 220), (240, 240, 240), (128, 128, 128), (200, 120, 30),
           (16, 16, 16), (90, 200, 210), (180, 60, 170), (250, 220, 20), (60, 60, 120), (140, 90, 60)]


def _patches(i, width, height):
    img = np.zeros((height, width, 3), np.uint8)
    for n, colour in enumerate(PATCHES):
        r, c = divmod(n, 4)
        img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = colour
    return img


def test_bt709_patches_keep_their_rgb(tmp_path):
    # BT.709 limited-range YUV, tagged. Decoding the output with its tags must give back each
    # patch's RGB within 3 levels; reading it with BT.601 would be off by far more for the
    # saturated patches, so a wrong matrix anywhere fails this.
    src = make_video(tmp_path / "col.mkv", Clip(frames=3, image=_patches, colour_tags=(1, 1, 1, 1)))
    _ok(run_cli(src, "--model", "bicubic", "--codec", "ffv1"))
    out = tmp_path / "col.x2.mkv"
    assert video_stream_info(out)["colour_tags"] == (1, 1, 1, 1)
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24", threads=SWS_THREADS).astype(int)
        wrong = frame.to_ndarray(format="rgb24", src_colorspace="ITU601", threads=SWS_THREADS).astype(int)
    worst_wrong = 0
    for n, colour in enumerate(PATCHES):
        r, c = divmod(n, 4)
        inner = (slice(r * 32 + 8, r * 32 + 24), slice(c * 32 + 8, c * 32 + 24))
        diff = np.abs(rgb[inner] - np.array(colour)).max()
        assert diff <= 3, (colour, diff)
        worst_wrong = max(worst_wrong, np.abs(wrong[inner] - np.array(colour)).max())
    assert worst_wrong > 10  # the check above can tell the two matrices apart


def test_webm_without_audio(tmp_path):
    src = make_video(tmp_path / "clip.webm", Clip(frames=8, codec="libvpx-vp9"))
    _ok(run_cli(src, "--model", "bicubic"))
    out = tmp_path / "clip.x2.webm"
    info = video_stream_info(out)
    assert info["codec"] == "vp9" and (info["width"], info["height"]) == (128, 96) and info["frames"] == 8
    assert frame_times(out) == frame_times(src)
    with av.open(str(out)) as c:
        assert c.format.name.startswith("matroska") and not c.streams.audio


def test_json_progress_lines(tmp_path):
    src = make_video(tmp_path / "clip.mkv", Clip(frames=6))
    proc = _ok(run_cli(src, "--model", "bicubic", "--codec", "ffv1", "--json"))
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[0]["total"] == 6 and events[0]["total_exact"] is False
    assert events[-1]["event"] == "done" and events[-1]["frames"] == 6
    assert any(e["event"] == "progress" for e in events)


def test_tiny_hat_checkpoint_runs(tmp_path):
    torch = pytest.importorskip("torch")
    from hatstream.models.hat import HAT

    torch.manual_seed(0)
    model = HAT(upscale=2, window_size=8, embed_dim=24, depths=[1], num_heads=[3], compress_ratio=3,
                squeeze_factor=8, mlp_ratio=2)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"params_ema": model.state_dict()}, ckpt)
    src = make_video(tmp_path / "clip.mkv", Clip(frames=3, width=40, height=30))
    _ok(run_cli(src, "--model", ckpt, "--codec", "ffv1", "--batch", "2"))
    info = video_stream_info(tmp_path / "clip.x2.mkv")
    assert (info["width"], info["height"], info["frames"]) == (80, 60, 3)


def test_an_unknown_x264_preset_is_named_before_any_work(tmp_path):
    # x264 itself only logs "invalid preset" and FFmpeg answers "Invalid argument".
    src = make_video(tmp_path / "in.mkv", Clip(frames=2, width=32, height=24))
    res = run_cli(src, "-o", tmp_path / "out.mkv", "--model", "bicubic", "--preset", "fastest")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1] == (
        "hatstream: error: libx264 has no preset 'fastest'; choose one of ultrafast, superfast, veryfast, faster, "
        "fast, medium, slow, slower, veryslow, placebo")
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out.mkv").exists()
    assert run_cli(src, "-o", tmp_path / "out.mkv", "--model", "bicubic", "--preset", "veryfast").returncode == 0
