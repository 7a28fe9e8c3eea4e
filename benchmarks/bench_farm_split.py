"""Where the time goes in the two Ray modes, for 1, 2 and 4 CPU actors on one clip (issue 20, section 3).

    python benchmarks/bench_farm_split.py [--frames 96] [--size 960x540] [--actors 1 2 4] [--json-out F]
    python -m pytest benchmarks/bench_farm_split.py      # a quick smoke run of the same code

- **per-frame mode** (`ray_engine.run_ray`): the driver decodes, frames stream to the actors and back as
  planes, and one encoder in the driver writes them all.
- **segment mode** (`resume.run_resumable` with `ray_engine.RaySegments`): the driver remuxes each
  keyframe-aligned segment's packets, and each actor decodes, upscales and encodes its segments.

The model is bicubic ×2 (cheap), the output 1920×1080 libx264 `medium` CRF 18 with one encoder thread per
encoder (what `probe.encoder_threads` gives a CPU run on a small machine), so the encoder is the heavy part and
the single encoder's ceiling shows. Stage seconds come from the library's own timers (`engine.StageTimes`,
`UpscaleWorker.stage_times`, `WorkerPool.transfer`; the driver's decode and encode are timed here, around the
decoder's iterator and the writer). They are seconds of work, summed: `busy` = that stage's seconds / wall, so
a stage near 1.0 that is done in one place is the ceiling. `steady fps` runs from the first result recorded
(frame written, or segment recorded) to the end, so the actors' start-up is left out. Ray is started once per
configuration before the clock; actors get one logical CPU each, so 4 actors on a 2-core machine are
oversubscribed (Ray's CPUs are scheduling tokens) and share the cores with the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hatstream.inference import load_model  # noqa: E402
from hatstream.media.decode import read_frames  # noqa: E402
from hatstream.media.encode import EncodeSettings  # noqa: E402
from hatstream.media.probe import probe  # noqa: E402
from hatstream.media.writer import VideoWriter, plan_output  # noqa: E402
from hatstream.pipeline.engine import StageTimes, timed_frames  # noqa: E402
from hatstream.pipeline.ray_engine import RayOptions, RaySegments, run_ray  # noqa: E402
from hatstream.pipeline.resume import run_resumable  # noqa: E402
from hatstream.pipeline.segments import SegmentRecipe, plan_segments  # noqa: E402
from hatstream.pipeline.stage import FrameFormat  # noqa: E402
from hatstream.raylocal import start_local_ray  # noqa: E402

RATE = 24


def make_clip(path: Path, frames: int, width: int, height: int, gop: int) -> Path:
    """H.264 with a keyframe exactly every `gop` frames; a moving gradient with fresh noise, so x264 works."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=RATE)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast", "g": str(gop), "keyint_min": str(gop),
                     "sc_threshold": "0", "bf": "0"}
        for i in range(frames):
            img = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1) * 0.85
            img = img + rng.integers(0, 36, (height, width, 3))
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def cpu_flags() -> str:
    """The SIMD flags that matter here, from /proc/cpuinfo (never assumed)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "sha_ni") if f in have) or "none"


def load() -> float:
    return os.getloadavg()[0]


class _Timed:
    """The driver's decode (time inside the decoder's iterator, as the engine times it) and encode
    (time inside the writer)."""

    def __init__(self, writer: VideoWriter):
        self.writer = writer
        self.times = StageTimes()
        self.stamps: list[float] = []

    @property
    def decode(self) -> float:
        return self.times.decode

    @property
    def encode(self) -> float:
        return self.times.encode

    def frames(self, source):
        return timed_frames(source, self.times)

    def write(self, frame) -> None:
        start = time.perf_counter()
        self.writer.write(frame.planes, frame.pts)
        self.times.encode += time.perf_counter() - start
        self.stamps.append(time.perf_counter())

    def finish(self) -> None:
        start = time.perf_counter()
        self.writer.finish()  # x264's delayed (lookahead) frames are encoded here
        self.times.encode += time.perf_counter() - start


def _actor_sums(stats: dict) -> dict:
    actors = stats["actors"]
    return {k: sum(a[k] for a in actors) for k in ("decode", "model", "encode", "frames")}


def per_frame(clip: Path, out: Path, actors: int, encode: EncodeSettings) -> dict:
    """One run of the per-frame mode; the stage split."""
    info = probe(clip)
    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    plan = plan_output(info, out, 2, encode)
    # One encoder thread, as an actor's encoder gets on this machine (`probe.encoder_threads`).
    plan = replace(plan, encoding=replace(plan.encoding, threads=1))
    stats: dict = {}
    writer = VideoWriter(out, info, plan)
    timed = _Timed(writer)
    start = time.perf_counter()
    try:
        written = run_ray(timed.frames(read_frames(info)), model, FrameFormat(info.layout, info.colour),
                          FrameFormat(plan.encoding.layout, plan.encoding.colour), timed.write,
                          RayOptions(workers=actors, device="cpu"), stats=stats)
        timed.finish()
    finally:
        writer.close()
    end = time.perf_counter()
    wall = end - timed.stamps[0] if timed.stamps else 0.0
    a = _actor_sums(stats)
    return {"mode": "per-frame", "actors": actors, "frames": written, "seconds": end - start,
            "steady_fps": (written - 1) / wall if wall > 0 else None, "steady_wall": wall,
            "driver_decode": timed.decode, "driver_encode": timed.encode, "driver_transfer": stats["transfer"],
            "actor_model": a["model"], "actor_decode": 0.0, "actor_encode": 0.0, "driver_remux": 0.0}


def per_segment(clip: Path, out: Path, actors: int, encode: EncodeSettings, segment_seconds: float) -> dict:
    """One run of the segment mode; the stage split."""
    info = probe(clip)
    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    recipe = SegmentRecipe(info, plan_output(info, out, 2, encode))
    segments = plan_segments(info, segment_seconds)
    stats: dict = {}
    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()
    done = run_resumable(recipe, segments, RaySegments(model, RayOptions(workers=actors, device="cpu"), stats),
                         out, settings=(), resume=False,
                         on_progress=lambda p: stamps.append((time.perf_counter(), p.frames)))
    end = time.perf_counter()
    # The runner reports progress once per recorded segment: the first is the steady clock's start.
    first_t, first_frames = next(((t, f) for t, f in stamps if f > 0), (end, 0))
    wall = end - first_t
    a = _actor_sums(stats)
    return {"mode": "segment", "actors": actors, "frames": done.frames, "segments": len(segments),
            "seconds": end - start,
            "steady_fps": (done.frames - first_frames) / wall if wall > 0 else None, "steady_wall": wall,
            "driver_decode": 0.0, "driver_encode": 0.0, "driver_transfer": stats["transfer"] + stats["put"],
            "driver_remux": stats["remux"], "actor_model": a["model"], "actor_decode": a["decode"],
            "actor_encode": a["encode"]}


def bench(frames: int, width: int, height: int, actors: list[int], folder: Path, preset: str = "medium",
          gop: int = 12, segment_seconds: float = 0.5, repeat: int = 1) -> list[dict]:
    """Both modes for each actor count, alternating (per-frame, segment), each on a fresh embedded Ray."""
    clip = make_clip(folder / "clip.mp4", frames, width, height, gop)
    encode = EncodeSettings(codec="libx264", preset=preset, crf=18)
    results = []
    for r in range(repeat):
        for n in actors:
            for mode in ("per-frame", "segment") if r % 2 == 0 else ("segment", "per-frame"):
                start_local_ray(n + 1, configure_logging=False, log_to_driver=False)
                before = load()
                try:
                    out = folder / f"{mode}-{n}.mkv"
                    row = (per_frame(clip, out, n, encode) if mode == "per-frame"
                           else per_segment(clip, out, n, encode, segment_seconds))
                finally:
                    ray.shutdown()
                row.update(repeat=r, load_before=before, load_after=load())
                results.append(row)
    return results


def _fmt(r: dict) -> str:
    wall = r["steady_wall"] or r["seconds"]
    enc = r["driver_encode"] + r["actor_encode"]
    busy = (r["driver_encode"] / wall) if r["mode"] == "per-frame" else (r["actor_encode"] / wall / r["actors"])
    return (f"| {r['mode']} | {r['actors']} | {r['seconds']:.1f} | {r['steady_fps'] or 0:.2f} | "
            f"{r['driver_decode'] + r['actor_decode']:.1f} ({'driver' if r['mode'] == 'per-frame' else 'actors'}) | "
            f"{r['actor_model']:.1f} | {enc:.1f} ({'driver' if r['mode'] == 'per-frame' else 'actors'}) | "
            f"{r['driver_transfer']:.2f} | {r['driver_remux']:.2f} | {busy:.2f} | "
            f"{r['load_before']:.1f}–{r['load_after']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run both modes for each actor count, print a Markdown table (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--size", default="960x540", help="input WxH (output is twice each side)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--preset", default="medium")
    p.add_argument("--gop", type=int, default=12, help="keyframe every N frames")
    p.add_argument("--segment-seconds", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=1, help="rounds; odd rounds run the modes in the other order")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    width, height = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(args.frames, width, height, args.actors, Path(tmp), args.preset, args.gop,
                        args.segment_seconds, args.repeat)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    summary = {"frames": args.frames, "size": args.size, "preset": args.preset, "gop": args.gop,
               "segment_seconds": args.segment_seconds, "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
               "cpu": platform.processor(), "ray": ray.__version__, "av": av.__version__,
               "commit": git.stdout.strip(), "results": results}
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))
    print(f"{args.frames} frames {args.size} -> x2, bicubic, libx264 {args.preset} CRF 18, 1 encoder thread "
          f"per encoder; {os.cpu_count()} CPUs ({cpu_flags()})")
    print("| mode | actors | total s | steady fps | decode s | model s | encode s | transfer s | remux s "
          "| encoder busy | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_fmt(r))


def test_bench_farm_split_smoke(tmp_path):
    results = bench(frames=8, width=64, height=36, actors=[2], folder=tmp_path, preset="ultrafast", gop=4,
                    segment_seconds=0.1)
    assert [r["frames"] for r in results] == [8, 8]
    assert results[0]["driver_encode"] > 0 and results[1]["actor_encode"] > 0


if __name__ == "__main__":
    main()
