"""The upscaler: pads to the model's window, runs it in the chosen precision, crops and clamps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hatstream.models.hat import HAT
from hatstream.models.hat_rescale import make_fp16_safe
from hatstream.models.spec import ModelInfo


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad the right and bottom edges of (B, C, H, W) up to a multiple; returns (x, pad_h, pad_w).

    Reflection, as the official test wrapper does. Reflection needs the pad to be smaller than
    the side, so tiny inputs fall back to replicating the edge instead of failing.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw


class Upscaler:
    """A loaded model ready to run: `upscaler(x)` maps (B,3,H,W) in [0,1] to (B,3,sH,sW) in [0,1].

    Attributes: `scale`, `info` (ModelInfo: architecture name and hyperparameters), `device`,
    `dtype` (the compute dtype), and `model` (the torch module).
    """

    def __init__(self, model: nn.Module, info: ModelInfo, device: torch.device, dtype: torch.dtype):
        self.info = info
        self.scale = info.scale
        self.device = device
        self.dtype = dtype
        if dtype == torch.float16 and isinstance(model, HAT):
            make_fp16_safe(model)
        self.model = model.to(device=device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __repr__(self) -> str:
        return f"Upscaler({self.info.describe()}, device={self.device}, dtype={self.dtype})"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale a float batch in [0, 1]; the result has x's float dtype and the upscaler's device."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        h, w = x.shape[-2:]
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        x, _, _ = pad_to_multiple(x, self.info.window_multiple)
        y = self.model(x)[..., : h * self.scale, : w * self.scale]
        return y.clamp_(0, 1).to(out_dtype)
