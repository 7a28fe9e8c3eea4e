"""HAT's reconstruction head folded into one convolution, for inference.

After `conv_before_upsample`'s LeakyReLU, the head is linear: (conv, pixel shuffle) once or twice,
then `conv_last`. A linear map that commutes with shifts by one LR pixel is a convolution at LR
resolution whose s²·3 output channels are the sub-pixels of the result. Its kernel spans ±2 LR
pixels for every released scale, so it is 5×5, num_feat → 3s² channels.

Why: the chain runs its convolutions at 2× and 4× resolution. For HAT ×4 (num_feat 64) that is
~765 k multiply-adds per input pixel and, on a GPU, a 256-channel 2× intermediate (1 GB in bf16
for one 960×540 frame); folded it is 77 k and no intermediate. For the bundled tiny ×4 the chain
was a third of the CPU frame time.

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
    """The chain `upsample` + `conv_last` as one LR convolution and one pixel shuffle.

    The folded kernel is a non-persistent buffer and the chain is not registered here, so the
    model's state dict stays the checkpoint's (the Ray engine ships it to its workers).
    """

    def __init__(self, upsample: nn.Module, conv_last: nn.Conv2d, scale: int):
        super().__init__()
        self.scale = scale
        self._chain = (upsample, conv_last)  # the model's own modules, kept for the border strips
        weight, bias = _fold(upsample, conv_last, scale)
        self.register_buffer("weight", weight.to(conv_last.weight), persistent=False)
        self.register_buffer("bias", bias.to(conv_last.weight), persistent=False)

    def chain(self, f: torch.Tensor) -> torch.Tensor:
        """The reference head: (B, num_feat, H, W) -> (B, 3, sH, sW)."""
        upsample, conv_last = self._chain
        return conv_last(upsample(f))

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
def _fold(upsample: nn.Module, conv_last: nn.Conv2d, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (3s², num_feat, k, k) kernel and (3s²,) bias of the chain, found by impulse responses.

    In float64 on the CPU, so the folded weights carry no more rounding than one cast.
    """
    num_feat = conv_last.in_channels
    k, p = 2 * _REACH + 1, 4 * _REACH + 1  # p: a canvas wide enough that no padding is reached
    c = p // 2
    chain = copy.deepcopy(nn.Sequential(upsample, conv_last)).to(device="cpu", dtype=torch.float64)
    # The bias: the chain's response to zero input, away from the border.
    zeros = torch.zeros(1, num_feat, p, p, dtype=torch.float64)
    bias = F.pixel_unshuffle(chain(zeros), scale)[0, :, c, c]
    # One impulse per input channel, at the canvas centre, through the chain without biases.
    for m in chain.modules():
        if isinstance(m, nn.Conv2d):
            m.bias = None
    impulses = torch.zeros(num_feat, num_feat, p, p, dtype=torch.float64)
    impulses[torch.arange(num_feat), torch.arange(num_feat), c, c] = 1
    resp = F.pixel_unshuffle(chain(impulses), scale)  # (num_feat, 3s², p, p): sub-pixels as channels
    outside = resp.clone()
    outside[:, :, c - _REACH: c + _REACH + 1, c - _REACH: c + _REACH + 1] = 0
    if outside.abs().max() > 0:
        raise ValueError(f"the x{scale} head reaches further than {_REACH} LR pixels; it cannot be folded")
    # The output at LR position c - d + _REACH reads the input at c through kernel tap d.
    weight = resp[:, :, c + _REACH - torch.arange(k)][:, :, :, c + _REACH - torch.arange(k)]
    return weight.permute(1, 0, 2, 3).contiguous(), bias  # (3s², num_feat, k, k), (3s²,)


def fold_head(model: nn.Module) -> None:
    """Give a HAT a FoldedHead for inference (`model.folded_head`), in place.

    The output is unchanged up to float rounding, and so is the state dict. The fold is a snapshot
    of the head's weights: for inference only, not for a model still training. Only the
    pixel-shuffle upsampler (every released HAT) has the linear chain to fold.
    """
    if model.folded_head is None and model.config.upsampler == "pixelshuffle":
        model.folded_head = FoldedHead(model.upsample, model.conv_last, model.upscale)
