"""The upscale stage: a batch of frames' YUV planes in, the upscaled planes out.

This is the one function both engines share. The local engine calls it in the calling thread;
a Ray worker can call it on planes shipped to it, since its inputs and outputs are plain numpy
arrays (compact uint8/uint16 planes, half the size of RGB24 for 4:2:0) and two small frozen
descriptions of the formats. The colour conversion happens here, next to the model and on its
device, so 10-bit samples reach the model as floats and never pass through 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hatstream.media.colour import (ColourSpec, PlaneLayout, planes_to_rgb, planes_to_tensors, rgb_to_planes,
                                    tensors_to_planes, unrepresentable)
from hatstream.pipeline.temporal import TemporalFilter

Planes = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class FrameFormat:
    """The pixel layout and colour matrix/range of a frame's planes."""

    layout: PlaneLayout
    colour: ColourSpec


@contextlib.contextmanager
def cpu_threads(device: torch.device, count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads when on the CPU (restored afterwards).

    The colour conversion is a handful of cheap elementwise passes. Spread over OpenMP threads
    while FFmpeg's decoder and encoder threads (or anything else) are busy on the same cores,
    each pass waits at a barrier for a descheduled thread: on a busy 2-core machine that made
    it 30-40x slower than running it on one thread. The model keeps every thread.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ClipCounter:
    """Counts the source pixels whose colour the output format cannot hold, across batches.

    A limited-range super-white (Y above 235) or a YUV colour outside the RGB cube survives into
    a limited-range YUV output, but full-range or RGB output clips it to the code range. The
    counts stay on the model's device and are added there; `total` reads them once, at the end,
    so counting never makes a batch wait for the device.
    """

    def __init__(self) -> None:
        self._sums: dict[torch.device, torch.Tensor] = {}
        self._lock = threading.Lock()  # segments computed at once (`resume.Parallel`) share one counter

    def add(self, counts: torch.Tensor) -> None:
        """Add a (B,) tensor of per-frame counts (on any device; no host sync)."""
        total = counts.sum()
        with self._lock:
            before = self._sums.get(total.device)
            self._sums[total.device] = total if before is None else before + total

    @property
    def total(self) -> int:
        """Pixels clipped so far (waits for the devices)."""
        return sum(int(t) for t in self._sums.values())


def _upscale_alpha(alpha: torch.Tensor, size: tuple[int, int], src: PlaneLayout, dst: PlaneLayout,
                   dtype: torch.dtype) -> torch.Tensor:
    """The alpha plane (B, h, w) upscaled bicubically to `size` and rescaled to `dst`'s depth.

    The model never sees alpha: it was trained on colour, and a matte is smooth, so bicubic
    (clamped: its overshoot would wrap around) is what it gets.
    """
    a = alpha.to(torch.float32)[:, None] / src.max_value
    a = F.interpolate(a, size=size, mode="bicubic", align_corners=False)[:, 0]
    return (a * dst.max_value).round_().clamp_(0, dst.max_value).to(dtype)


@torch.inference_mode()
def upscale_plane_tensors(planes: list[torch.Tensor], model: Callable[[torch.Tensor], torch.Tensor],
                          src: FrameFormat, dst: FrameFormat, device: torch.device,
                          clipped: ClipCounter | None = None) -> list[torch.Tensor]:
    """Per-plane (B, h, w) integer tensors already on `device` -> the output's per-plane tensors.

    Colour conversion to RGB, the model, and conversion back. The model sees RGB clipped to
    [0, 1]; what lies outside (super-whites and super-blacks of limited-range video, YUV colours
    outside the RGB cube) is kept at the input's size and added back after the model, upscaled
    bicubically per output plane (`rgb_to_planes`), so an output format with the same headroom
    keeps it; what the output's code range cannot hold is clipped, and counted in `clipped`.
    An alpha plane (`PlaneLayout.has_alpha`) is upscaled bicubically beside the model, and
    dropped where `dst` has none (an opaque one is made where only `dst` has one).
    Engines that move the planes themselves (the Ray actors, with pinned buffers and CUDA
    streams) call this directly.
    """
    with cpu_threads(device, 1):
        rgb = planes_to_rgb(planes, src.layout, src.colour)
        inside = rgb.clamp(0.0, 1.0)
        excess = rgb.sub(inside)
        # On the CPU reading the maximum costs no wait, and most frames have nothing outside, so
        # the residual's work is skipped for them; on a GPU `bool()` would stall the queue of
        # batches for every one, which costs more than always adding a residual of zeros.
        if device.type == "cpu" and not bool(excess.abs().amax() > 1e-4):
            excess = None
        if excess is not None and clipped is not None:
            clipped.add(unrepresentable(rgb, dst.layout, dst.colour))
        del rgb
    up = model(inside)
    del inside
    with cpu_threads(device, 1):
        out = rgb_to_planes(up, dst.layout, dst.colour, residual=excess)
        if dst.layout.has_alpha:
            size = tuple(out[0].shape[-2:])
            if src.layout.has_alpha:
                out.append(_upscale_alpha(planes[3], size, src.layout, dst.layout, out[0].dtype))
            else:
                out.append(torch.full_like(out[0], dst.layout.max_value))
        return out


def temporal_filter(dst: FrameFormat, scale: int) -> TemporalFilter:
    """A fresh `TemporalFilter` for output planes in `dst`: the luma plane of YUV, all three of GBR."""
    return TemporalFilter(scale, dst.layout.max_value, (0, 1, 2) if dst.layout.is_rgb else (0,))


def upscale_planes(frames: Sequence[Planes], model: Callable[[torch.Tensor], torch.Tensor],
                   src: FrameFormat, dst: FrameFormat, device: torch.device | str | None = None,
                   temporal: TemporalFilter | None = None, clipped: ClipCounter | None = None) -> list[Planes]:
    """Upscale a batch of same-sized frames given as planes; returns one planes tuple per frame.

    `model` maps RGB float (B, 3, H, W) in [0, 1] to (B, 3, sH, sW) in [0, 1], as an `Upscaler`
    does. `device` defaults to the model's own `device` attribute (CPU when it has none).
    `temporal` (see `temporal_filter`) steadies the outputs; it holds the previous frame, so
    successive calls must carry successive frames of one stream. `clipped` counts the pixels
    whose colour the output cannot hold (see `ClipCounter`).
    """
    if not frames:
        return []
    device = torch.device(device if device is not None else getattr(model, "device", "cpu"))
    with cpu_threads(device, 1):
        tensors = planes_to_tensors(list(frames), device)
    out = tensors_to_planes(upscale_plane_tensors(tensors, model, src, dst, device, clipped))
    return out if temporal is None else [temporal(planes) for planes in out]
