"""Error flicker (`metrics.flicker`) on cases with known answers, and `--temporal on` (`pipeline.temporal`).

The synthetic scenes are textures with a known ground truth: a steady one with fresh noise in
every low-resolution frame (the filter must steady it), a cut between two scenes (nothing may
cross it), and a panning edge (nothing may trail behind it). The end-to-end tests run the real
CLI on small lossless clips with the bicubic model, so decoded frames compare exactly.
"""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
from conftest import run_cli as run_hatstream
from mediagen import Clip, make_video, read_planes, run_cli

from hatstream.metrics.flicker import error_flicker, flow_pair, plain_flicker, warping_error
from hatstream.metrics.quality import quantize
from hatstream.pipeline.temporal import TemporalConfig, TemporalFilter
from hatstream.train.data import make_lr
from hatstream.train.evaluate import bicubic_upscale


def _texture(h: int, w: int, seed: int = 0, blur: float = 1.5) -> np.ndarray:
    """A random texture in 30..220 with detail at every scale from `blur` px up, as photographs have:
    flat-spectrum noise would give optical flow nothing to hold on to at its coarse levels."""
    rng = np.random.default_rng(seed)
    t = sum(cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)), (0, 0), blur * 2 ** k) * 2 ** k for k in range(5))
    return (t - t.min()) / (t.max() - t.min()) * 190 + 30


def _upscale_y(hr: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """HR luma -> MATLAB-bicubic LR (uint8, plus `noise`) -> OpenCV bicubic x2, as uint8."""
    lr = quantize(make_lr(np.repeat(hr[..., None], 3, axis=2), 2))[..., 0].astype(np.float64)
    if noise is not None:
        lr = np.clip(lr + noise, 0, 255)
    return bicubic_upscale(np.rint(lr).astype(np.uint8), 2)


# ---- the metric -----------------------------------------------------------------------------

def test_steady_error_scores_zero():
    hr = [_texture(90, 120)] * 4
    pattern = np.random.default_rng(1).normal(0, 4, (90, 120))
    assert max(error_flicker([h + pattern for h in hr], hr, 2)) < 1e-6
    assert max(plain_flicker([h + pattern for h in hr], hr, 2)) < 1e-12


def test_alternating_error_scores_its_amplitude():
    hr = [_texture(90, 120)] * 5
    sr = [h + (3.0 if t % 2 else 0.0) for t, h in enumerate(hr)]
    assert error_flicker(sr, hr, 2) == pytest.approx([3.0] * 4, abs=1e-6)
    assert plain_flicker(sr, hr, 2) == pytest.approx([3.0] * 4, abs=1e-12)


def test_error_panning_with_the_picture_scores_nearly_zero():
    # The picture and its error both move 2 px right per frame: no flicker, though plenty of change.
    big = _texture(100, 200)
    pattern = np.random.default_rng(2).normal(0, 4, (100, 200))
    hr = [big[:, 40 - 2 * t:180 - 2 * t] for t in range(5)]
    sr = [h + pattern[:, 40 - 2 * t:180 - 2 * t] for t, h in enumerate(hr)]
    flicker = error_flicker(sr, hr, 4)
    plain = plain_flicker(sr, hr, 4)
    assert max(flicker) < 0.3, flicker
    assert min(plain) > 3.0, plain
    # The output alone (warping error) moves with its own flow just as well.
    assert max(warping_error(sr, 4, [flow_pair(hr[t], hr[t - 1]) for t in range(1, 5)])) < 0.5


# ---- the filter -----------------------------------------------------------------------------

def test_static_scene_with_noisy_input_flickers_less():
    hr = _texture(96, 128)
    rng = np.random.default_rng(3)
    per_frame = [_upscale_y(hr, rng.normal(0, 3, (48, 64))) for _ in range(10)]
    steady = TemporalFilter(2)
    filtered = [steady([y])[0] for y in per_frame]
    assert filtered[0].dtype == np.uint8 and filtered[0].shape == per_frame[0].shape
    gt = [hr] * 10
    before = np.mean(error_flicker(per_frame, gt, 2))
    after = np.mean(error_flicker(filtered, gt, 2))
    assert after < 0.9 * before, (before, after)
    # Averaging the noise over time also brings the output closer to the truth.
    assert (np.mean([np.abs(f - hr).mean() for f in filtered[3:]])
            < np.mean([np.abs(p - hr).mean() for p in per_frame[3:]]))
    # The same frames give the same output.
    again = TemporalFilter(2)
    assert all(np.array_equal(again([y])[0], f) for y, f in zip(per_frame, filtered))


def test_nothing_crosses_a_scene_cut():
    rng = np.random.default_rng(4)
    a, b = _texture(96, 128, seed=5), _texture(96, 128, seed=6, blur=3.0) * 0.6 + 60
    frames = [_upscale_y(a, rng.normal(0, 2, (48, 64))) for _ in range(4)] + \
             [_upscale_y(b, rng.normal(0, 2, (48, 64))) for _ in range(4)]
    steady = TemporalFilter(2)
    out = [steady([y])[0] for y in frames]
    assert steady.cuts == 1
    assert np.array_equal(out[4], frames[4])       # the first frame after the cut is left alone
    fresh = TemporalFilter(2)                      # and what follows depends on scene b only
    assert all(np.array_equal(fresh([y])[0], o) for y, o in zip(frames[4:], out[4:]))
    assert not np.array_equal(out[1], frames[1])   # (the filter did work inside scene a)


def test_moving_edge_does_not_ghost():
    # A bright bar with sharp edges moves 8 px per frame over a still texture: behind it, the
    # texture it uncovers has no past, and a trail of the old bar there would be ghosting. The
    # error around the bar must not grow.
    h, w = 96, 192
    bg = _texture(h, w, seed=7) * 0.5 + 40
    hr = []
    for t in range(8):
        img = bg.copy()
        img[:, 40 + 8 * t:70 + 8 * t] = 235.0
        hr.append(img)
    rng = np.random.default_rng(8)
    per_frame = [_upscale_y(x, rng.normal(0, 2, (h // 2, w // 2))) for x in hr]
    steady = TemporalFilter(2)
    filtered = [steady([y])[0] for y in per_frame]
    for t in range(1, 8):
        band = slice(20 + 8 * t, 90 + 8 * t)      # the bar and 20 px either side of it
        err_pf = np.abs(per_frame[t][:, band] - hr[t][:, band]).mean()
        err_tf = np.abs(filtered[t][:, band].astype(float) - hr[t][:, band]).mean()
        assert err_tf <= err_pf * 1.05 + 0.05, (t, err_pf, err_tf)


def _moving_square(size: int = 24, step: int = 2, frames: int = 10):
    """A textured square crossing a still background by `step` px a frame: (HR frames, per-frame upscales)."""
    bg = _texture(96, 128, seed=7) * 0.5 + 40
    obj = _texture(size, size, seed=14, blur=1.0)
    hr = []
    for t in range(frames):
        img = bg.copy()
        img[30:30 + size, 20 + step * t:20 + step * t + size] = obj
        hr.append(img)
    rng = np.random.default_rng(15)
    return hr, [_upscale_y(x, rng.normal(0, 3, (48, 64))) for x in hr]


def test_a_small_moving_object_is_steadied_too():
    # The flow must resolve a 24 px square at the input's own size: at the DIS preset's half size
    # (a quarter of the output) its motion blurs into the background's, the round trip fails on
    # it, and it keeps its flicker.
    size, step = 24, 2
    hr, per_frame = _moving_square(size, step)
    # A fixed weight: this is about where the flow resolves, and the gap to the half-size flow (0.88
    # of the flicker left) is clearer with more of the past carried over than the default's.
    steady = TemporalFilter(2, config=TemporalConfig(weight=0.8))
    filtered = [steady([y])[0] for y in per_frame]

    def object_flicker(frames) -> float:
        # The error inside the square (4 px in from its edges), followed along with it.
        inner = [frames[t][34:26 + size, 24 + step * t:16 + step * t + size].astype(float)
                 - hr[t][34:26 + size, 24 + step * t:16 + step * t + size] for t in range(len(hr))]
        return float(np.abs(np.diff(inner, axis=0)).mean())

    before, after = object_flicker(per_frame), object_flicker(filtered)
    assert after < 0.87 * before, (before, after)


def test_the_rim_of_a_moving_object_keeps_its_own_frame():
    # Where the square's motion meets the still background the warp would mix the two: the rim
    # (2 px either side of the square's left and right edges) stays as the model made it, while
    # the inside of the square is blended.
    size, step = 24, 2
    _, per_frame = _moving_square(size, step)
    steady = TemporalFilter(2)
    filtered = [steady([y])[0] for y in per_frame]
    rim, inside = [], []
    for t in range(1, len(per_frame)):
        x0 = 20 + step * t
        change = np.abs(filtered[t].astype(float) - per_frame[t])
        rim.append(np.r_[change[30:30 + size, x0 - 2:x0 + 2].ravel(),
                         change[30:30 + size, x0 + size - 2:x0 + size + 2].ravel()].mean())
        inside.append(change[36:24 + size, x0 + 6:x0 + size - 6].mean())
    assert np.mean(rim) < 0.1 and np.mean(inside) > 0.3, (np.mean(rim), np.mean(inside))
    # Without the motion-boundary check the rim is blended like the rest.
    loose = TemporalFilter(2, config=TemporalConfig(motion_edge=0))
    loosened = [loose([y])[0] for y in per_frame]
    assert np.mean([np.abs(loosened[t].astype(float) - per_frame[t])[30:30 + size, 20 + step * t - 2:20 + step * t + 2]
                    .mean() for t in range(1, len(per_frame))]) > 1.0


def test_weight_zero_changes_nothing():
    frames = [_upscale_y(_texture(64, 96), np.random.default_rng(t).normal(0, 3, (32, 48))) for t in range(4)]
    off = TemporalFilter(2, config=TemporalConfig(weight=0.0))
    assert all(np.array_equal(off([y])[0], y) for y in frames)


def test_other_planes_and_high_bit_depth_pass_through():
    rng = np.random.default_rng(9)
    y = (_texture(64, 96) * 4).astype(np.uint16)
    u = rng.integers(0, 1024, (32, 48)).astype(np.uint16)
    steady = TemporalFilter(2, peak=1023)
    for _ in range(3):
        out = steady((np.clip(y + rng.integers(0, 8, y.shape), 0, 1023).astype(np.uint16), u, u))
        assert out[0].dtype == np.uint16 and out[0].max() <= 1023
        assert out[1] is u and out[2] is u


# ---- through the CLI ------------------------------------------------------------------------

def _noisy_static(i: int, width: int, height: int) -> np.ndarray:
    base = _texture(height, width, seed=10)
    noise = np.random.default_rng(100 + i).normal(0, 3, (height, width))
    return np.repeat(np.clip(base + noise, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


def _mean_change(frames) -> float:
    return float(np.mean([np.abs(frames[t][0].astype(float) - frames[t - 1][0]).mean() for t in range(1, len(frames))]))


def test_run_temporal_on_steadies_a_noisy_static_clip(tmp_path):
    src = make_video(tmp_path / "in.mkv", Clip(frames=8, width=96, height=64, image=_noisy_static))
    outs = {}
    for mode in ("off", "on"):
        out = tmp_path / f"{mode}.mkv"
        proc = run_cli(src, "-o", out, "--model", "bicubic", "--scale", "2", "--codec", "ffv1", "--temporal", mode,
                       timeout=600)
        assert proc.returncode == 0, proc.stderr
        outs[mode] = read_planes(out)
    assert len(outs["on"]) == len(outs["off"]) == 8
    assert np.array_equal(outs["on"][0][0], outs["off"][0][0])
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(outs["on"], outs["off"]))  # chroma untouched
    assert _mean_change(outs["on"]) < 0.9 * _mean_change(outs["off"])


def test_segmented_temporal_run_matches_one_pass_but_at_joins(tmp_path):
    # 30 frames at 10 fps with a keyframe every 5: 0.5 s segments start at frames 0, 5, 10, ...
    clip = Clip(frames=30, width=96, height=64, rate=Fraction(10), codec="libx264",
                options={"g": "5", "bf": "0", "crf": "30"}, image=_noisy_static)
    src = make_video(tmp_path / "in.mp4", clip)
    args = ("--model", "bicubic", "--scale", "2", "--codec", "ffv1", "--json")
    runs = {}
    for name, extra in {"one": ("--temporal", "on", "--segment-seconds", "0"),
                        "segmented": ("--temporal", "on", "--segment-seconds", "0.5"),
                        "off": ("--temporal", "off", "--segment-seconds", "0")}.items():
        out = tmp_path / f"{name}.mkv"
        proc = run_cli(src, "-o", out, *args, *extra, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[-1])["frames"] == 30
        runs[name] = [p[0].astype(np.int32) for p in read_planes(out)]
    one, seg, off = runs["one"], runs["segmented"], runs["off"]
    assert all(np.array_equal(a, b) for a, b in zip(one[:5], seg[:5]))   # the first segment is the same
    for start in range(5, 30, 5):
        assert np.array_equal(seg[start], off[start])   # a segment starts afresh...
        first = np.abs(seg[start] - one[start]).max()
        for k in range(1, 5):                             # ...and the difference then decays
            assert np.abs(seg[start + k] - one[start + k]).max() <= first * TemporalConfig().weight ** k + 1, (start, k)


def test_eval_video_reports_bicubic_model_and_temporal(tmp_path):
    # A still picture: whatever each upscaler gets wrong, it gets wrong the same way in every frame.
    still = np.repeat(_texture(64, 96, seed=11)[..., None], 3, axis=2).astype(np.uint8)
    src = make_video(tmp_path / "in.mkv", Clip(frames=6, width=96, height=64, image=lambda i, w, h: still))
    out = tmp_path / "scores.json"
    proc = run_hatstream("eval-video", src, "--model", "bicubic", "--scale", "2", "--frames", "5", "--json", out,
                         timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "PSNR-Y" in lines[1] and "flicker" in lines[1]
    assert [ln.split("  ")[0].strip() for ln in lines[3:]] == ["bicubic", "model", "model --temporal on"]
    scores = {s["name"]: s for s in json.loads(out.read_text())["scores"]}
    assert len(scores["model"]["psnr_frames"]) == 5 and len(scores["model"]["flicker_frames"]) == 4
    assert scores["model"]["psnr"] == pytest.approx(scores["bicubic"]["psnr"], abs=0.05)  # the same upscaler
    for row in scores.values():
        assert row["psnr"] > 25 and 0.5 < row["ssim"] <= 1
        assert row["flicker"] < 1e-4 and row["plain"] < 1e-4 and row["warp"] < 1e-4, row


def test_eval_video_refuses_a_missing_clip(tmp_path):
    proc = run_hatstream("eval-video", tmp_path / "none.mp4", "--model", "bicubic")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"hatstream: error: {tmp_path / 'none.mp4'}: no such file"]


def test_ray_actors_give_the_local_engine_output(tmp_path):
    # Batches go to whichever actor is free; the filter runs on the driver, in frame order.
    ray = pytest.importorskip("ray")
    from hatstream.media.encode import EncodeSettings
    from hatstream.pipeline.run import RunConfig, run_file

    src = make_video(tmp_path / "in.mkv", Clip(frames=10, width=96, height=64, image=_noisy_static))

    def run(name: str, **kwargs):
        out = tmp_path / f"{name}.mkv"
        run_file(RunConfig(input=src, output=out, model="bicubic", scale=2, encode=EncodeSettings(codec="ffv1"),
                           batch=2, temporal=True, **kwargs))
        return [p[0] for p in read_planes(out)]

    local = run("local", engine="local")
    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        remote = run("ray", engine="ray", workers=2, device="cpu")
    finally:
        ray.shutdown()
    assert len(remote) == len(local) == 10
    assert all(np.array_equal(a, b) for a, b in zip(remote, local))


def test_resume_never_mixes_segments_with_and_without_the_filter(tmp_path):
    # The work folder's settings fingerprint tells the two apart, and is unchanged for runs without it.
    import dataclasses

    from hatstream.inference import load_model
    from hatstream.media.encode import EncodeSettings
    from hatstream.media.probe import probe
    from hatstream.media.writer import plan_output
    from hatstream.pipeline.resume import run_settings
    from hatstream.pipeline.segments import SegmentRecipe

    info = probe(make_video(tmp_path / "in.mkv", Clip(frames=2)))
    model = load_model("bicubic", device="cpu", scale=2)
    job = SegmentRecipe(info, plan_output(info, tmp_path / "out.mkv", 2, EncodeSettings(codec="ffv1"), "copy", "copy"))
    off = dict(run_settings("bicubic", model, job, 60.0))
    on = dict(run_settings("bicubic", model, dataclasses.replace(job, temporal=True), 60.0))
    assert "temporal" not in off and on.pop("temporal") == json.dumps("on")
    assert on == off


def _filter_two_frames(queue) -> None:
    steady = TemporalFilter(2, 255)
    frame = np.rint(_texture(64, 96)).astype(np.uint8)
    outs = [steady((np.ascontiguousarray(np.roll(frame, k, axis=1)),))[0] for k in (0, 1)]
    queue.put([int(o.sum()) for o in outs])


def test_a_forked_child_filters_with_its_own_flow_thread():
    # The second flow runs on a helper thread; a child forked after the parent used it inherits the
    # executor but not the thread, and must not wait on it forever.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    here = ctx.Queue()
    _filter_two_frames(here)
    want = here.get(timeout=30)
    child = ctx.Process(target=_filter_two_frames, args=(here,))
    child.start()
    try:
        assert here.get(timeout=60) == want  # the same frames, the same result
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
