"""An optional starting point for training from scratch: HAT initialised to bilinear upscaling.

From the reference's random init a network spends its first thousands of steps learning to
reproduce the input at all; on a CPU budget that is most of the run. Here three shallow channels
carry the image unchanged through the trunk (whose output convolution starts at zero, so the
residual branch adds nothing yet), the reconstruction head upsamples them bilinearly with its
pixel-shuffle convolutions, and `conv_last` reads them back. Training then starts at roughly
bilinear quality and learns only the residual detail. Every other weight keeps its random init,
and the result is an ordinary HAT state dict.
"""

from __future__ import annotations

import torch
from torch import nn

# LeakyReLU's slope in conv_before_upsample (nn.LeakyReLU default); the sign trick below needs it.
_SLOPE = 0.01
# 3-tap bilinear weights for the two sub-pixel phases of a x2 upscale with half-pixel centres:
# phase 0 sits 1/4 px before an LR centre, phase 1 1/4 px after it.
_PHASES = (torch.tensor([0.25, 0.75, 0.0]), torch.tensor([0.0, 0.75, 0.25]))


@torch.no_grad()
def bilinear_init(net: nn.Module) -> None:
    """Make an untrained HAT (x2 or x4, num_feat >= 6) compute a bilinear upscale of its input."""
    convs = [m for m in net.upsample if isinstance(m, nn.Conv2d)]
    nf = net.conv_last.in_channels
    if net.upscale not in (2, 4) or nf < 6 or net.conv_first.out_channels < 3:
        raise ValueError("bilinear init needs a x2/x4 HAT with num_feat >= 6")
    eye = torch.eye(3)

    def centre(conv: nn.Conv2d, rows: slice, cols: slice, value: torch.Tensor) -> None:
        conv.weight[rows] = 0
        conv.weight[rows, cols, 1, 1] = value
        if conv.bias is not None:
            conv.bias[rows] = 0

    # conv_first: channels 0-2 = the (mean-subtracted) RGB input.
    centre(net.conv_first, slice(0, 3), slice(0, 3), eye)
    # The trunk's residual branch starts silent, so the shallow features pass unchanged.
    nn.init.zeros_(net.conv_after_body.weight)
    nn.init.zeros_(net.conv_after_body.bias)
    # conv_before_upsample: channels 0-2 = +x, 3-5 = -x, so that after the LeakyReLU
    # (lrelu(x) - lrelu(-x)) / (1 + slope) recovers x exactly whatever its sign.
    pre = net.conv_before_upsample[0]
    centre(pre, slice(0, 6), slice(0, 3), torch.cat([eye, -eye]))
    # Each upsampling conv: output channel 4c + 2i + j (phase (i, j) after PixelShuffle(2)) of
    # channels c < 6 interpolates input channel c bilinearly.
    for conv in convs:
        conv.weight[:24] = 0
        conv.bias[:24] = 0
        for c in range(6):
            for i in range(2):
                for j in range(2):
                    conv.weight[4 * c + 2 * i + j, c] = torch.outer(_PHASES[i], _PHASES[j])
    # conv_last reads the signed pair back; it ignores the other channels until training.
    last = net.conv_last
    last.weight.zero_()
    last.bias.zero_()
    last.weight[:, 0:3, 1, 1] = eye / (1 + _SLOPE)
    last.weight[:, 3:6, 1, 1] = -eye / (1 + _SLOPE)
