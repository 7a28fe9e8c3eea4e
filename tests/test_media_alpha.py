"""Alpha channels: VP9 with alpha in WebM, ProRes 4444, RGBA (PNG in MOV), FFV1 with alpha.

The alpha plane is upscaled bicubically beside the model and written where the output codec
holds it; elsewhere the run warns once and writes an opaque file without a stale ALPHA_MODE tag.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from mediagen import run_cli

from hatstream.media.decode import read_frames
from hatstream.media.probe import probe
from hatstream.pipeline.segments import plan_segments, segment_frames, segment_payload

W, H = 64, 48


def _alpha_video(path, codec, pix_fmt, options=None, frames=3, gop=None):
    """Red fading in from transparent (left) to opaque (right): alpha = 4 * x."""
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        s.options = options or {}
        if gop:
            s.codec_context.gop_size = gop
        for i in range(frames):
            rgba = np.zeros((H, W, 4), np.uint8)
            rgba[..., 0], rgba[..., 3] = 200, np.arange(W) * 4
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def _alpha_of_output(path):
    info = probe(path)
    frame = next(read_frames(info))
    assert info.layout.has_alpha and len(frame.planes) == 4, info.pix_fmt
    return info, frame.planes[3].astype(np.float64) / info.layout.max_value


def _assert_ramp(alpha, scale=2):
    assert alpha.shape == (H * scale, W * scale)
    columns = alpha.mean(axis=0)
    expected = np.clip((np.arange(W * scale) + 0.5) / scale - 0.5, 0, W - 1) * 4 / 255
    # The ramp comes through upscaled (lossy codecs and bicubic allow a few code values).
    assert np.abs(columns - expected).max() < 0.03
    assert columns[0] < 0.02 and columns[-1] > 0.97


@pytest.mark.parametrize("src_name, codec, pix_fmt, options, out_name, args", [
    ("vp9.webm", "libvpx-vp9", "yuva420p", {"lossless": "1"}, "out.webm", ()),
    ("prores.mov", "prores_ks", "yuva444p10le", None, "out.mov", ("--codec", "prores_ks")),
    ("rgba.mov", "png", "rgba", None, "out.mkv", ("--codec", "ffv1")),
    ("ffv1.mkv", "ffv1", "yuva420p", None, "out.mkv", ("--codec", "ffv1")),
])
def test_alpha_is_upscaled_and_kept(tmp_path, src_name, codec, pix_fmt, options, out_name, args):
    src = _alpha_video(tmp_path / src_name, codec, pix_fmt, options)
    assert probe(src).layout.has_alpha
    out = tmp_path / out_name
    proc = run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2", *args)
    assert proc.returncode == 0, proc.stderr
    assert "alpha" not in proc.stderr
    info, alpha = _alpha_of_output(out)
    _assert_ramp(alpha)
    if out_name.endswith(".webm"):
        with av.open(str(out)) as c:
            assert c.streams.video[0].metadata.get("alpha_mode") == "1"
            # Players decode it with libvpx, as hatstream does.
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert info.pix_fmt == "yuva420p"


def test_vp9_alpha_into_mp4_warns_once_and_drops_the_tag(tmp_path):
    src = _alpha_video(tmp_path / "alpha.webm", "libvpx-vp9", "yuva420p")
    with av.open(str(src)) as c:
        assert c.streams.video[0].metadata.get("alpha_mode") == "1"
    out = tmp_path / "out.mkv"
    proc = run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("alpha channel is not carried") == 1
    assert "--codec ffv1" in proc.stderr
    with av.open(str(out)) as c:
        assert not any(k.lower() == "alpha_mode" for k in c.streams.video[0].metadata)
    info = probe(out)
    assert not info.layout.has_alpha and info.pix_fmt == "yuv420p"
    # The colour is still the source's red (the transparent part's colour is kept, not blackened).
    frame = next(read_frames(info))
    assert len(frame.planes) == 3 and frame.planes[2].mean() > 180  # Cr of saturated red


def test_prores_4444_alpha_into_h264_is_reported(tmp_path):
    src = _alpha_video(tmp_path / "alpha.mov", "prores_ks", "yuva444p10le")
    proc = run_cli(src, "-o", tmp_path / "out.mov", "--model", "bicubic", "--scale", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("alpha channel is not carried") == 1 and "prores_ks" in proc.stderr


def _vp9_alpha_segments(tmp_path):
    """15 frames of VP9 with alpha (lossless), a keyframe every 5: three 0.2 s segments."""
    return _alpha_video(tmp_path / "alpha.webm", "libvpx-vp9", "yuva420p", {"lossless": "1"}, frames=15, gop=5)


def test_vp9_alpha_keeps_its_alpha_in_segmented_runs(tmp_path):
    src = _vp9_alpha_segments(tmp_path)
    assert len(plan_segments(probe(src), 0.15)) == 3
    # Into WebM: the encoded alpha (BlockAdditional) survives the segment files and the join.
    out = tmp_path / "out.webm"
    proc = run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2", "--segment-seconds", "0.15")
    assert proc.returncode == 0, proc.stderr
    assert "alpha" not in proc.stderr
    # The track's AlphaMode element (EBML id 0x53C0, value 1), which browsers read.
    assert b"\x53\xc0\x81\x01" in out.read_bytes()
    info = probe(out)
    frames = list(read_frames(info))
    assert info.pix_fmt == "yuva420p" and len(frames) == 15
    for frame in frames:
        assert len(frame.planes) == 4
        _assert_ramp(frame.planes[3].astype(np.float64) / info.layout.max_value)
    # Lossless (ffv1): the segmented output is the one-pass output, alpha included, frame for frame.
    runs = {}
    for name, seconds in (("one", "0"), ("cut", "0.15")):
        runs[name] = tmp_path / f"{name}.mkv"
        proc = run_cli(src, "-o", runs[name], "--model", "bicubic", "--scale", "2", "--codec", "ffv1",
                       "--segment-seconds", seconds)
        assert proc.returncode == 0, proc.stderr
    one, cut = (list(read_frames(probe(runs[n]))) for n in ("one", "cut"))
    assert [f.pts for f in one] == [f.pts for f in cut] and len(one) == 15
    assert all(len(a.planes) == 4 and all(np.array_equal(x, y) for x, y in zip(a.planes, b.planes))
               for a, b in zip(one, cut))


def test_vp9_alpha_segment_payloads_decode_with_their_alpha(tmp_path):
    # What a farm node decodes: each segment's packets remuxed in memory, without the input file.
    info = probe(_vp9_alpha_segments(tmp_path))
    whole = list(read_frames(info))
    remote = [f for seg in plan_segments(info, 0.15)
              for f in segment_frames(info, seg, source=segment_payload(info, seg))]
    assert [f.pts for f in remote] == [f.pts for f in whole] and len(whole) == 15
    assert all(len(a.planes) == 4 and all(np.array_equal(x, y) for x, y in zip(a.planes, b.planes))
               for a, b in zip(whole, remote))
