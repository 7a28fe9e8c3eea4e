"""Scoring a model the way SR papers do, shared by `hatstream eval` and training validation.

HR is cropped to a multiple of the scale; the LR input is its MATLAB bicubic downscale rounded to
uint8; outputs are clamped, x255 and rounded; PSNR/SSIM on Y with crop border = scale. The
bicubic baseline is OpenCV's bicubic upscale of the same uint8 LR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from hatstream.metrics.quality import psnr_y, quantize, ssim_y
from hatstream.train.data import make_lr, modcrop

UpscaleFn = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) [0,1] -> (1, 3, sh, sw)


def degrade(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB HR -> (modcropped HR, uint8 LR by MATLAB bicubic)."""
    hr = modcrop(hr, scale)
    return hr, quantize(make_lr(hr, scale))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """OpenCV bicubic upscale of a uint8 image, the baseline every SR table compares against."""
    return cv2.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), interpolation=cv2.INTER_CUBIC)


def model_upscale(fn: UpscaleFn, lr: np.ndarray) -> np.ndarray:
    """Run an upscaling function on a uint8 (h, w, 3) image; returns the quantised uint8 result."""
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div_(255.0)  # (h,w,3) -> (1,3,h,w)
    with torch.no_grad():
        y = fn(x)[0].permute(1, 2, 0).float().cpu().numpy()  # (1,3,sh,sw) -> (sh,sw,3)
    return quantize(y)


@dataclass(frozen=True)
class Score:
    """PSNR (dB) and SSIM on the Y channel of one image, for the model and for bicubic."""

    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float


def score_image(name: str, hr: np.ndarray, scale: int, fn: UpscaleFn | None) -> Score:
    """Degrade `hr`, upscale it with `fn` (None: bicubic only) and with bicubic, and score both."""
    hr, lr = degrade(hr, scale)
    bic = bicubic_upscale(lr, scale)
    bp, bs = psnr_y(bic, hr, scale), ssim_y(bic, hr, scale)
    if fn is None:
        return Score(name, bp, bs, bp, bs)
    sr = model_upscale(fn, lr)
    return Score(name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale), bp, bs)


def mean_score(scores: list[Score]) -> Score:
    """The per-column mean, named 'mean'."""
    cols = [np.mean([getattr(s, f) for s in scores]) for f in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")]
    return Score("mean", *map(float, cols))
