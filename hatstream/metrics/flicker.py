"""Temporal stability of a video's error: how much an upscaler's mistakes change from frame to frame.

    e_t        = SR_t - HR_t on the Y channel (0..255 scale, float64)
    flicker    = mean over reliable pixels of |e_t - W(e_(t-1))|, averaged over frame pairs
    plain      = mean over all pixels of |e_t - e_(t-1)|
    warp error = mean over reliable pixels of |O_t - W(O_(t-1))| (no ground truth; Lai et al. 2018)

W warps frame t-1 onto frame t with dense optical flow computed on the ground-truth frames
(OpenCV DIS, medium preset, t -> t-1). A pixel is reliable where the forward-backward check
closes within 0.5 px and the flow stays inside the frame: an error that moves with the picture
is then not counted, and one that changes where the picture does not is. `plain` needs no flow
and counts motion too; it is reported beside `flicker` so that a flow failure shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from hatstream.errors import HatstreamError

__all__ = ["FlowPair", "flow_pair", "warp", "error_flicker", "plain_flicker", "warping_error", "Flicker"]

FB_THRESHOLD = 0.5  # px; the forward-backward error under which the flow counts as reliable


def _dis() -> cv2.DISOpticalFlow:
    # A fresh object per call: DIS keeps no state between calc() calls that changes its result,
    # but a shared one would not be safe across threads.
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)


def _sample(img: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """img(x + flow(x)) for every pixel x of the flow's grid (edges replicated)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(np.asarray(img, dtype=np.float32), gx + flow[..., 0], gy + flow[..., 1], interpolation,
                     borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class FlowPair:
    """Flow from frame t to frame t-1 (`flow[y, x]` = where pixel (x, y) of t was) and its reliable pixels."""

    flow: np.ndarray      # (H, W, 2) float32, in pixels
    reliable: np.ndarray  # (H, W) bool


def flow_pair(cur: np.ndarray, prev: np.ndarray, threshold: float = FB_THRESHOLD) -> FlowPair:
    """DIS flow cur -> prev on two (H, W) luma images (0..255), with the forward-backward check."""
    a, b = _to_u8(cur), _to_u8(prev)
    dis = _dis()
    back = dis.calc(a, b, None)      # t -> t-1
    fwd = dis.calc(b, a, None)       # t-1 -> t
    # Following t -> t-1 and then t-1 -> t should come back to the start.
    round_trip = back + np.stack([_sample(fwd[..., 0], back), _sample(fwd[..., 1], back)], axis=-1)
    h, w = a.shape
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    x, y = gx + back[..., 0], gy + back[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return FlowPair(back, (np.hypot(round_trip[..., 0], round_trip[..., 1]) < threshold) & inside)


def warp(img: np.ndarray, pair: FlowPair) -> np.ndarray:
    """Frame t-1's `img` moved onto frame t's grid along `pair.flow` (bilinear)."""
    return _sample(img, pair.flow).astype(np.float64)


def _check(frames: Sequence[np.ndarray], name: str) -> None:
    if len(frames) < 2:
        raise HatstreamError(f"{name} needs at least two frames, got {len(frames)}")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise HatstreamError(f"{name} needs (H, W) frames of one size, got shapes {sorted(shapes)}")


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border else img


def error_flicker(sr: Sequence[np.ndarray], hr: Sequence[np.ndarray], crop_border: int = 0,
                  pairs: Sequence[FlowPair] | None = None) -> list[float]:
    """Per frame pair (t-1, t): mean |e_t - W(e_(t-1))| over reliable pixels, e = sr - hr (Y, 0..255).

    `pairs[t-1]` may be given (from `flow_pair(hr[t], hr[t-1])`) to share the flow between
    several outputs of the same clip. A pair without a reliable pixel scores nan.
    """
    _check(hr, "error flicker")
    if len(sr) != len(hr) or np.shape(sr[0]) != np.shape(hr[0]):
        raise HatstreamError("error flicker needs as many output frames as ground-truth ones, of the same size")
    pairs = pairs if pairs is not None else [flow_pair(hr[t], hr[t - 1]) for t in range(1, len(hr))]
    scores = []
    for t in range(1, len(hr)):
        e_cur = np.asarray(sr[t], np.float64) - np.asarray(hr[t], np.float64)
        e_prev = np.asarray(sr[t - 1], np.float64) - np.asarray(hr[t - 1], np.float64)
        diff = _crop(np.abs(e_cur - warp(e_prev, pairs[t - 1])), crop_border)
        mask = _crop(pairs[t - 1].reliable, crop_border)
        scores.append(float(diff[mask].mean()) if mask.any() else float("nan"))
    return scores


def plain_flicker(sr: Sequence[np.ndarray], hr: Sequence[np.ndarray], crop_border: int = 0) -> list[float]:
    """Per frame pair: mean |e_t - e_(t-1)| over all pixels, with no motion compensation."""
    _check(hr, "plain flicker")
    e = [np.asarray(s, np.float64) - np.asarray(h, np.float64) for s, h in zip(sr, hr)]
    return [float(_crop(np.abs(e[t] - e[t - 1]), crop_border).mean()) for t in range(1, len(e))]


def warping_error(frames: Sequence[np.ndarray], crop_border: int = 0,
                  pairs: Sequence[FlowPair] | None = None) -> list[float]:
    """Per frame pair: mean |O_t - W(O_(t-1))| over reliable pixels, flow on `frames` themselves
    unless `pairs` (e.g. from the ground truth) is given. Needs no ground truth."""
    _check(frames, "warping error")
    pairs = pairs if pairs is not None else [flow_pair(frames[t], frames[t - 1]) for t in range(1, len(frames))]
    scores = []
    for t in range(1, len(frames)):
        diff = _crop(np.abs(np.asarray(frames[t], np.float64) - warp(frames[t - 1], pairs[t - 1])), crop_border)
        mask = _crop(pairs[t - 1].reliable, crop_border)
        scores.append(float(diff[mask].mean()) if mask.any() else float("nan"))
    return scores


@dataclass(frozen=True)
class Flicker:
    """A clip's temporal scores, each the mean over frame pairs (Y, 0..255)."""

    flicker: float
    plain: float
    warp_error: float

    @classmethod
    def of(cls, sr: Sequence[np.ndarray], hr: Sequence[np.ndarray], crop_border: int = 0,
           pairs: Sequence[FlowPair] | None = None) -> "Flicker":
        """All three scores of `sr` against `hr`, the warping error with the ground truth's flow."""
        pairs = pairs if pairs is not None else [flow_pair(hr[t], hr[t - 1]) for t in range(1, len(hr))]
        return cls(float(np.nanmean(error_flicker(sr, hr, crop_border, pairs))),
                   float(np.mean(plain_flicker(sr, hr, crop_border))),
                   float(np.nanmean(warping_error(sr, crop_border, pairs))))
