"""`make_preview`: a few frames upscaled the way `run` would, beside the source and bicubic.

Each frame goes through the same colour path as a run (`upscale_planes`: the source's planes to
RGB, the model, RGB to the output's planes), and is then turned back into RGB for display the
way a player would, so what the preview shows is what the output file will hold. Bicubic goes
through the same path, so the comparison differs only in the model.

Rendering (the PNG sheet and the HTML page) lives in `hatstream.pipeline.preview_render`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hatstream.errors import HatstreamError
from hatstream.media.deinterlace import plan_deinterlace
from hatstream.media.encode import EncodeSettings, container_for, resolve_encoding
from hatstream.media.probe import VideoInfo, probe
from hatstream.media.seek import frames_at, spread_times, video_length
from hatstream.media.writer import default_output_path

log = logging.getLogger(__name__)

DEFAULT_CROP = (320, 240)  # output pixels per panel: three side by side still fit a laptop screen


@dataclass(frozen=True)
class PreviewConfig:
    """What `hatstream preview` was asked to do; model options mean what they mean for `run`."""

    input: Path
    times: tuple[float, ...] = ()  # seconds from the first frame; empty means `count` spread evenly
    count: int = 3
    model: str | None = None
    scale: int | None = None
    precision: str = "auto"
    device: str | None = None
    crop: tuple[int, int] | None = None  # (width, height) in output pixels; None picks DEFAULT_CROP
    encode: EncodeSettings = field(default_factory=EncodeSettings)  # the output format a run would write
    deinterlace: str = "auto"  # as `run --deinterlace`


@dataclass(frozen=True)
class PreviewFrame:
    """One previewed frame as RGB uint8 images: source (at source size), bicubic and model (upscaled).

    `box` is the crop (x, y, width, height) in output pixels, chosen where the source has the
    most detail; `model_seconds` is the model's time for this frame alone.
    """

    asked: float
    time: float
    pts: int
    source: np.ndarray   # (h, w, 3)
    bicubic: np.ndarray  # (sh, sw, 3)
    upscaled: np.ndarray  # (sh, sw, 3)
    box: tuple[int, int, int, int]
    model_seconds: float


@dataclass(frozen=True)
class Preview:
    """Everything the renderers need: the frames, and the settings they were made with."""

    input: Path
    info: VideoInfo
    model: str
    scale: int
    precision: str
    device: str
    frames: tuple[PreviewFrame, ...]
    settings: tuple[tuple[str, str], ...]  # (name, value) rows for people

    @property
    def seconds_per_frame(self) -> float:
        """The model's time per frame: the fastest measured, since the first call also warms up."""
        return min(f.model_seconds for f in self.frames)

    @property
    def full_run_seconds(self) -> float | None:
        """How long the model would take over every frame of the input (None without a frame count)."""
        return self.info.frames * self.seconds_per_frame if self.info.frames else None


def detail_box(rgb: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The (x, y, width, height) window of `rgb` with the most detail: the largest sum of gradient
    magnitude, so flat sky and black bars lose to edges and texture. Clipped to the image."""
    h, w = rgb.shape[:2]
    width, height = min(width, w), min(height, h)
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grad = np.zeros_like(luma)
    grad[:, 1:] += np.abs(np.diff(luma, axis=1))
    grad[1:, :] += np.abs(np.diff(luma, axis=0))
    # A summed-area table gives every window's total in O(1).
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = grad.cumsum(0).cumsum(1)
    totals = sat[height:, width:] - sat[:-height, width:] - sat[height:, :-width] + sat[:-height, :-width]
    y, x = np.unravel_index(int(np.argmax(totals)), totals.shape)
    return int(x), int(y), width, height


def _to_rgb(planes, fmt) -> np.ndarray:
    """Planes of one frame to RGB uint8 for display, by the same conversion the pipeline uses."""
    import torch

    from hatstream.media.colour import planes_to_rgb, planes_to_tensors

    tensors = planes_to_tensors([planes])
    rgb = planes_to_rgb(tensors, fmt.layout, fmt.colour).clamp_(0, 1)[0]
    return (rgb.permute(1, 2, 0) * 255).round_().to(torch.uint8).numpy()


def resolve_times(info: VideoInfo, times: tuple[float, ...], count: int) -> list[float]:
    """The times to preview: those given, or `count` spread over the video."""
    if times:
        return list(times)
    if count < 1:
        raise HatstreamError("--count must be at least 1")
    if not video_length(info):
        return [0.0]  # no length known: the first frame is the one frame certainly there
    return spread_times(info, count)


def make_preview(config: PreviewConfig) -> Preview:
    """Decode the chosen frames of `config.input` and upscale each with the model and with bicubic.

    Raises HatstreamError for bad input, a time outside the video, or an unusable model.
    """
    info = probe(config.input)
    times = resolve_times(info, config.times, config.count)
    deinterlace = plan_deinterlace(info, config.deinterlace)
    frames = frames_at(info, times, deinterlace)  # bad times are refused before the model loads
    from hatstream.inference import load_model
    from hatstream.pipeline.stage import FrameFormat, upscale_planes

    model = load_model(config.model, device=config.device, precision=config.precision, scale=config.scale)
    bicubic = load_model("bicubic", device=model.device, precision="fp32", scale=model.scale)
    s = model.scale
    out_path = default_output_path(info.path, s)
    encoding = resolve_encoding(config.encode, container_for(out_path), info.layout, info.colour, info.colour_tags)
    src = FrameFormat(info.layout, info.colour)
    dst = FrameFormat(encoding.layout, encoding.colour)
    crop_w, crop_h = config.crop or DEFAULT_CROP
    # Whole source pixels per panel, so the nearest-neighbour source lines up with the upscales.
    crop_w, crop_h = max(s, crop_w - crop_w % s), max(s, crop_h - crop_h % s)
    done = []
    for f in frames:
        source = _to_rgb(f.planes, src)
        started = time.perf_counter()
        up = upscale_planes([f.planes], model, src, dst)[0]
        seconds = time.perf_counter() - started
        bic = upscale_planes([f.planes], bicubic, src, dst)[0]
        x, y, w, h = detail_box(source, crop_w // s, crop_h // s)
        done.append(PreviewFrame(f.asked, f.time, f.pts, source, _to_rgb(bic, dst), _to_rgb(up, dst),
                                 (x * s, y * s, w * s, h * s), seconds))
        log.info("frame at %.3fs upscaled in %.2fs", f.time, seconds)
    precision = str(model.dtype).removeprefix("torch.")
    settings = [("input", info.path.name), ("video", f"{info.width}x{info.height} {info.codec} {info.pix_fmt}"),
                ("length", f"{video_length(info):.2f}s, {info.frames}{'' if info.frames_exact else '~'} frames"),
                ("model", model.info.describe()), ("output", f"{info.width * s}x{info.height * s} "
                                                             f"{encoding.codec} {encoding.layout.pix_fmt}"),
                ("precision", precision), ("device", str(model.device)),
                ("deinterlace", deinterlace.describe() if deinterlace else "no")]
    per_frame = min(f.model_seconds for f in done)  # as Preview.seconds_per_frame
    settings.append(("model time", f"{per_frame:.3f}s per frame (fastest of {len(done)})"))
    if info.frames:
        settings.append(("full run", f"about {format_duration(info.frames * per_frame)} of model time "
                                     f"for {info.frames} frames"))
    return Preview(info.path, info, model.info.name, s, precision, str(model.device), tuple(done), tuple(settings))


def format_duration(seconds: float) -> str:
    """'2h 05m', '3m 20s' or '12.5s'."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


THUMB_SIZE = (160, 120)  # each half of a watch job's before/after thumbnail, in pixels


def thumbnail(source: Path, output: Path, size: tuple[int, int] = THUMB_SIZE) -> np.ndarray:
    """A small before/after image of a finished run: the same moment of `source` (nearest neighbour,
    at the output's size) and of `output`, side by side, on the most detailed crop.

    Both files are read back from disk, so the thumbnail shows what was really written.
    """
    from hatstream.pipeline.stage import FrameFormat

    src_info, out_info = probe(source), probe(output)
    scale = max(1, round(out_info.width / src_info.width))
    at = spread_times(src_info, 1) if video_length(src_info) else [0.0]
    before = _to_rgb(frames_at(src_info, at)[0].planes, FrameFormat(src_info.layout, src_info.colour))
    after = _to_rgb(frames_at(out_info, at)[0].planes, FrameFormat(out_info.layout, out_info.colour))
    width, height = size
    x, y, w, h = detail_box(before, max(1, width // scale), max(1, height // scale))
    left = np.repeat(np.repeat(before[y:y + h, x:x + w], scale, axis=0), scale, axis=1)
    right = after[y * scale:(y + h) * scale, x * scale:(x + w) * scale]
    right = right[:left.shape[0], :left.shape[1]]
    gap = np.full((left.shape[0], 2, 3), 255, np.uint8)
    return np.concatenate([left, gap, right[:, :left.shape[1]]], axis=1)
