"""HAT's reconstruction head folded into one convolution, for inference.

After `conv_before_upsample`'s LeakyReLU, the head is linear: (conv, pixel shuffle) once or twice,
then `conv_last`. A linear map that commutes with shifts by one LR pixel is a convolution at LR
resolution whose s²·3 output channels are the sub-pixels of the result. Its kernel spans ±2 LR
pixels for every released scale, so it is 5×5, num_feat → 3s² channels.

Why: the chain runs its convolutions at 2× and 4× resolution. For HAT ×4 (num_feat 64) that is
~765 k multiply-adds per input pixel and, on a GPU, a 256-channel 2× intermediate (1 GB in bf16
for one 960×540 frame); folded it is 77 k and no intermediate. For the bundled tiny ×4 it is a
third of the CPU frame time.

Only the image border differs: each stage of the chain zero-pads its own input, while the folded
convolution sees the chain's values there. So the outermost LR pixel is recomputed with the
original chain on narrow strips, and the result equals the chain to float rounding everywhere.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

_REACH = 2  # LR pixels the chain's output depends on, each side (kernel 2*_REACH + 1)
# The chain and the folded conv differ only through intermediate values outside the image, which
# the chain zero-pads; every stage reads at most one fine pixel past the edge, so only the
# outermost LR pixel is affected.
_RING = 1
_STRIP = _RING + _REACH  # LR rows/cols a border strip needs: its own far edge cannot reach the ring


class FoldedHead(nn.Module):
    """The chain `upsample` + `conv_last` as one LR convolution and one pixel shuffle."""

    def __init__(self, upsample: nn.Module, conv_last: nn.Conv2d, scale: int):
        super().__init__()
        self.scale = scale
        self.chain = nn.Sequential(upsample, conv_last)  # kept for the border strips
        weight, bias = _fold(self.chain, conv_last.in_channels, scale)
        self.weight = nn.Parameter(weight.to(conv_last.weight), requires_grad=False)
        self.bias = nn.Parameter(bias.to(conv_last.weight), requires_grad=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, num_feat, H, W) features after the LeakyReLU -> (B, 3, sH, sW)."""
        h, w = f.shape[-2:]
        if h < 2 * _STRIP or w < 2 * _STRIP:
            return self.chain(f)
        y = F.pixel_shuffle(F.conv2d(f, self.weight, self.bias, padding=_REACH), self.scale)  # (B, 3, sH, sW)
        s, r, n = self.scale, _RING, _STRIP
        y[..., : r * s, :] = self.chain(f[..., :n, :])[..., : r * s, :]
        y[..., -r * s:, :] = self.chain(f[..., -n:, :])[..., -r * s:, :]
        y[..., :, : r * s] = self.chain(f[..., :, :n])[..., :, : r * s]
        y[..., :, -r * s:] = self.chain(f[..., :, -n:])[..., :, -r * s:]
        return y


@torch.no_grad()
def _fold(chain: nn.Module, num_feat: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3s², num_feat, k, k) kernel and (3s²,) bias of `chain`, found by impulse responses.

    In float64 on the CPU, so the folded weights carry no more rounding than one cast.
    """
    k, p = 2 * _REACH + 1, 4 * _REACH + 1  # p: a canvas wide enough that no padding is reached
    c = p // 2
    chain64 = _copy_to(chain, torch.float64)
    # One impulse per input channel, at the canvas centre, through the chain without biases.
    impulses = torch.zeros(num_feat, num_feat, p, p, dtype=torch.float64)
    impulses[torch.arange(num_feat), torch.arange(num_feat), c, c] = 1
    for m in chain64.modules():
        if isinstance(m, nn.Conv2d):
            m.bias = None
    resp = F.pixel_unshuffle(chain64(impulses), scale)  # (num_feat, 3s², p, p): sub-pixels as channels
    outside = resp.clone()
    outside[:, :, c - _REACH: c + _REACH + 1, c - _REACH: c + _REACH + 1] = 0
    if outside.abs().max() > 0:
        raise ValueError(f"the x{scale} head reaches further than {_REACH} LR pixels; it cannot be folded")
    # The output at LR position c - d + _REACH reads the input at c through kernel tap d.
    weight = resp[:, :, c + _REACH - torch.arange(k)][:, :, :, c + _REACH - torch.arange(k)]
    weight = weight.permute(1, 0, 2, 3).contiguous()  # (3s², num_feat, k, k)
    # The bias: the chain's response to zero input, away from the border.
    bias_chain = _copy_to(chain, torch.float64)
    zeros = torch.zeros(1, num_feat, p, p, dtype=torch.float64)
    bias = F.pixel_unshuffle(bias_chain(zeros), scale)[0, :, c, c]
    return weight, bias


def _copy_to(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(module).to(device="cpu", dtype=dtype)


def fold_head(model: nn.Module) -> None:
    """Replace `model.upsample` + `model.conv_last` of a HAT by a FoldedHead, in place.

    The output is unchanged up to float rounding; the state dict no longer matches checkpoints.
    Only the pixel-shuffle upsampler (every released HAT) has the linear chain to fold.
    """
    if isinstance(model.upsample, FoldedHead) or model.config.upsampler != "pixelshuffle":
        return
    model.upsample = FoldedHead(model.upsample, model.conv_last, model.upscale)
    model.conv_last = nn.Identity()
