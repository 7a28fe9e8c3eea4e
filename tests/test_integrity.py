"""Fault injection: hostile inputs and hostile state, the real run, and nothing lost, kept wrong or touched
outside its folder.

Each test builds the hostile thing for real (a cut file, a tampered manifest, a ledger row, a replaced
input), runs the real CLI or library entry point on it, and checks the outcome on disk.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import pytest
from mediagen import Audio, Clip, make_video, run_cli

SEGMENTED = ("--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0.5")
LONG = Clip(frames=80, rate=Fraction(10), codec="libx264", options={"g": "5", "bf": "2"}, audio=(Audio(),))


def _error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("hatstream: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


def _faststart(src, dst):
    """Remux `src` into an MP4 whose index (moov) comes first, so that a cut copy still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


# ---- truncated inputs on the segmented path ---------------------------------------------------------

@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    mkv = make_video(folder / "long.mkv", LONG)
    mp4 = _faststart(mkv, folder / "long.mp4")
    return {"mkv": mkv, "mp4": mp4}


@pytest.mark.parametrize("ext,keep", [("mkv", 0.5), ("mkv", 0.75), ("mp4", 0.6)])
def test_truncated_input_fails_segmented_as_in_one_pass(long_clips, tmp_path, ext, keep):
    data = long_clips[ext].read_bytes()
    src = tmp_path / f"cut.{ext}"
    src.write_bytes(data[: int(len(data) * keep)])
    one_pass = _error(run_cli(src, "-o", tmp_path / "one.mkv", *SEGMENTED[:4], "--segment-seconds", "0"))
    segmented = _error(run_cli(src, "-o", tmp_path / "seg.mkv", *SEGMENTED))
    assert "truncated" in one_pass
    assert segmented == one_pass
    # No output, no work folder, no temporary file: only the input is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
