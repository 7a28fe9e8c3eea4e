"""`--segment-workers auto`: how many segments a local run computes at once, from the machine."""

from __future__ import annotations

import logging
from fractions import Fraction

from mediagen import Clip, make_video, read_planes

from hatstream.media.encode import EncodeSettings
from hatstream.pipeline.run import RunConfig, auto_segment_workers, run_file

GiB = 1 << 30
FRAME_2160P = 3840 * 2160 * 3 // 2  # one 8-bit 4:2:0 output frame


def test_a_cpu_model_keeps_the_cores_whatever_the_machine():
    for cores in (2, 16, 64, 256):
        assert auto_segment_workers(True, cores, 512 * GiB, FRAME_2160P) == 1


def test_a_gpu_model_gets_one_more_encoder_for_every_16_free_cores():
    # The encoders get all cores but two (decode, driver); one encoder uses up to 16 of them well.
    expected = {2: 1, 4: 1, 16: 1, 18: 1, 19: 2, 34: 2, 35: 3, 64: 4, 128: 8}
    got = {cores: auto_segment_workers(False, cores, 512 * GiB, FRAME_2160P) for cores in expected}
    assert got == expected


def test_memory_bounds_the_segments_at_once():
    # 64 cores want 4 encoders of 15 threads; each holds ~ (48 + 15 + 3) 2160p frames, 0.8 GB.
    assert auto_segment_workers(False, 64, 8 * GiB, FRAME_2160P) == 4
    assert auto_segment_workers(False, 64, 4 * GiB, FRAME_2160P) == 2   # 2 GiB usable: 3 encoders of 20 threads would hold 2.6 GB
    assert auto_segment_workers(False, 64, 1 * GiB, FRAME_2160P) == 1
    assert auto_segment_workers(False, 64, None, FRAME_2160P) == 1      # memory unknown: no parallel segments
    # Bigger batches hold more frames in the queues.
    assert auto_segment_workers(False, 64, 8 * GiB, FRAME_2160P, batch=16) < 4


def test_auto_on_this_machine_runs_the_serial_path(tmp_path, caplog):
    # 20 frames with a keyframe every 5 (0.5 s at 10 fps): 0.4 s segments give 4 of them. The model
    # is on the CPU, so auto keeps one segment at a time, whatever this machine's cores.
    src = make_video(tmp_path / "clip.mkv", Clip(frames=20, rate=Fraction(10), codec="libx264", options={"g": "5"}))
    caplog.set_level(logging.INFO, logger="hatstream.pipeline.run")
    out = tmp_path / "out.mkv"
    done = run_file(RunConfig(input=src, output=out, model="bicubic", scale=2, device="cpu",
                              encode=EncodeSettings(codec="ffv1"), segment_seconds=0.4))
    assert done.frames == 20 and len(read_planes(out)) == 20
    assert "4 segments, 1 computed at once (--segment-workers auto)" in caplog.text, caplog.text


def test_the_option_takes_auto_or_a_count(capsys):
    from hatstream.cli import build_parser

    parser, _ = build_parser()
    assert parser.parse_args(["run", "in.mkv"]).segment_workers is None          # auto by default
    assert parser.parse_args(["run", "in.mkv", "--segment-workers", "auto"]).segment_workers is None
    assert parser.parse_args(["run", "in.mkv", "--segment-workers", "3"]).segment_workers == 3
    for bad in ("0", "two"):
        try:
            parser.parse_args(["run", "in.mkv", "--segment-workers", bad])
            raise AssertionError(f"--segment-workers {bad} was accepted")
        except SystemExit as exc:
            assert exc.code == 2
    assert "--segment-workers" in capsys.readouterr().err
