"""`hatstream bench`: throughput of each stage (decode, upload, model, download, encode) on a
synthetic clip, and the model's achieved TFLOP/s from the architecture's MAC count.

Each stage is timed on its own, over the same frames, so the slowest one is plain to see; the
streaming engine overlaps them, so end-to-end speed approaches the slowest stage (`limit`). On a
CPU-only run the stages also share the cores, so the run is slower than its slowest stage.

The encode stage uses what `hatstream run` would: the default encoder for an MP4 of that size
(libx264, CRF 18, x264's default preset) with the threads `run` gives it (`probe.encoder_threads`).
It is also timed at one thread (or at two, when `run` gives it one), and from the lowest fps per
thread measured, the threads that would let the encoder keep up with the model are worked out:
`ceil(model fps / lowest fps per thread)`. x264 scales a little below linear, so beyond the
counts measured this is a lower bound.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from hatstream.inference import Upscaler
from hatstream.inference.upscaler import pad_to_multiple
from hatstream.media.colour import planes_to_rgb, planes_to_tensors, rgb_to_planes, tensors_to_planes
from hatstream.media.decode import read_frames
from hatstream.media.encode import EncodeSettings
from hatstream.media.probe import encoder_threads, probe
from hatstream.media.writer import VideoWriter, plan_output
from hatstream.models.flops import hat_macs
from hatstream.models.hat import HATConfig
from hatstream.pipeline.run import ENCODER_THREADS_EFFICIENT
from hatstream.pipeline.stage import cpu_threads

SIZES = {"360p": (640, 360), "540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080)}
MAX_SIDE = 16384  # libx264 refuses wider or taller frames (avcodec_open2 fails)

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for the fraction of peak.
GPU_PEAK_BF16 = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                 "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}


def parse_size(text: str) -> tuple[int, int]:
    """'540p' or 'WxH' -> (width, height)."""
    if text in SIZES:
        return SIZES[text]
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is neither one of {', '.join(SIZES)} nor WxH") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ValueError("width and height must be even and at least 16")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise ValueError(f"size {w}x{h} is too large: the encoder takes at most {MAX_SIDE} pixels per side")
    return w, h


def check_bench_size(width: int, height: int, scale: int) -> None:
    """Refuse sizes whose upscaled frames the encode stage could not write (ValueError)."""
    if max(width, height) * scale > MAX_SIDE:
        raise ValueError(f"{width}x{height} upscaled x{scale} is {width * scale}x{height * scale}: the encoder "
                         f"takes at most {MAX_SIDE} pixels per side; choose a smaller --size")


@dataclass(frozen=True)
class StageTime:
    """Seconds spent in one stage over all frames."""

    name: str
    seconds: float
    frames: int

    @property
    def fps(self) -> float | None:
        """Frames per second; None when the clock saw no time pass (JSON has no infinity)."""
        return self.frames / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class EncoderTime:
    """Seconds the encoder took for all frames with `threads` threads."""

    threads: int
    seconds: float
    frames: int

    @property
    def fps(self) -> float | None:
        return self.frames / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class BenchResult:
    """Everything `hatstream bench` reports; `to_json()` is what it writes."""

    model: str
    device: str
    dtype: str
    width: int
    height: int
    scale: int
    frames: int
    stages: tuple[StageTime, ...]
    tflops: float | None
    peak_tflops: float | None
    versions: dict = field(default_factory=dict)
    encoder: str = ""                    # codec and options, as `run` would encode this size
    encoder_threads: int = 1             # the threads `run` gives it here (the encode stage's)
    encoder_scaling: tuple[EncoderTime, ...] = ()  # the encoder at each thread count measured
    cores: int = 1

    @property
    def fraction_of_peak(self) -> float | None:
        return self.tflops / self.peak_tflops if self.tflops and self.peak_tflops else None

    @property
    def limit(self) -> StageTime | None:
        """The slowest stage: its fps bounds the run's (stages the clock saw take no time cannot)."""
        return min((s for s in self.stages if s.fps is not None), key=lambda s: s.fps, default=None)

    @property
    def fps_per_encoder_thread(self) -> float | None:
        """The lowest fps per thread among the encoder's measured thread counts."""
        rates = [e.fps / e.threads for e in self.encoder_scaling if e.fps is not None]
        return min(rates) if rates else None

    @property
    def encoder_threads_needed(self) -> int | None:
        """Encoder threads for the encoder to keep up with the model: ceil(model fps / lowest fps per thread)."""
        model = next(s for s in self.stages if s.name == "model").fps
        per_thread = self.fps_per_encoder_thread
        if model is None or per_thread is None:
            return None
        return max(1, math.ceil(model / per_thread - 1e-9))

    @property
    def segment_workers_needed(self) -> int | None:
        """Encoders side by side (`--segment-workers`) for those threads, each using at most
        `run.ENCODER_THREADS_EFFICIENT` of them (the rule `--segment-workers auto` follows)."""
        needed = self.encoder_threads_needed
        return None if needed is None else max(1, math.ceil(needed / ENCODER_THREADS_EFFICIENT))

    def to_json(self) -> dict:
        """A JSON-ready dict with fps per stage, the limiting stage and the encoder threads it would need."""
        d = asdict(self)
        d["stages"] = [dict(asdict(s), fps=s.fps) for s in self.stages]
        d["encoder_scaling"] = [dict(asdict(e), fps=e.fps) for e in self.encoder_scaling]
        d["fraction_of_peak"] = self.fraction_of_peak
        d["limit"], d["limit_fps"] = (self.limit.name, self.limit.fps) if self.limit else (None, None)
        d["fps_per_encoder_thread"] = self.fps_per_encoder_thread
        d["encoder_threads_needed"] = self.encoder_threads_needed
        d["segment_workers_needed"] = self.segment_workers_needed
        return d


def _synthetic_clip(path: Path, width: int, height: int, frames: int) -> None:
    """A moving gradient with texture, x264 yuv420p BT.709, so decode and encode do real work."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 40, (height, width), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(frames):
            base = ((xx + 4 * i) / width * 180 + (yy / height) * 40).astype(np.uint8) + texture
            rgb = np.stack([base, np.roll(base, i, axis=1), 255 - base], axis=-1)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame.reformat(format="yuv420p", dst_colorspace="ITU709")))
        out.mux(stream.encode())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device) -> float | None:
    """The bf16 peak of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in GPU_PEAK_BF16.items():
        if fragment in name:
            return peak
    return None


def _encode_seconds(path: Path, info, plan, decoded, outputs, threads: int) -> float:
    """Seconds to encode `outputs` into `path` with `threads` encoder threads."""
    plan = replace(plan, encoding=replace(plan.encoding, threads=threads))
    t = time.perf_counter()
    writer = VideoWriter(path, info, plan)
    try:
        for f, p in zip(decoded, outputs):
            writer.write(p, f.pts)
        writer.finish()
    finally:
        writer.close()
    return time.perf_counter() - t


def run_bench(upscaler: Upscaler, width: int, height: int, frames: int = 8, batch: int = 1,
              warmup: int = 1, encode: EncodeSettings = EncodeSettings()) -> BenchResult:
    """Time each stage on `frames` synthetic frames of width×height, after `warmup` untimed batches.

    The model stages run `batch` frames per call. Warm-up is whole batches, so the first timed
    call already has the timed shape (a compiled model recompiles for each new shape), and each
    stage's time is divided by the frames that were timed. `frames` must hold at least one batch.
    The encoder is `encode` resolved as `run` resolves it for an MP4 output (default: run's own),
    with run's threads, and again at one thread (two, when run gives it one) for its scaling.
    """
    if batch < 1 or warmup < 0 or frames < batch:
        raise ValueError(f"{frames} frame(s) at batch {batch} would time no full batch; "
                         f"use at least as many frames as the batch")
    dev = upscaler.device
    with tempfile.TemporaryDirectory(prefix="hatstream-bench-") as tmp:
        clip = Path(tmp) / "bench.mp4"
        _synthetic_clip(clip, width, height, warmup * batch + frames)
        info = probe(clip)

        t = time.perf_counter()
        decoded = list(read_frames(info))
        decode = time.perf_counter() - t
        planes = [f.planes for f in decoded]
        plan = plan_output(info, Path(tmp) / "out.mp4", upscaler.scale, encode, "copy", "copy")
        layout, colour = plan.encoding.layout, plan.encoding.colour
        cores = os.cpu_count() or 1
        threads = encoder_threads(dev.type == "cpu", cores)

        times = {"upload": 0.0, "model": 0.0, "download": 0.0}
        timed_frames = 0
        outputs = []
        for start in range(0, len(planes), batch):
            chunk = planes[start : start + batch]
            timed = start >= warmup * batch
            _sync(dev)
            t0 = time.perf_counter()
            # The conversions on one torch thread, as the run does them (`stage.cpu_threads`: on
            # busy cores OpenMP barriers made them tens of times slower); the model keeps them all.
            with cpu_threads(dev, 1):
                tensors = planes_to_tensors(chunk, dev)
                rgb = planes_to_rgb(tensors, info.layout, info.colour).clamp_(0, 1)
            _sync(dev)
            t1 = time.perf_counter()
            up = upscaler(rgb)
            _sync(dev)
            t2 = time.perf_counter()
            with cpu_threads(dev, 1):
                outputs += tensors_to_planes(rgb_to_planes(up, layout, colour))
            t3 = time.perf_counter()
            if timed:
                timed_frames += len(chunk)
                times["upload"] += t1 - t0
                times["model"] += t2 - t1
                times["download"] += t3 - t2

        total = len(planes)
        counts = [threads] + [t for t in ((1,) if threads > 1 else (2,) if cores > 1 else ()) if t != threads]
        scaling = {t: _encode_seconds(Path(tmp) / f"out-{t}.mp4", info, plan, decoded, outputs, t) for t in counts}
        encode_seconds = scaling[threads]

    encoder = " ".join([plan.encoding.codec, *(f"{k}={v}" for k, v in plan.encoding.options.items()
                                               if k != "chroma_sample_location")])
    if plan.encoding.codec in ("libx264", "libx265") and "preset" not in plan.encoding.options:
        encoder += " preset=medium (the encoder's default)"
    stages = (StageTime("decode", decode, total), StageTime("upload", times["upload"], timed_frames),
              StageTime("model", times["model"], timed_frames),
              StageTime("download", times["download"], timed_frames), StageTime("encode", encode_seconds, total))
    tflops = None
    if upscaler.info.arch in ("HAT", "HAT-chain"):
        spec = upscaler.info
        h, w = pad_to_multiple(torch.empty(1, 1, height, width, device="meta"), spec.window_multiple)[0].shape[-2:]
        macs = 0
        for kwargs in spec.hyperparameters.get("passes") or [spec.hyperparameters]:  # a chain: pass by pass
            cfg = HATConfig(**kwargs)
            # The work the upscaler does: its head is folded (models.hat_head), not the reference's chain.
            macs += hat_macs(cfg, h, w, folded_head=True)
            h, w = h * cfg.upscale, w * cfg.upscale
        tflops = 2 * macs * frames / times["model"] / 1e12 if times["model"] > 0 else None
    versions = {"torch": torch.__version__, "av": av.__version__, "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        versions["gpu"] = torch.cuda.get_device_name(dev)
        versions["cuda"] = torch.version.cuda
    return BenchResult(model=upscaler.info.name, device=str(dev), dtype=str(upscaler.dtype).replace("torch.", ""),
                       width=width, height=height, scale=upscaler.scale, frames=frames, stages=stages,
                       tflops=tflops, peak_tflops=peak_tflops(dev), versions=versions,
                       encoder=encoder,
                       encoder_threads=threads,
                       encoder_scaling=tuple(EncoderTime(t, scaling[t], total) for t in sorted(scaling)),
                       cores=cores)
