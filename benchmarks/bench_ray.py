"""Ray engine throughput on the CPU: the local engine against the Ray engine with 1 and 2 CPU actors.

    python benchmarks/bench_ray.py [--frames 24] [--size 160x96] [--workers 1 2] [--json]
    python -m pytest benchmarks/bench_ray.py        # a quick smoke run of the same code

The local engine runs with torch's default threads and with one (what a 1-CPU Ray actor gets).
Each configuration upscales the same H.264 clip with the same small randomly initialised HAT
(the model dominates, as it does with real HAT on a GPU) to lossless FFV1, through `run_file`.
Ray is started once per configuration, before the clock, so its start-up is not counted; the
actors' start-up (building the model from the object store) is, in `seconds`. `steady fps`
is measured from the first frame written to the last, which is what a long video sees.
Outputs are checked to be identical to the local engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import SMALL_HAT, make_clip  # noqa: E402
from hatstream.media.encode import EncodeSettings  # noqa: E402
from hatstream.models.hat import HAT  # noqa: E402
from hatstream.pipeline.run import RunConfig, run_file  # noqa: E402


def _planes(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [b"".join(bytes(p) for p in f.planes) for f in c.decode(video=0)]


def _timed(config: RunConfig) -> dict:
    stamps: list[float] = []
    start = time.perf_counter()
    run_file(config, on_progress=lambda p: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"frames": len(stamps), "seconds": round(total, 2), "steady_fps": round(steady, 3)}


def bench(frames: int, width: int, height: int, workers: list[int], folder: Path) -> list[dict]:
    """Run the local engine, then the Ray engine with each actor count; one result dict per configuration."""
    clip = make_clip(folder / "clip.mp4", frames, width, height)
    torch.manual_seed(0)
    ckpt = folder / "small-hat.pth"
    torch.save({"params_ema": HAT(**SMALL_HAT).state_dict()}, ckpt)
    base = RunConfig(input=clip, model=str(ckpt), encode=EncodeSettings(codec="ffv1"), overwrite=True)

    results = [{"engine": f"local, {torch.get_num_threads()} threads",
                **_timed(replace(base, output=folder / "local.mkv", engine="local"))}]
    reference = _planes(folder / "local.mkv")
    # Ray gives a 1-CPU actor one torch thread: the local engine on one thread is the per-core baseline.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results.append({"engine": "local, 1 thread",
                        **_timed(replace(base, output=folder / "local1.mkv", engine="local"))})
    finally:
        torch.set_num_threads(threads)
    for n in workers:
        out = folder / f"ray{n}.mkv"
        ray.init(address="local", num_cpus=n + 1, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            timing = _timed(replace(base, output=out, engine="ray", workers=n, device="cpu"))
        finally:
            ray.shutdown()
        results.append({"engine": f"ray, {n} CPU actor(s)", **timing, "identical": _planes(out) == reference})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="160x96")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(args.frames, width, height, args.workers, Path(tmp))
    if args.json:
        print(json.dumps({"frames": args.frames, "size": args.size, "cpus": os.cpu_count(),
                          "results": results}, indent=2))
        return
    print(f"{args.frames} frames {args.size} -> x2, small HAT, ffv1")
    print(f"{'engine':<24}{'seconds':>9}{'steady fps':>12}  identical")
    for r in results:
        print(f"{r['engine']:<24}{r['seconds']:>9.2f}{r['steady_fps']:>12.3f}  {r.get('identical', '-')}")


def test_bench_ray_smoke(tmp_path):
    results = bench(frames=4, width=32, height=24, workers=[2], folder=tmp_path)
    assert [r["frames"] for r in results] == [4, 4, 4] and results[-1]["identical"]


if __name__ == "__main__":
    main()
