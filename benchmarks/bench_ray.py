"""Ray engine throughput: the local engine against the Ray engine, on the CPU or on GPUs.

    python benchmarks/bench_ray.py [--frames 24] [--size 160x96] [--workers 1 2] [--json]
    python3 benchmarks/bench_ray.py --device cuda --arch HAT-S_SRx4 --precision bf16 --size 960x540 \
        --frames 60 --workers 1 --codec libx264 --preset ultrafast    # per-GPU target of issue 4
    python -m pytest benchmarks/bench_ray.py        # a quick smoke run of the same code

Each configuration upscales the same H.264 clip with the same randomly initialised model through
`run_file`: a small HAT by default (the model dominates, as it does with real HAT on a GPU), or a
released layout with --arch (`layouts.py`). Output is lossless FFV1 unless --codec says otherwise.
On the CPU the local engine runs with torch's default threads and with one (what a 1-CPU Ray actor
gets), then the Ray engine with each number of 1-CPU actors. With --device cuda the local engine
runs on the GPU and the Ray engine with one GPU per actor, so `ray / local` is the Ray engine's
per-GPU throughput against the local engine's (issue 4: at least 95 %).
Ray is started once per configuration, before the clock, so its start-up is not counted; the
actors' start-up (building the model from the object store) is, in `seconds`. `steady fps`
is measured from the first frame written to the last, which is what a long video sees.
Outputs are compared with the local engine's (`identical`, and the largest plane difference).
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
import numpy as np
import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pipeline import SMALL_HAT, make_clip  # noqa: E402
from layouts import RELEASED, save_random_checkpoint  # noqa: E402
from hatstream.media.encode import EncodeSettings  # noqa: E402
from hatstream.models.hat import HAT  # noqa: E402
from hatstream.pipeline.run import RunConfig, run_file  # noqa: E402


def _planes(path: Path) -> list[np.ndarray]:
    """Every decoded frame's planes, concatenated into one flat uint8 array per frame."""
    with av.open(str(path)) as c:
        return [np.concatenate([np.frombuffer(bytes(p), np.uint8) for p in f.planes]) for f in c.decode(video=0)]


def _compare(path: Path, reference: list[np.ndarray]) -> dict:
    """Whether an output decodes to the reference's planes, and the largest byte difference."""
    planes = _planes(path)
    same_shape = len(planes) == len(reference) and all(a.shape == b.shape for a, b in zip(planes, reference))
    if not same_shape:
        return {"identical": False, "max_diff": None}
    diff = max((int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(planes, reference)), default=0)
    return {"identical": diff == 0, "max_diff": diff}


def _timed(config: RunConfig) -> dict:
    stamps: list[float] = []
    start = time.perf_counter()
    run_file(config, on_progress=lambda p: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"frames": len(stamps), "seconds": round(total, 2), "steady_fps": round(steady, 3)}


def bench(frames: int, width: int, height: int, workers: list[int], folder: Path, device: str = "cpu",
          arch: str | None = None, precision: str = "auto", codec: str = "ffv1", preset: str | None = None,
          batch: int = 1) -> list[dict]:
    """Run the local engine, then the Ray engine with each actor count; one result dict per configuration.

    `device` 'cpu' or 'cuda' (one GPU per Ray actor); `arch` a released layout name (random weights)
    or None for the small HAT; `precision`, `codec`, `preset` and `batch` as for `hatstream run`.
    """
    cuda = device.startswith("cuda")
    clip = make_clip(folder / "clip.mp4", frames, width, height)
    if arch is None:
        torch.manual_seed(0)
        ckpt = folder / "small-hat.pth"
        torch.save({"params_ema": HAT(**SMALL_HAT).state_dict()}, ckpt)
    else:
        ckpt = save_random_checkpoint(arch, folder / f"{arch}.pth")
    base = RunConfig(input=clip, model=str(ckpt), precision=precision, batch=batch,
                     encode=EncodeSettings(codec=codec, preset=preset), overwrite=True)

    if cuda:
        # The GPU run is one warm-up short of steady: its first frame (kernel selection, caches) is
        # outside `steady fps`, which starts at the first frame written.
        results = [{"engine": "local, cuda", **_timed(replace(base, output=folder / "local.mkv", engine="local",
                                                              device=device))}]
    else:
        results = [{"engine": f"local, {torch.get_num_threads()} threads",
                    **_timed(replace(base, output=folder / "local.mkv", engine="local", device="cpu"))}]
    reference = _planes(folder / "local.mkv")
    if not cuda:
        # Ray gives a 1-CPU actor one torch thread: the local engine on one thread is the per-core baseline.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results.append({"engine": "local, 1 thread",
                            **_timed(replace(base, output=folder / "local1.mkv", engine="local", device="cpu"))})
        finally:
            torch.set_num_threads(threads)
    gpus = torch.cuda.device_count() if cuda else 0
    for n in workers:
        out = folder / f"ray{n}.mkv"
        if cuda and n > gpus:
            results.append({"engine": f"ray, {n} GPU actor(s)", "skipped": f"only {gpus} GPU(s)"})
            continue
        # GPUs are named explicitly so that the run does not depend on Ray's own GPU detection.
        ray.init(address="local", num_cpus=n + 1, num_gpus=gpus if cuda else 0, include_dashboard=False,
                 configure_logging=False, log_to_driver=False)
        try:
            timing = _timed(replace(base, output=out, engine="ray", workers=n, device="cuda" if cuda else "cpu"))
        finally:
            ray.shutdown()
        kind = "GPU" if cuda else "CPU"
        results.append({"engine": f"ray, {n} {kind} actor(s)", **timing, **_compare(out, reference)})
    if cuda:
        # Per-GPU throughput against the local engine on one GPU (issue 4's measure).
        local = results[0]["steady_fps"]
        for r in results[1:]:
            if "skipped" not in r and r.get("steady_fps") and local:
                n = int(r["engine"].split()[1])
                r["per_gpu_vs_local"] = round(r["steady_fps"] / n / local, 3)
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run every configuration, print a table (or JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="160x96", help="input WxH")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="Ray actor counts to run (default: 1 2 on the CPU, 1 on CUDA)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default=None, choices=list(RELEASED),
                   help="a released layout with random weights (default: a small HAT, x2)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--codec", default="ffv1", help="video encoder of the outputs (default: lossless ffv1)")
    p.add_argument("--preset", default=None, help="encoder preset, e.g. ultrafast for libx264")
    p.add_argument("--json", action="store_true")
    p.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    width, height = map(int, args.size.lower().split("x"))
    workers = args.workers or ([1] if args.device == "cuda" else [1, 2])
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(args.frames, width, height, workers, Path(tmp), device=args.device, arch=args.arch,
                        precision=args.precision, codec=args.codec, preset=args.preset, batch=args.batch)
    model = args.arch or "small HAT x2"
    summary = {"frames": args.frames, "size": args.size, "cpus": os.cpu_count(), "device": args.device,
               "model": model, "precision": args.precision, "batch": args.batch, "codec": args.codec,
               "preset": args.preset, "torch": torch.__version__, "ray": ray.__version__, "results": results}
    if args.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.frames} frames {args.size}, {model}, {args.device} {args.precision}, {args.codec}")
    print(f"{'engine':<24}{'seconds':>9}{'steady fps':>12}  identical  per GPU vs local")
    for r in results:
        if "skipped" in r:
            print(f"{r['engine']:<24}  skipped: {r['skipped']}")
            continue
        print(f"{r['engine']:<24}{r['seconds']:>9.2f}{r['steady_fps']:>12.3f}  {str(r.get('identical', '-')):<9}"
              f"  {r.get('per_gpu_vs_local', '-')}")


def test_bench_ray_smoke(tmp_path):
    results = bench(frames=4, width=32, height=24, workers=[2], folder=tmp_path)
    assert [r["frames"] for r in results] == [4, 4, 4] and results[-1]["identical"]


if __name__ == "__main__":
    main()
