"""`hatstream bench`: throughput of each stage (decode, upload, model, download, encode) on a
synthetic clip, and the model's achieved TFLOP/s from the architecture's MAC count.

Each stage is timed on its own, over the same frames, so the slowest one is plain to see; the
streaming engine overlaps them, so end-to-end speed approaches the slowest stage.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
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
from hatstream.media.probe import probe
from hatstream.media.writer import VideoWriter, plan_output
from hatstream.models.flops import hat_macs
from hatstream.models.hat import HATConfig

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

    @property
    def fraction_of_peak(self) -> float | None:
        return self.tflops / self.peak_tflops if self.tflops and self.peak_tflops else None

    def to_json(self) -> dict:
        """A JSON-ready dict with fps per stage."""
        d = asdict(self)
        d["stages"] = [dict(asdict(s), fps=s.fps) for s in self.stages]
        d["fraction_of_peak"] = self.fraction_of_peak
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


def run_bench(upscaler: Upscaler, width: int, height: int, frames: int = 8, batch: int = 1,
              warmup: int = 1) -> BenchResult:
    """Time each stage on `frames` synthetic frames of width×height, after `warmup` untimed batches.

    The model stages run `batch` frames per call. Warm-up is whole batches, so the first timed
    call already has the timed shape (a compiled model recompiles for each new shape), and each
    stage's time is divided by the frames that were timed. `frames` must hold at least one batch.
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
        plan = plan_output(info, Path(tmp) / "out.mp4", upscaler.scale, EncodeSettings(preset="veryfast"), "copy", "copy")
        layout, colour = plan.encoding.layout, plan.encoding.colour

        times = {"upload": 0.0, "model": 0.0, "download": 0.0}
        timed_frames = 0
        outputs = []
        for start in range(0, len(planes), batch):
            chunk = planes[start : start + batch]
            timed = start >= warmup * batch
            _sync(dev)
            t0 = time.perf_counter()
            tensors = planes_to_tensors(chunk, dev)
            rgb = planes_to_rgb(tensors, info.layout, info.colour).clamp_(0, 1)
            _sync(dev)
            t1 = time.perf_counter()
            up = upscaler(rgb)
            _sync(dev)
            t2 = time.perf_counter()
            outputs += tensors_to_planes(rgb_to_planes(up, layout, colour))
            t3 = time.perf_counter()
            if timed:
                timed_frames += len(chunk)
                times["upload"] += t1 - t0
                times["model"] += t2 - t1
                times["download"] += t3 - t2

        t = time.perf_counter()
        writer = VideoWriter(Path(tmp) / "out.mp4", info, plan)
        try:
            for f, p in zip(decoded, outputs):
                writer.write(p, f.pts)
            writer.finish()
        finally:
            writer.close()
        encode = time.perf_counter() - t

    total = len(planes)
    stages = (StageTime("decode", decode, total), StageTime("upload", times["upload"], timed_frames),
              StageTime("model", times["model"], timed_frames),
              StageTime("download", times["download"], timed_frames), StageTime("encode", encode, total))
    tflops = None
    if upscaler.info.arch == "HAT":
        cfg = HATConfig(**upscaler.info.hyperparameters)
        padded = pad_to_multiple(torch.empty(1, 1, height, width, device="meta"), cfg.window_size)[0].shape[-2:]
        # The work the upscaler does: its head is folded (models.hat_head), not the reference's chain.
        macs = hat_macs(cfg, *padded, folded_head=True)
        tflops = 2 * macs * frames / times["model"] / 1e12 if times["model"] > 0 else None
    versions = {"torch": torch.__version__, "av": av.__version__, "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        versions["gpu"] = torch.cuda.get_device_name(dev)
        versions["cuda"] = torch.version.cuda
    return BenchResult(model=upscaler.info.name, device=str(dev), dtype=str(upscaler.dtype).replace("torch.", ""),
                       width=width, height=height, scale=upscaler.scale, frames=frames, stages=stages,
                       tflops=tflops, peak_tflops=peak_tflops(dev), versions=versions)
