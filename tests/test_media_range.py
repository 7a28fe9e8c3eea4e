"""Colour guesses for untagged video, range conversion to the JPEG formats, values outside 16-235."""

from __future__ import annotations

import numpy as np
from mediagen import Clip, make_video, read_planes, run_cli, video_stream_info

from hatstream.media.formats import ColourSpec, PlaneLayout
from hatstream.media.probe import probe


def test_untagged_widescreen_hd_is_bt709_as_players_guess():
    yuv = PlaneLayout.from_pix_fmt("yuv420p")
    for (w, h), matrix in {(1280, 544): "bt709", (1920, 800): "bt709", (960, 720): "bt709", (1024, 576): "bt601",
                           (720, 576): "bt601", (720, 480): "bt601"}.items():
        assert ColourSpec.from_tags(2, 0, h, yuv, w).matrix == matrix, (w, h)


def test_probe_and_output_tag_untagged_1280x544_as_bt709(tmp_path):
    src = make_video(tmp_path / "wide.mkv", Clip(frames=2, width=1280, height=544))  # ffv1 writes no matrix
    info = probe(src)
    assert info.colour_tags[0] == 2 and info.colour.matrix == "bt709"
    proc = run_cli(src, "-o", tmp_path / "out.mkv", "--model", "bicubic", "--scale", "1", "--codec", "ffv1")
    assert proc.returncode == 0, proc.stderr
    assert video_stream_info(tmp_path / "out.mkv")["colour_tags"][0] == 1  # tagged BT.709 explicitly


def test_pix_fmt_yuvj420p_converts_a_limited_range_source_to_full_range(tmp_path):
    # Limited-range white (235) over black (16): in a full-range format they must become 255 and 0.
    def planes(i):
        y = np.full((48, 64), 235, np.uint8)
        y[24:] = 16
        return y, np.full((24, 32), 128, np.uint8), np.full((24, 32), 128, np.uint8)
    src = make_video(tmp_path / "lim.mkv", Clip(frames=2, planes=planes, colour_tags=(1, 1, 1, 1)))
    proc = run_cli(src, "-o", tmp_path / "out.mp4", "--model", "bicubic", "--codec", "libx264",
                   "--crf", "0", "--pix-fmt", "yuvj420p")
    assert proc.returncode == 0, proc.stderr
    info = video_stream_info(tmp_path / "out.mp4")
    assert info["pix_fmt"] == "yuvj420p" and info["colour_tags"][1] == 2
    luma = read_planes(tmp_path / "out.mp4")[0][0].astype(int)
    assert abs(np.median(luma[:40]) - 255) <= 1 and abs(np.median(luma[-40:]) - 0) <= 1, np.median(luma[:40])


def test_super_whites_and_blacks_survive_the_model_in_limited_range(tmp_path):
    import torch
    import torch.nn.functional as F

    from hatstream.pipeline.stage import FrameFormat, upscale_planes

    def model(rgb):  # what every Upscaler returns: the model's output clamped to [0, 1]
        return F.interpolate(rgb, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)

    y = np.full((32, 32), 128, np.uint8)
    y[:, :12] = 250   # camera super-white, above 235
    y[:, -12:] = 6    # super-black, below 16
    chroma = np.full((16, 16), 128, np.uint8)
    fmt = FrameFormat(PlaneLayout.from_pix_fmt("yuv420p"), ColourSpec("bt709", False))
    (out_y, out_u, out_v), = upscale_planes([(y, chroma, chroma)], model, fmt, fmt, torch.device("cpu"))
    assert out_y.shape == (64, 64)
    assert abs(int(np.median(out_y[:, :16])) - 250) <= 1 and abs(int(np.median(out_y[:, -16:])) - 6) <= 1
    assert abs(int(np.median(out_y[:, 28:36])) - 128) <= 1 and abs(int(np.median(out_u)) - 128) <= 1
    # A full-range output has no headroom: the same picture is clipped to 0-255 there, not wrapped.
    full = FrameFormat(PlaneLayout.from_pix_fmt("yuv420p"), ColourSpec("bt709", True))
    (fy, _, _), = upscale_planes([(y, chroma, chroma)], model, fmt, full, torch.device("cpu"))
    assert fy[:, :16].min() == 255 and fy[:, -16:].max() == 0


def test_the_summary_says_how_many_pixels_the_full_range_output_clipped(tmp_path):
    # 2 frames with 12x8 super-white pixels each: a yuvj420p output has no code above 255 for them.
    def planes(i):
        y = np.full((48, 64), 128, np.uint8)
        y[:8, :12] = 250
        return y, np.full((24, 32), 128, np.uint8), np.full((24, 32), 128, np.uint8)
    src = make_video(tmp_path / "hot.mkv", Clip(frames=2, planes=planes, colour_tags=(1, 1, 1, 1)))
    proc = run_cli(src, "-o", tmp_path / "out.mp4", "--model", "bicubic", "--codec", "libx264", "--crf", "0",
                   "--pix-fmt", "yuvj420p")
    assert proc.returncode == 0, proc.stderr
    assert "192 pixel(s) clipped to the output's range" in proc.stdout, proc.stdout
    # A limited-range output keeps them, and says nothing.
    proc = run_cli(src, "-o", tmp_path / "kept.mkv", "--model", "bicubic", "--codec", "ffv1")
    assert proc.returncode == 0, proc.stderr
    assert "clipped" not in proc.stdout, proc.stdout
