"""Pipeline overhead: end-to-end `run_file` time against model-only time for the same frames.

    python benchmarks/bench_pipeline.py [--frames N] [--hat-frames N] [--size 640x360] [--codec libx264]

For each model (bicubic, and a small randomly initialised HAT) it
1. writes a clip of the given size with PyAV (a moving gradient with noise),
2. times the model alone on exactly those frames, already decoded to RGB float tensors
   (same batch size, after one warm-up call), and
3. times `hatstream.pipeline.run.run_file` on the clip (decode thread, colour conversion,
   model, encoder thread, carried audio), with the model loaded the same way.

overhead = end-to-end / model-only - 1. With bicubic the model is nearly free, so the figure
measures the pipeline's own cost per frame; with HAT the model dominates, and the target is
an overhead of at most 10 %. Results are printed as a table and as JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hatstream.inference import load_model  # noqa: E402
from hatstream.media.colour import planes_to_rgb, planes_to_tensors  # noqa: E402
from hatstream.media.decode import read_frames  # noqa: E402
from hatstream.media.encode import EncodeSettings  # noqa: E402
from hatstream.media.probe import probe  # noqa: E402
from hatstream.pipeline.run import RunConfig, run_file  # noqa: E402

SMALL_HAT = dict(upscale=2, window_size=8, embed_dim=24, depths=[1], num_heads=[3], compress_ratio=3,
                 squeeze_factor=8, mlp_ratio=2)


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """An H.264 clip with a moving textured gradient (so encoders do real work)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 20, (height, width, 3))
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "18"}
        for i in range(frames):
            img = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1) * 0.9 + noise
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def model_only_seconds(model, clip: Path, batch: int) -> float:
    """Time `model` alone over the clip's frames, pre-decoded to RGB float on the model's device."""
    info = probe(clip)
    frames = [f.planes for f in read_frames(info)]
    tensors = [planes_to_rgb(planes_to_tensors(frames[i:i + batch], model.device), info.layout, info.colour)
               .clamp_(0, 1) for i in range(0, len(frames), batch)]
    model(tensors[0])  # warm-up: first-call allocations are not per-frame cost
    start = time.perf_counter()
    for x in tensors:
        model(x)
    return time.perf_counter() - start


def end_to_end_seconds(model_name: str, clip: Path, out: Path, batch: int, codec: str) -> tuple[float, int]:
    """Time the whole `run_file` on the clip (the model load excluded by a warm-up run first)."""
    config = RunConfig(input=clip, output=out, model=model_name, batch=batch, overwrite=True,
                       encode=EncodeSettings(codec=codec))
    start = time.perf_counter()
    result = run_file(config)
    return time.perf_counter() - start, result.frames


def bench(name: str, model_name: str, frames: int, width: int, height: int, batch: int, codec: str,
          workdir: Path) -> dict:
    """One row of the table: model-only and end-to-end seconds, fps and overhead."""
    clip = make_clip(workdir / f"{name}.mp4", frames, width, height)
    model = load_model(model_name)
    # Warm the end-to-end path once on a 2-frame clip so that neither side pays first-use costs.
    warm = make_clip(workdir / "warm.mp4", 2, width, height)
    run_file(RunConfig(input=warm, output=workdir / "warm.out.mkv", model=model_name, overwrite=True,
                       encode=EncodeSettings(codec="ffv1")))
    model_s = model_only_seconds(model, clip, batch)
    e2e_s, n = end_to_end_seconds(model_name, clip, workdir / f"{name}.out{Path(clip).suffix}", batch, codec)
    return {"model": name, "size": f"{width}x{height}", "frames": n, "batch": batch, "codec": codec,
            "model_only_s": round(model_s, 3), "end_to_end_s": round(e2e_s, 3),
            "model_fps": round(n / model_s, 2), "end_to_end_fps": round(n / e2e_s, 2),
            "overhead_pct": round(100 * (e2e_s / model_s - 1), 1),
            "overhead_ms_per_frame": round(1000 * (e2e_s - model_s) / n, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=50, help="frames for bicubic")
    p.add_argument("--hat-frames", type=int, default=8, help="frames for the small HAT")
    p.add_argument("--size", default="640x360")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--codec", default="libx264")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hatstream-bench-") as tmp:
        tmp = Path(tmp)
        from hatstream.models.hat import HAT

        torch.manual_seed(0)
        hat_path = tmp / "small-hat.pth"
        torch.save({"params_ema": HAT(**SMALL_HAT).state_dict()}, hat_path)
        rows.append(bench("bicubic", "bicubic", args.frames, width, height, args.batch, args.codec, tmp))
        rows.append(bench("small-hat", str(hat_path), args.hat_frames, width, height, args.batch, args.codec, tmp))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, av {av.__version__}")
    print(f"{'model':<10} {'size':<8} {'frames':>6} {'model s':>8} {'e2e s':>8} {'model fps':>9} {'e2e fps':>8} "
          f"{'overhead':>9} {'ms/frame':>8}")
    for r in rows:
        print(f"{r['model']:<10} {r['size']:<8} {r['frames']:>6} {r['model_only_s']:>8.2f} {r['end_to_end_s']:>8.2f} "
              f"{r['model_fps']:>9.2f} {r['end_to_end_fps']:>8.2f} {r['overhead_pct']:>8.1f}% "
              f"{r['overhead_ms_per_frame']:>8.1f}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def test_pipeline_overhead_runs(tmp_path):
    """A tiny smoke run for `pytest benchmarks/bench_pipeline.py` (no timing assertion)."""
    row = bench("bicubic", "bicubic", 4, 64, 48, 1, "ffv1", tmp_path)
    assert row["frames"] == 4 and row["end_to_end_s"] > 0


if __name__ == "__main__":
    raise SystemExit(main())
