"""Stage timings: the seconds each stage worked come back filled, locally and from real Ray actors.

What the numbers are is for benchmarks/; here only that every stage that ran was timed, once per
frame.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from hatstream.media.encode import EncodeSettings
from hatstream.media.probe import probe
from hatstream.media.writer import plan_output
from hatstream.pipeline.engine import StageTimes
from hatstream.pipeline.segments import Segment, SegmentRecipe, encode_segment, plan_segments, upscaler_for
from conftest import processes_marked
from mediagen import Clip, make_video

MARK = "HATSTREAM_STAGE_TIMES_TEST"
FRAMES = 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # Keyframes at least every 4 frames at 10 fps, so 0.3 s segments cut it into several.
    return make_video(tmp_path_factory.mktemp("times") / "clip.mp4",
                      Clip(frames=FRAMES, rate=10, codec="libx264", options={"g": "4", "bf": "0"}))


def _recipe(clip: Path, out: Path):
    from hatstream.inference import load_model

    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    info = probe(clip)
    return SegmentRecipe(info, plan_output(info, out, 2, EncodeSettings(codec="ffv1"))), model


def test_a_segment_reports_decode_model_and_encode_time(clip, tmp_path):
    recipe, model = _recipe(clip, tmp_path / "out.mkv")
    times = StageTimes()
    done = encode_segment(recipe, Segment(0, None, None), upscaler_for(recipe, model), tmp_path / "seg.nut",
                          times=times)
    assert done.frames == times.frames == FRAMES
    assert times.decode > 0 and times.model > 0 and times.encode > 0
    assert set(times.as_dict()) == {"decode", "model", "encode", "frames"}


def _ray_processes(tag: str) -> list[int]:
    return processes_marked(MARK, tag)


@pytest.mark.slow
def test_ray_actors_report_where_the_time_went(clip, tmp_path, monkeypatch):
    """Both Ray modes on one embedded instance: per-frame (`run_ray`) and segments (`RaySegments`)."""
    import ray

    from hatstream.media.decode import read_frames
    from hatstream.pipeline.ray_engine import RayOptions, RaySegments, run_ray
    from hatstream.pipeline.resume import run_resumable
    from hatstream.pipeline.stage import FrameFormat
    from hatstream.raylocal import start_local_ray

    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARK, tag)  # inherited by every Ray process, so the check below finds only ours
    recipe, model = _recipe(clip, tmp_path / "out.mkv")
    info, plan = recipe.info, recipe.plan
    options = RayOptions(workers=2, device="cpu")
    start_local_ray(3, configure_logging=False, log_to_driver=False)
    try:
        frames_stats: dict = {}
        written = run_ray(read_frames(info), model, FrameFormat(info.layout, info.colour),
                          FrameFormat(plan.encoding.layout, plan.encoding.colour), lambda frame: None, options,
                          stats=frames_stats)
        assert written == FRAMES and len(frames_stats["actors"]) == 2
        assert sum(a["frames"] for a in frames_stats["actors"]) == FRAMES
        assert all(a["model"] > 0 for a in frames_stats["actors"] if a["frames"])
        assert frames_stats["transfer"] > 0

        segments = plan_segments(info, 0.3)
        assert len(segments) > 1
        segment_stats: dict = {}
        done = run_resumable(recipe, segments, RaySegments(model, options, segment_stats), tmp_path / "out.mkv",
                             settings=())
        assert done.frames == FRAMES
        assert sum(a["frames"] for a in segment_stats["actors"]) == FRAMES
        for key in ("decode", "model", "encode"):
            assert sum(a[key] for a in segment_stats["actors"]) > 0
        assert segment_stats["remux"] > 0 and segment_stats["put"] > 0 and segment_stats["transfer"] > 0
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 60
        while _ray_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not _ray_processes(tag), "Ray processes left running"
