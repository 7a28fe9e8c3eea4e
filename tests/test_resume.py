"""Resumable `hatstream run`: kill -9 mid-run, rerun, and get the uninterrupted output, frame for frame.

The clip is 6 s at 10 fps (60 frames, 64x48) of x264 with a keyframe every 5 frames and AAC
audio, cut into 0.5 s segments (12 of them), so a run is killed with several segments done and
several to go. Outputs are lossless (ffv1, bicubic), so decoded frames compare exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from mediagen import Audio, Clip, dump_packets, frame_times, make_video, popen_cli, read_planes, run_cli

FRAMES = 60
CLIP = Clip(frames=FRAMES, rate=Fraction(10), codec="libx264", options={"g": "5", "bf": "2"},
            audio=(Audio(language="eng"),), chapters=((0, 2000, "one"), (2000, 6000, "two")))
SEGMENTED = ("--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0.5", "--json")


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc


def _done(proc) -> dict:
    return json.loads(_ok(proc).stdout.strip().splitlines()[-1])


def _work(out):
    return out.with_name(f".{out.name}.hatstream-work")


def _manifest(out) -> dict | None:
    try:
        return json.loads((_work(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _kill_after(src, out, segments: int, *extra, wait: float = 120) -> dict:
    """Start a segmented run, SIGKILL it once `segments` are recorded (within `wait` s); returns the
    manifest it left."""
    proc = popen_cli(src, "-o", out, *SEGMENTED, *extra)
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = _manifest(out)
            if manifest and len(manifest["done"]) >= segments:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run was not caught mid-way: {err}"
    assert not out.exists(), "nothing may appear at the output path before the assembly"
    manifest = _manifest(out)
    assert 0 < len(manifest["done"]) < len(manifest["segments"])
    return manifest


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The source clip and the uninterrupted, unsegmented reference output."""
    folder = tmp_path_factory.mktemp("resume")
    src = make_video(folder / "clip.mkv", CLIP)
    ref = folder / "ref.mkv"
    _ok(run_cli(src, "-o", ref, "--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0"))
    return src, ref


def _same_output(out, ref, src):
    """Frame for frame, pts for pts and audio byte for byte the same as the reference."""
    a, b = read_planes(out), read_planes(ref)
    assert len(a) == len(b) == FRAMES
    assert all(all((x == y).all() for x, y in zip(pa, pb)) for pa, pb in zip(a, b))
    assert frame_times(out) == frame_times(ref) == frame_times(src)
    out_audio, src_audio = dump_packets(out, "audio"), dump_packets(src, "audio")
    assert [p[4] for p in next(iter(out_audio.values()))] == [p[4] for p in next(iter(src_audio.values()))]
    assert dump_packets(out) == dump_packets(ref)  # every packet of every stream: timing and bytes
    with av.open(str(out)) as o, av.open(str(ref)) as r:
        assert o.chapters() == r.chapters()
        assert o.streams.audio[0].metadata.get("language") == "eng"


def test_killed_run_resumes_with_only_the_remaining_frames(clip, tmp_path):
    src, ref = clip
    out = tmp_path / "out.mkv"
    manifest = _kill_after(src, out, 2)
    already = sum(d["frames"] for d in manifest["done"])
    done = _done(run_cli(src, "-o", out, *SEGMENTED))
    assert done["frames"] == FRAMES and done["note"] is None
    # The rerun took the finished segments as they were and upscaled only the rest.
    assert done["resumed"] == already and 0 < already < FRAMES
    _same_output(out, ref, src)
    assert not _work(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv"]


def test_damaged_last_segment_is_redone(clip, tmp_path):
    src, ref = clip
    out = tmp_path / "out.mkv"
    manifest = _kill_after(src, out, 3)
    last = manifest["done"][-1]
    seg = _work(out) / last["path"]
    seg.write_bytes(seg.read_bytes()[: last["size"] // 2])  # as if cut short by a crash of the disk
    proc = run_cli(src, "-o", out, *SEGMENTED)
    done = _done(proc)
    assert f"segment {last['index']} is damaged" in proc.stderr
    assert done["resumed"] == sum(d["frames"] for d in manifest["done"][:-1])
    _same_output(out, ref, src)


@pytest.mark.parametrize("change", ["input", "settings", "no-resume"])
def test_changed_input_or_settings_start_over(clip, tmp_path, change):
    src, ref = clip
    # A copy, not a second encode: x264's rate control (mbtree) is not bit-reproducible on tiny
    # frames, and `ref` was made from `src`'s own bytes.
    own = Path(shutil.copyfile(src, tmp_path / "clip.mkv"))
    out = tmp_path / "out.mkv"
    _kill_after(own, out, 1)
    extra = ()
    if change == "input":
        make_video(own, dataclasses.replace(CLIP, image=_flat))
    elif change == "settings":
        extra = ("--pix-fmt", "yuv444p")
    else:
        extra = ("--no-resume",)
    proc = run_cli(own, "-o", out, *SEGMENTED, *extra)
    done = _done(proc)
    assert done["resumed"] == 0 and done["frames"] == FRAMES
    reason = {"input": "input", "settings": "pix_fmt", "no-resume": "--no-resume"}[change]
    assert done["note"].startswith("started over") and reason in done["note"]
    assert "starting over" in proc.stderr and reason in proc.stderr
    if change == "no-resume":
        _same_output(out, ref, src)


def _flat(i, w, h):
    import numpy as np
    return np.full((h, w, 3), 40 + i, np.uint8)


def test_x264_mp4_segments_join_with_continuous_timestamps(clip, tmp_path):
    # x264 with B-frames starts each segment with a negative dts offset, which NUT cannot store
    # and MP4 keeps in an edit list; the joins must still give the input's pts and rising dts.
    src, _ = clip
    out = tmp_path / "out.mp4"
    done = _done(run_cli(src, "-o", out, "--model", "bicubic", "--segment-seconds", "1", "--json"))
    assert done["frames"] == FRAMES
    assert frame_times(out) == frame_times(src)
    packets = next(iter(dump_packets(out, "video").values()))
    dts = [p[1] for p in packets]
    assert all(a < b for a, b in zip(dts, dts[1:]))
    assert sum(1 for p in packets if p[0] is not None and p[1] is not None and p[1] < 0) > 0  # B-frame delay kept
    with av.open(str(out)) as c:
        keys = [p.pts for p in c.demux(c.streams.video[0]) if p.size and p.is_keyframe]
        assert len(keys) >= 5  # one IDR at each segment's start
    assert [p[4] for p in next(iter(dump_packets(out, "audio").values()))] == \
        [p[4] for p in next(iter(dump_packets(src, "audio").values()))]


def test_segment_plan_cuts_at_keyframes_and_skips_short_inputs(clip):
    from hatstream.media.probe import probe
    from hatstream.pipeline.segments import index_keyframes, plan_segments

    info = probe(clip[0])
    index = index_keyframes(info)
    assert index.packets == FRAMES and len(index.keyframes) >= FRAMES // 5  # x264's g=5 is a maximum
    segments = plan_segments(info, 1.0, index)
    assert segments[0].start_pts is None and segments[-1].end_pts is None
    assert all(a.end_pts == b.start_pts and b.start_pts in index.keyframes for a, b in zip(segments, segments[1:]))
    assert all(b.start_pts - (a.start_pts or 0) >= 1000 for a, b in zip(segments, segments[1:]))  # >= 1 s
    assert len(segments) >= 4
    assert len(plan_segments(info, 60.0)) == 1  # shorter than one segment: one pass, nothing indexed
    assert len(plan_segments(info, 0)) == 1     # segments off


def test_segments_computed_at_once_give_the_serial_output(clip, tmp_path):
    src, ref = clip
    out = tmp_path / "parallel.mkv"
    done = _done(run_cli(src, "-o", out, *SEGMENTED, "--segment-workers", "3"))
    assert done["frames"] == FRAMES and done["resumed"] == 0
    _same_output(out, ref, src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel.mkv"]


def test_av1_segments_join_although_its_decoder_has_no_encoder_namesake(clip, tmp_path):
    # The joined output copies the segments' stream; PyAV looks a template's codec up by its
    # decoder's name, and AV1 is decoded by libdav1d, which no encoder is called.
    src, _ = clip
    out = tmp_path / "out.mkv"
    done = _done(run_cli(src, "-o", out, "--model", "bicubic", "--codec", "libsvtav1", "--segment-seconds", "1",
                         "--json"))
    assert done["frames"] == FRAMES
    assert frame_times(out) == frame_times(src)
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.codec.id == av.codec.Codec("libsvtav1", "w").id
        assert sum(1 for _ in c.decode(stream)) == FRAMES
