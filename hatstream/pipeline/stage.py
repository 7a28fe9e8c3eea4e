"""The upscale stage: a batch of frames' YUV planes in, the upscaled planes out.

This is the one function both engines share. The local engine calls it in the calling thread;
a Ray worker can call it on planes shipped to it, since its inputs and outputs are plain numpy
arrays (compact uint8/uint16 planes, half the size of RGB24 for 4:2:0) and two small frozen
descriptions of the formats. The colour conversion happens here, next to the model and on its
device, so 10-bit samples reach the model as floats and never pass through 8-bit RGB.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hatstream.media.colour import (ColourSpec, PlaneLayout, planes_to_rgb, planes_to_tensors, rgb_to_planes,
                                    tensors_to_planes)
from hatstream.pipeline.temporal import TemporalFilter

Planes = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class FrameFormat:
    """The pixel layout and colour matrix/range of a frame's planes."""

    layout: PlaneLayout
    colour: ColourSpec


@contextlib.contextmanager
def _cpu_threads(device: torch.device, count: int) -> Iterator[None]:
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


@torch.inference_mode()
def upscale_plane_tensors(planes: list[torch.Tensor], model: Callable[[torch.Tensor], torch.Tensor],
                          src: FrameFormat, dst: FrameFormat, device: torch.device) -> list[torch.Tensor]:
    """Per-plane (B, h, w) integer tensors already on `device` -> the output's per-plane tensors.

    Colour conversion to RGB, the model, and conversion back. The model sees RGB clipped to
    [0, 1]; what lies outside (super-whites and super-blacks of limited-range video, YUV colours
    outside the RGB cube) is upscaled bicubically on its own and added back after the model, so
    an output format with the same headroom keeps it (the encoder's code range is the only clip).
    Engines that move the planes themselves (the Ray actors, with pinned buffers and CUDA
    streams) call this directly.
    """
    with _cpu_threads(device, 1):
        rgb = planes_to_rgb(planes, src.layout, src.colour)
        clipped = rgb.clamp(0.0, 1.0)
        excess = rgb.sub_(clipped)
        excess = excess if bool(excess.abs().amax() > 1e-4) else None  # most frames have none
    up = model(clipped)
    del clipped
    with _cpu_threads(device, 1):
        if excess is not None:
            up = up.to(torch.float32) + F.interpolate(excess, size=up.shape[-2:], mode="bicubic", align_corners=False)
        return rgb_to_planes(up, dst.layout, dst.colour)


def temporal_filter(dst: FrameFormat, scale: int) -> TemporalFilter:
    """A fresh `TemporalFilter` for output planes in `dst`: the luma plane of YUV, all three of GBR."""
    return TemporalFilter(scale, dst.layout.max_value, (0, 1, 2) if dst.layout.is_rgb else (0,))


def upscale_planes(frames: Sequence[Planes], model: Callable[[torch.Tensor], torch.Tensor],
                   src: FrameFormat, dst: FrameFormat, device: torch.device | str | None = None,
                   temporal: TemporalFilter | None = None) -> list[Planes]:
    """Upscale a batch of same-sized frames given as planes; returns one planes tuple per frame.

    `model` maps RGB float (B, 3, H, W) in [0, 1] to (B, 3, sH, sW) in [0, 1], as an `Upscaler`
    does. `device` defaults to the model's own `device` attribute (CPU when it has none).
    `temporal` (see `temporal_filter`) steadies the outputs; it holds the previous frame, so
    successive calls must carry successive frames of one stream.
    """
    if not frames:
        return []
    device = torch.device(device if device is not None else getattr(model, "device", "cpu"))
    with _cpu_threads(device, 1):
        tensors = planes_to_tensors(list(frames), device)
    out = tensors_to_planes(upscale_plane_tensors(tensors, model, src, dst, device))
    return out if temporal is None else [temporal(planes) for planes in out]
