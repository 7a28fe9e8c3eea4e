"""Multiply-accumulate counts of the architectures, for achieved-TFLOP/s figures in benchmarks."""

from __future__ import annotations

import math

from hatstream.models.hat import HATConfig


def hat_macs(cfg: HATConfig, height: int, width: int, folded_head: bool = False) -> int:
    """MACs of one HAT forward on a (padded) height×width input; FLOPs are twice this.

    Counts convolutions, linears and the two attention matmuls; ignores norms, activations,
    softmax and the channel-attention squeeze (all under 1%). Matches the ~13.3 M MACs per input
    pixel published for HAT-S x4. `folded_head` counts the head as the upscaler runs it (one 5×5
    LR convolution, models.hat_head) instead of the reference's chain.
    """
    px = height * width
    c = cfg.embed_dim
    n = cfg.window_size**2
    on = cfg.overlap_window_size**2
    mlp = int(c * cfg.mlp_ratio)
    cab = c // cfg.compress_ratio
    hab = 4 * c * c + 2 * n * c + 2 * 9 * c * cab + 2 * c * mlp  # qkv+proj, attention, CAB, MLP
    ocab = 4 * c * c + 2 * on * c + 2 * c * mlp
    group_conv = {"1conv": 9 * c * c, "3conv": 9 * c * (c // 4) * 2 + (c // 4) ** 2, "identity": 0}[cfg.resi_connection]
    trunk = sum(d * hab + ocab + group_conv for d in cfg.depths)
    f = cfg.num_feat
    head = 9 * cfg.in_chans * c + 9 * c * c + 9 * c * f  # conv_first, conv_after_body, before_upsample
    if folded_head:
        up, last = 0, 25 * f * cfg.in_chans * cfg.upscale**2
    else:
        if cfg.upscale == 3:
            up = 9 * f * 9 * f
        else:
            up = sum(9 * f * 4 * f * 4**i for i in range(int(math.log2(cfg.upscale))))
        last = 9 * f * cfg.in_chans * cfg.upscale**2
    return px * (trunk + head + up + last)
