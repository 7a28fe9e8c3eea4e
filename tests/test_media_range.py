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
