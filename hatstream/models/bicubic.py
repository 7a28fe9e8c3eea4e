"""The `bicubic` built-in: any scale, no weights. A baseline and a deterministic stand-in for tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bicubic(nn.Module):
    """Bicubic upscaling (Keys a=-0.75, half-pixel centres, as OpenCV's INTER_CUBIC)."""

    def __init__(self, scale: int):
        super().__init__()
        if scale < 1:
            raise ValueError("scale must be a positive integer")
        self.upscale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, sH, sW), unclamped."""
        if self.upscale == 1:
            return x
        return F.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
