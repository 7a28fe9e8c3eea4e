"""Carrying HAT's residual trunk at another scale, so that fp16 cannot overflow.

HAT never normalises its residual trunk: with trained weights it reaches ~3e4 in the last groups,
against fp16's maximum of 65504. But every branch reads the trunk through a LayerNorm, which
ignores the scale of its input. So multiplying the trunk by a power of two `alpha`, and every
write into it by the same factor, computes the same function:

- `patch_embed.norm` (the trunk's start), each attention `proj`, each MLP `fc2`, each CAB's second
  conv: weights and biases times alpha;
- channel attention pools the (scaled) CAB output, so its first 1×1 conv's weight is divided by
  alpha to give the same gate;
- the group conv reads the scaled trunk: its biases (and, for `3conv`, the biases after each
  positively homogeneous LeakyReLU) times alpha;
- LayerNorms that read the trunk get eps times alpha², so LN(alpha·x; eps·alpha²) = LN(x; eps).

alpha < 1 shrinks the trunk for fp16; alpha > 1 "inflates" a checkpoint for tests that must
prove the fp16 path safe. Powers of two keep the rescaling exact in floating point.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hatstream.models.hat import HAT, HAB, OCAB


@torch.no_grad()
def rescale_trunk(model: HAT, alpha: float) -> None:
    """Multiply the residual trunk of `model` by `alpha`, in place, without changing its output."""
    if alpha <= 0:
        raise ValueError("alpha must be positive")

    def scale(module: nn.Module, factor: float, weight: bool = True) -> None:
        if weight:
            module.weight.mul_(factor)
        if module.bias is not None:
            module.bias.mul_(factor)

    scale(model.patch_embed.norm, alpha)
    for layer in model.layers:
        for blk in layer.residual_group.blocks:
            assert isinstance(blk, HAB)
            for norm in (blk.norm1, blk.norm2):
                norm.eps *= alpha * alpha
            scale(blk.attn.proj, alpha)
            scale(blk.mlp.fc2, alpha)
            cab = blk.conv_block.cab
            scale(cab[2], alpha)
            cab[3].attention[1].weight.div_(alpha)
        oca = layer.residual_group.overlap_attn
        assert isinstance(oca, OCAB)
        for norm in (oca.norm1, oca.norm2):
            norm.eps *= alpha * alpha
        scale(oca.proj, alpha)
        scale(oca.mlp.fc2, alpha)
        convs = [layer.conv] if isinstance(layer.conv, nn.Conv2d) else [m for m in layer.conv if isinstance(m, nn.Conv2d)]
        for conv in convs:
            scale(conv, alpha, weight=False)
    model.norm.eps *= alpha * alpha


@torch.no_grad()
def trunk_peak(model: HAT, x: torch.Tensor) -> float:
    """The largest |value| the residual trunk takes on input `x` (padded to the window), in fp32."""
    peak = 0.0

    def record(_module, _inputs, output):
        nonlocal peak
        peak = max(peak, output.detach().abs().max().float().item())

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (HAB, OCAB))]
    hooks += [layer.register_forward_hook(record) for layer in model.layers]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return peak


def fp16_alpha(peak: float, target: float = 2048.0) -> float:
    """The power of two that brings `peak` to at most `target`: 32x headroom below 65504, for
    frames that drive the trunk harder than the calibration input did."""
    if peak <= target:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(peak / target))


def calibration_input(window: int, size: int = 64) -> torch.Tensor:
    """A deterministic (1, 3, size, size) image with edges, gradients and texture, for calibration."""
    size = max(size, window) // window * window
    g = torch.Generator().manual_seed(1234)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])
    checker = ((torch.arange(size)[:, None] // 4 + torch.arange(size)[None, :] // 4) % 2).float()
    img = 0.6 * base + 0.3 * checker + 0.1 * torch.rand(3, size, size, generator=g)
    return img.clamp(0, 1)[None]


def make_fp16_safe(model: HAT) -> float:
    """Rescale `model`'s trunk (in place, while still fp32) so fp16 keeps 32x headroom; returns alpha."""
    probe = calibration_input(model.window_size).to(next(model.parameters()).device)
    alpha = fp16_alpha(trunk_peak(model.float(), probe))
    if alpha != 1.0:
        rescale_trunk(model, alpha)
    return alpha
