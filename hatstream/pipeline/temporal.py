"""Steadier video from a single-image model: carry the previous output's detail along the motion.

A per-frame upscaler invents detail on its own for every frame, and the invention changes where
the picture does not: the output shimmers. `TemporalFilter` sits after the model, on the
upscaled planes of consecutive frames, in order:

    guide_t = output luma shrunk back to the input's size (area average)
    flow    = DIS(guide_t -> guide_(t-1)) at the guide's own size, and back; reliable where the
              round trip closes, the warped guide matches the current one around the pixel (no
              occlusion, no new content) and the flow is smooth (no motion boundary nearby)
    L       = area-shrink by the scale, then bicubic back: the band the input itself carries
    out_t   = cur_t + w * m * ((W(out_(t-1)) - L(W(out_(t-1)))) - (cur_t - L(cur_t)))   (recursive)

with W the warp along the flow (upsampled to the output's size), m in [0, 1] the reliability
and w the blend weight: the invented detail is averaged along the motion, while the low band
follows the current input as it is. Where the flow is unreliable m is 0 and the frame stays
as the model made it, so moving edges do not ghost. A scene cut (few reliable pixels, or a
jump in the luma histogram) resets the state. The state is one previous output frame, and the
result depends only on the frames since the last reset: it is deterministic, and a fresh filter
per segment differs from one pass only in the first frames of the segment (see `reset`).

The guide comes from the output itself, not from the decoded input, so the filter needs
nothing but the stream of upscaled planes: it runs the same after the local model, in a
segment, or on the Ray driver after results come back in order. It knows no media: planes are
2-D numpy arrays, `peak` their largest code value.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["TemporalConfig", "TemporalFilter"]


@dataclass(frozen=True)
class TemporalConfig:
    """How strongly and where the previous frame is carried over (measured in benchmarks/RESULTS.md)."""

    weight: float = 0.7          # share of the warped previous detail where the flow is fully reliable
    fb_threshold: float = 0.5    # input px; round-trip error at which a pixel stops being reliable
    photo_threshold: float = 20.0  # 8-bit levels; |guide_t - W(guide_(t-1))|, averaged over photo_window^2
                                  # guide pixels, at which reliability is 0 (raised to 4x the frame's median
                                  # difference on noisy input)
    photo_window: int = 3        # guide px; the photometric check looks at a neighbourhood, not a pixel, so a
                                 # noisy pixel does not punch a hole in the blend while a moved edge still does
    flow_finest_scale: int = 0   # DIS's finest pyramid level: 0 is the guide's own size; the preset's 1 would
                                 # halve it (a quarter of the output), too coarse to carry output-sized detail
    motion_edge: float = 0.2     # flow change per guide px at which reliability is 0: where one motion meets
                                 # another (a moving object's rim over a still background) the warp mixes
                                 # both and motion blur changes the edge, so the past detail there is wrong
    motion_edge_window: int = 5  # guide px; how far from such a boundary the distrust reaches
    cut_reliable: float = 0.3    # a frame with fewer reliable pixels than this share is a scene cut
    cut_histogram: float = 0.4   # ... as is one whose 64-bin luma histogram moved by more than this (0..1)
    detail_only: bool = True     # blend only the detail (output minus its low-pass): the low band follows
                                 # the input as it is, so noise the model reproduced stays with its frame


@functools.lru_cache(maxsize=1)
def _flow_pool(pid: int) -> ThreadPoolExecutor:  # noqa: ARG001 - the key: a forked child gets its own
    # One thread per process for the second of the two flows: DIS releases the GIL, and its own
    # parallel loops leave a core idle often enough that the pair takes ~5/6 of its sequential time
    # on real frames (benchmarks/RESULTS.md). Each flow has its own DIS object: the same result.
    # Keyed by pid, because a forked child inherits the executor but not its thread.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="hatstream-flow")


def _dis(finest_scale: int) -> cv2.DISOpticalFlow:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(finest_scale)
    return dis


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def _histogram(guide: np.ndarray) -> np.ndarray:
    hist = np.bincount((guide >> 2).ravel(), minlength=64).astype(np.float64)
    return hist / hist.sum()


class TemporalFilter:
    """Blend each upscaled frame with the motion-compensated previous output, where that is safe.

    Call it with the planes of consecutive frames, in order; it returns new planes of the same
    shapes and dtypes. `planes` lists the indices of the planes it filters (luma only for YUV:
    the shimmer is in the invented luma detail; all three for GBR); the others pass through.
    """

    def __init__(self, scale: int, peak: int = 255, planes: Sequence[int] = (0,),
                 config: TemporalConfig = TemporalConfig()):
        self.scale = int(scale)
        self.peak = int(peak)
        self.planes = tuple(planes)
        self.config = config
        self._dis_back, self._dis_fwd = _dis(config.flow_finest_scale), _dis(config.flow_finest_scale)
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.cuts = 0
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame: the next frame passes unchanged and starts a new run.

        After a reset the output differs from an uninterrupted filter's by a difference that
        shrinks by about `weight` per frame (benchmarks/RESULTS.md: a join on real footage scores
        per-frame flicker on its first frame, and is back to the one-pass flicker two frames on).
        """
        self._prev: list[np.ndarray] | None = None
        self._guide: np.ndarray | None = None
        self._hist: np.ndarray | None = None

    def _gridded(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if (h, w) not in self._grids:
            self._grids[(h, w)] = _grid(h, w)
        return self._grids[(h, w)]

    def _guide_of(self, luma: np.ndarray) -> np.ndarray:
        h, w = luma.shape
        small = cv2.resize(luma.astype(np.float32), (max(1, w // self.scale), max(1, h // self.scale)),
                           interpolation=cv2.INTER_AREA)
        return np.clip(np.rint(small * (255.0 / self.peak)), 0, 255).astype(np.uint8)

    def _reliability(self, guide: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(flow t -> t-1, reliability in [0, 1]) on the guide's grid, or None at a scene cut."""
        cfg = self.config
        fwd_job = _flow_pool(os.getpid()).submit(self._dis_fwd.calc, self._guide, guide, None)
        back = self._dis_back.calc(guide, self._guide, None)
        fwd = fwd_job.result()
        h, w = guide.shape
        gx, gy = self._gridded(h, w)
        mx, my = gx + back[..., 0], gy + back[..., 1]
        fwd_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fb = np.hypot(back[..., 0] + fwd_at[..., 0], back[..., 1] + fwd_at[..., 1])
        inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        # Full trust up to half the threshold, none from the threshold on.
        consistent = np.clip(2.0 - 2.0 * fb / cfg.fb_threshold, 0, 1) * inside
        if float((consistent > 0.5).mean()) < cfg.cut_reliable:
            return None
        warped = cv2.remap(self._guide.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        photo = np.abs(warped - guide.astype(np.float32))
        if cfg.photo_window > 1:
            photo = cv2.blur(photo, (cfg.photo_window, cfg.photo_window))
        # Noisy input differs everywhere by its noise; only what stands out of it is new content.
        tau = max(cfg.photo_threshold, 4.0 * float(np.median(photo[consistent > 0.5])))
        m = (consistent * np.clip(2.0 - 2.0 * photo / tau, 0, 1)).astype(np.float32)
        if cfg.motion_edge > 0:
            m *= np.clip(2.0 - 2.0 * self._motion_edges(back) / cfg.motion_edge, 0, 1)
        return back, m

    def _motion_edges(self, flow: np.ndarray) -> np.ndarray:
        """How fast the flow changes (px of flow per px, largest within motion_edge_window)."""
        change = np.zeros(flow.shape[:2], np.float32)
        for k in range(2):
            change += cv2.Sobel(flow[..., k], cv2.CV_32F, 1, 0, ksize=3) ** 2
            change += cv2.Sobel(flow[..., k], cv2.CV_32F, 0, 1, ksize=3) ** 2
        # Sobel's 3x3 kernel gives 8 times the slope.
        change = np.sqrt(change) / 8.0
        size = self.config.motion_edge_window
        return cv2.dilate(change, np.ones((size, size), np.uint8)) if size > 1 else change

    def __call__(self, planes: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """The filtered planes of the next frame (the same shapes and dtypes)."""
        luma = np.asarray(planes[self.planes[0]])
        guide = self._guide_of(luma)
        hist = _histogram(guide)
        cur = [np.asarray(planes[i], dtype=np.float32) for i in self.planes]
        found = None
        if self._prev is not None and self._prev[0].shape == cur[0].shape:
            if 0.5 * float(np.abs(hist - self._hist).sum()) <= self.config.cut_histogram:
                found = self._reliability(guide)
            if found is None:
                self.cuts += 1
                log.debug("temporal filter: scene cut, state reset")
        if found is not None:
            flow, m = found
            out = [self._blend(c, p, flow, m) for c, p in zip(cur, self._prev)]
        else:
            out = cur
        self._prev, self._guide, self._hist = out, guide, hist
        result = list(planes)
        for i, plane in zip(self.planes, out):
            dtype = np.asarray(planes[i]).dtype
            # Integer code values are rounded back; float planes (the metrics' Y) stay unrounded.
            result[i] = (plane.astype(dtype) if dtype.kind == "f"
                         else np.clip(np.rint(plane), 0, self.peak).astype(dtype))
        return tuple(result)

    def _blend(self, cur: np.ndarray, prev: np.ndarray, flow: np.ndarray, m: np.ndarray) -> np.ndarray:
        """cur + weight * m * (W(prev) - cur), with the guide-size flow and mask brought to the plane's size."""
        h, w = cur.shape
        fh, fw = flow.shape[:2]
        big = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        big[..., 0] *= w / fw
        big[..., 1] *= h / fh
        gx, gy = self._gridded(h, w)
        warped = cv2.remap(prev, gx + big[..., 0], gy + big[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) * self.config.weight
        if self.config.detail_only:
            warped = warped - self._lowpass(warped) + self._lowpass(cur)
        return cur + alpha * (warped - cur)

    def _lowpass(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape
        small = cv2.resize(img, (max(1, w // self.scale), max(1, h // self.scale)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
