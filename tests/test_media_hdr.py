"""HDR10 sources keep BT.2020, PQ/HLG, 10 bits and their mastering-display and light-level metadata."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
from mediagen import Clip, make_video, run_cli

from hatstream.media.formats import HdrMetadata
from hatstream.media.probe import probe

MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"  # P3 D65, 1000 cd/m2


def _hdr10(path, trc=16):
    return make_video(path, Clip(frames=3, codec="libx265", pix_fmt="yuv420p10le", colour_tags=(9, 1, 9, trc),
                                 options={"crf": "20", "x265-params":
                                          f"log-level=error:hdr10=1:master-display={MASTER}:max-cll=1000,400"}))


def _first_frame_hdr(path):
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        found = {str(sd.type).rsplit(".", 1)[-1]: bytes(sd) for sd in frame.side_data}
        tags = (int(frame.colorspace), int(frame.color_range), int(frame.color_primaries), int(frame.color_trc))
        return (frame.format.name, tags, HdrMetadata.from_side_data(found.get("MASTERING_DISPLAY_METADATA"),
                                                                  found.get("CONTENT_LIGHT_LEVEL")))


def test_probe_reads_the_mastering_display_and_light_levels(tmp_path):
    info = probe(_hdr10(tmp_path / "hdr.mkv"))
    assert info.colour_tags == (9, 1, 9, 16) and info.bit_depth == 10
    assert info.hdr.max_cll == 1000 and info.hdr.max_fall == 400
    assert info.hdr.luminance == (Fraction(1, 200), 1000) and float(info.hdr.primaries[1][1]) == 0.69
    assert info.hdr.x265_params() == [f"master-display={MASTER}", "max-cll=1000,400"]


@pytest.mark.parametrize("name, trc", [("pq.mkv", 16), ("hlg.mp4", 18)])
def test_hdr10_output_keeps_bt2020_transfer_depth_and_metadata(tmp_path, name, trc):
    src = _hdr10(tmp_path / ("src" + name[-4:]), trc)
    proc = run_cli(src, "-o", tmp_path / name, "--model", "bicubic")
    assert proc.returncode == 0, proc.stderr
    with av.open(str(tmp_path / name)) as c:
        assert c.streams.video[0].codec_context.name == "hevc"  # the default for HDR: x264 cannot carry it
    pix_fmt, tags, hdr = _first_frame_hdr(tmp_path / name)
    assert pix_fmt == "yuv420p10le" and tags == (9, 1, 9, trc)
    assert hdr == probe(src).hdr
