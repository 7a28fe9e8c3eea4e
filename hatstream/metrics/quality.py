"""PSNR and SSIM as SR papers report them (BasicSR conventions).

Y channel of MATLAB's BT.601 ``rgb2ycbcr`` (16-235), `crop_border` pixels removed from each side,
float64 throughout, peak 255. SSIM uses an 11x11 Gaussian window (sigma 1.5) in 'valid' mode.
Images are uint8-range (H, W, 3) RGB arrays (uint8 or float in 0..255).
"""

from __future__ import annotations

import numpy as np

from hatstream.errors import HatstreamError

__all__ = ["rgb_to_y", "psnr", "ssim", "psnr_y", "ssim_y", "quantize"]

# MATLAB rgb2ycbcr, Y row, for inputs in [0, 1] and outputs in 0..255.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def quantize(img_float: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 the way SR evaluation saves outputs: clip, x255, round."""
    return np.round(np.clip(np.asarray(img_float, dtype=np.float64), 0, 1) * 255).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in 0..255 -> (H, W) float64 luma in 16..235 (BT.601, MATLAB convention)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise HatstreamError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return (a / 255.0) @ _Y_WEIGHTS + 16.0


def _crop_pair(a: np.ndarray, b: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise HatstreamError(f"images differ in shape: {a.shape} vs {b.shape}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    if a.size == 0:
        raise HatstreamError(f"nothing left to compare after cropping {border} px from each border")
    return a, b


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """PSNR in dB (peak 255) over all channels of two 0..255 images; inf when identical."""
    a, b = _crop_pair(img, ref, crop_border)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with outer(g, g), 'valid' mode: (H, W) -> (H-k+1, W-k+1)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ g  # (H-k+1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g  # (H-k+1, W-k+1)


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    g = _gaussian_window()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return float(np.mean(num / den))


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """SSIM of two 0..255 images, (H, W) or (H, W, C) (mean over channels)."""
    a, b = _crop_pair(img, ref, crop_border)
    if min(a.shape[:2]) < 11:
        raise HatstreamError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    if a.ndim == 2:
        return _ssim_single(a, b)
    return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def psnr_y(img: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """PSNR on the BT.601 Y channel of two RGB 0..255 images."""
    return psnr(rgb_to_y(img), rgb_to_y(ref), crop_border)


def ssim_y(img: np.ndarray, ref: np.ndarray, crop_border: int = 0) -> float:
    """SSIM on the BT.601 Y channel of two RGB 0..255 images."""
    return ssim(rgb_to_y(img), rgb_to_y(ref), crop_border)
