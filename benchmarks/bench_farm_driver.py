"""The segment-mode driver's own cost per segment, on a simulated 8-node cluster (issue 20, section 4).

    python benchmarks/bench_farm_driver.py [--nodes 8] [--frames 1224] [--gop 12] [--json-out F]
    python -m pytest benchmarks/bench_farm_driver.py     # a quick smoke run (2 nodes, a few segments)

A `ray.cluster_utils.Cluster` on loopback: a head without CPUs (the driver's) and `--nodes` worker nodes of
one logical CPU each, one actor per node (`scheduling_strategy="SPREAD"`). The input is long and tiny
(64×36, 24 fps, a keyframe every `--gop` frames, made with PyAV), cut into ≥ 100 segments of one GOP, upscaled
by bicubic ×2 into libx264 `ultrafast`: the actors' work is as small as it gets, so what is left is the
driver's. The whole `resume.run_resumable` call runs under cProfile, and the driver's work is read off it by
function: planning (index + plan, timed apart), remux (`segments.segment_payload`), `ray.put`, submission,
`ray.get` of results, verification (SHA-256 of what came back), segment file and manifest writes (fsync'd),
assembly. The process's CPU time (all its threads, Ray's own included) is the upper bound.

Costs that grow with bytes are measured apart on larger buffers (SHA-256, durable writes, getting an actor's
result across nodes) and costs that grow with the run (the manifest, rewritten whole at each segment) on a
synthetic manifest, so the extrapolation to real segments (4K output, thousands of segments) is arithmetic
on measured rates, not a guess.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_farm_split import cpu_flags  # noqa: E402
from hatstream.atomic import write_durably  # noqa: E402
from hatstream.inference import load_model  # noqa: E402
from hatstream.media.encode import EncodeSettings  # noqa: E402
from hatstream.media.probe import probe  # noqa: E402
from hatstream.media.writer import plan_output  # noqa: E402
from hatstream.pipeline.ray_engine import RayOptions, RaySegments  # noqa: E402
from hatstream.pipeline.resume import InputFingerprint, Manifest, run_resumable  # noqa: E402
from hatstream.pipeline.segments import EncodedSegment, SegmentRecipe, index_keyframes, plan_segments  # noqa: E402
from hatstream.raylocal import keep_loopback  # noqa: E402

LOOPBACK = "127.0.0.1"
RATE = 24

# (label, file fragment, function name): where the driver's work is, by cumulative time in cProfile.
DRIVER_PARTS = (
    ("remux (segment_payload)", "segments.py", "segment_payload"),
    ("ray.put of the payload", "worker.py", "put"),
    ("submit (actor call)", "ray_engine.py", "submit"),
    ("ray.get of results", "worker.py", "get"),
    ("verify + write segment (_accept)", "resume.py", "_accept"),
    ("  of which SHA-256", "~", "<built-in method _hashlib.openssl_sha256>"),
    ("manifest writes (record)", "resume.py", "record"),
    ("  of which JSON", "resume.py", "to_json"),
    ("heartbeats and timeouts (_expire)", "ray_engine.py", "_expire"),
    ("assembly (assemble)", "segments.py", "assemble"),
    ("work folder open + fingerprint", "resume.py", "__init__"),
    ("actors start (_start_workers)", "ray_engine.py", "_start_workers"),
)


def make_long_clip(path: Path, frames: int, gop: int, width: int = 64, height: int = 36) -> Path:
    """A tiny H.264 clip with a keyframe exactly every `gop` frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=RATE)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        for i in range(frames):
            img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def _cumulative(stats: pstats.Stats, fragment: str, name: str) -> float:
    """Cumulative seconds of every profiled function called `name` in a file ending in `fragment`."""
    total = 0.0
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and (fragment == "~" or file.endswith(fragment)):
            total += cum
    return total


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def driver_run(clip: Path, folder: Path, nodes: int, segment_seconds: float) -> dict:
    """One profiled segment run on the cluster that `ray` is connected to; the driver's split."""
    info = probe(clip)
    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    out = folder / "out.mkv"
    recipe = SegmentRecipe(info, plan_output(info, out, 2, EncodeSettings(codec="libx264", preset="ultrafast")))
    start = time.perf_counter()
    index = index_keyframes(info)
    segments = plan_segments(info, segment_seconds, index)
    planning = time.perf_counter() - start
    stats: dict = {}
    profile = cProfile.Profile()
    cpu, wall = _cpu(), time.perf_counter()
    profile.enable()
    try:
        done = run_resumable(recipe, segments, RaySegments(model, RayOptions(workers=nodes, device="cpu"), stats),
                             out, settings=(), resume=False)
    finally:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    ps = pstats.Stats(profile)
    parts = {label: _cumulative(ps, frag, name) for label, frag, name in DRIVER_PARTS}
    # The driver's per-segment work: everything above but the one-off start and end, and waiting.
    per_segment = sum(v for k, v in parts.items() if not k.startswith("  ") and k not in
                      ("assembly (assemble)", "work folder open + fingerprint", "actors start (_start_workers)"))
    n = len(segments)
    return {"segments": n, "frames": done.frames, "frames_per_segment": done.frames / n,
            "input_bytes": clip.stat().st_size, "output_bytes": out.stat().st_size,
            "planning_s": planning, "wall_s": wall, "driver_cpu_s": cpu, "parts_s": parts,
            "per_segment_ms": 1000 * per_segment / n, "assembly_ms_per_segment": 1000 * parts["assembly (assemble)"] / n,
            "actor_seconds": {k: sum(a[k] for a in stats["actors"]) for k in ("decode", "model", "encode")}}


def byte_rates(folder: Path, mib: int = 64) -> dict:
    """MB/s of the driver's per-byte work: SHA-256, a durable (fsync'd) write, a result fetched across nodes."""
    data = os.urandom(mib << 20)
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    sha = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    write_durably(folder / "big.bin", data, suffix=".part")
    write = mib / (time.perf_counter() - t)
    (folder / "big.bin").unlink()

    @ray.remote(num_cpus=1)
    def blob(size: int) -> bytes:
        return os.urandom(size)

    ref = blob.remote(mib << 20)
    ray.wait([ref], fetch_local=False)  # made on a worker node; the get below moves it here
    t = time.perf_counter()
    ray.get(ref)
    get = mib / (time.perf_counter() - t)
    return {"sha256_MiB_s": sha, "durable_write_MiB_s": write, "ray_get_cross_node_MiB_s": get}


def manifest_cost(entries: int) -> float:
    """Seconds to write a manifest with `entries` finished segments (it is rewritten whole at each one)."""
    done = tuple(EncodedSegment(i, Path(f"seg-{i:05d}.nut"), 1440, i * 1440, 300 << 20, "0" * 64)
                 for i in range(entries))
    m = Manifest(InputFingerprint(1, 1, "0" * 64, "0" * 64), (("model", "{}"),), (), done)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_durably(Path(tmp) / "manifest.json", m.to_json())
        return time.perf_counter() - t


def bench(nodes: int, frames: int, gop: int, folder: Path) -> dict:
    """Build the cluster, run the profiled segment run and the byte-rate measures; always tear it down."""
    from ray.cluster_utils import Cluster

    keep_loopback()
    clip = make_long_clip(folder / "long.mp4", frames, gop)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK})
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=80 << 20)
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False, _node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        load_before = os.getloadavg()[0]
        run = driver_run(clip, folder, nodes, (gop - 0.5) / RATE)
        run["load"] = [load_before, os.getloadavg()[0]]
        run["rates"] = byte_rates(folder)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    run["manifest_write_s"] = {n: manifest_cost(n) for n in (100, 1000, 10000)}
    return run


def extrapolate(run: dict, gpu_fps: float = 15.0, seconds_per_segment: float = 60.0, rate: float = 24.0,
                mb_per_4k_frame: float = 0.25) -> dict:
    """GPUs one driver keeps busy at `gpu_fps` each, with segments of `seconds_per_segment` of `rate` fps video.

    Fixed per-segment cost as measured; per-byte costs at the measured rates for a 4K segment of
    `mb_per_4k_frame` MB a frame (an assumption: about 48 Mbit/s at 24 fps, CRF 18 film); the manifest
    rewrite at the size it has mid-run.
    """
    frames = seconds_per_segment * rate
    interval = frames / gpu_fps                       # seconds between two segments of one GPU
    out_mib = frames * mb_per_4k_frame / 1.048576
    r = run["rates"]
    per_byte = out_mib / r["sha256_MiB_s"] + out_mib / r["durable_write_MiB_s"] + out_mib / r["ray_get_cross_node_MiB_s"]
    fixed = run["per_segment_ms"] / 1000
    tiny = {"frames_per_segment": run["frames_per_segment"], "gpus": run["frames_per_segment"] / gpu_fps / fixed}
    return {"segment_frames": frames, "segment_interval_s": interval, "segment_output_MiB": out_mib,
            "driver_s_per_segment": fixed + per_byte, "fixed_s": fixed, "per_byte_s": per_byte,
            "gpus_per_driver": interval / (fixed + per_byte), "gpus_per_driver_tiny_segments": tiny["gpus"],
            "output_MiB_s_per_gpu": out_mib / interval}


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run, print the split and the extrapolation (and JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--frames", type=int, default=1224)
    p.add_argument("--gop", type=int, default=12)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = bench(args.nodes, args.frames, args.gop, Path(tmp))
    run["extrapolation"] = extrapolate(run)
    run.update(cpus=os.cpu_count(), cpu_flags=cpu_flags(), ray=ray.__version__, nodes=args.nodes)
    if args.json_out:
        args.json_out.write_text(json.dumps(run, indent=2, default=str))
    print(json.dumps(run, indent=2, default=str))


def test_bench_farm_driver_smoke(tmp_path):
    run = bench(nodes=2, frames=48, gop=12, folder=tmp_path)
    assert run["segments"] == 4 and run["frames"] == 48 and run["per_segment_ms"] > 0
    assert run["parts_s"]["remux (segment_payload)"] > 0


if __name__ == "__main__":
    main()
