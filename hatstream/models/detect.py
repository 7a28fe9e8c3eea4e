"""Recognise HAT checkpoints and infer their hyperparameters from tensor shapes."""

from __future__ import annotations

import math
import re

import torch

from hatstream.models.hat import HATConfig

# Keys every HAT checkpoint has, whatever its size.
REQUIRED_KEYS = (
    "conv_first.weight",
    "patch_embed.norm.weight",
    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
    "layers.0.residual_group.overlap_attn.relative_position_bias_table",
    "conv_before_upsample.0.weight",
    "conv_last.weight",
)

# Released families: (embed_dim, depths) -> name. Real-HAT-GAN shares HAT's layout.
VARIANTS = {
    (144, (6,) * 6): "HAT-S",
    (180, (6,) * 6): "HAT",
    (180, (6,) * 12): "HAT-L",
}


class NotHAT(ValueError):
    """The state dict is not a HAT network; the message names what is missing or inconsistent."""


def is_hat(state: dict[str, torch.Tensor]) -> bool:
    """True when the state dict has the keys that identify HAT."""
    return all(k in state for k in REQUIRED_KEYS)


def _count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _ratio(dim: int, hidden: int, what: str) -> int:
    """The ratio r with dim // r == hidden (the reference derives hidden widths by floor division)."""
    guess = max(1, dim // max(hidden, 1))
    for r in (guess, guess + 1, guess - 1, *range(1, dim + 1)):
        if r >= 1 and dim // r == hidden:
            return r
    raise NotHAT(f"{what} width {hidden} cannot come from embed_dim {dim}")


def infer_config(state: dict[str, torch.Tensor]) -> HATConfig:
    """Every hyperparameter the tensors determine; img_range, conv_scale and img_size keep defaults."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise NotHAT(f"missing HAT keys: {', '.join(missing[:3])}")
    conv_first = state["conv_first.weight"]  # (C, in_chans, 3, 3)
    embed_dim, in_chans = int(conv_first.shape[0]), int(conv_first.shape[1])

    n_groups = _count(state, r"layers\.(\d+)\.")
    depths = tuple(_count(state, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.") for i in range(n_groups))
    num_heads = tuple(
        int(state[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
        for i in range(n_groups)
    )

    sa_rows = state["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape[0]
    window_size = (math.isqrt(sa_rows) + 1) // 2  # table has (2ws-1)^2 rows
    if (2 * window_size - 1) ** 2 != sa_rows:
        raise NotHAT(f"attention bias table of {sa_rows} rows is not (2*ws-1)^2")
    oca_rows = state["layers.0.residual_group.overlap_attn.relative_position_bias_table"].shape[0]
    ows = math.isqrt(oca_rows) - window_size + 1  # table has (ws+ows-1)^2 rows
    overlap_ratio = (ows - window_size) / window_size

    blk = "layers.0.residual_group.blocks.0"
    cab_hidden = int(state[f"{blk}.conv_block.cab.0.weight"].shape[0])
    se_hidden = int(state[f"{blk}.conv_block.cab.3.attention.1.weight"].shape[0])
    mlp_hidden = int(state[f"{blk}.mlp.fc1.weight"].shape[0])

    num_feat = int(state["conv_before_upsample.0.weight"].shape[0])
    ups = sorted(int(m.group(1)) for k in state if (m := re.match(r"upsample\.(\d+)\.weight$", k)))
    if not ups:
        raise NotHAT("no upsample convolutions (only the 'pixelshuffle' upsampler exists)")
    first_up = state[f"upsample.{ups[0]}.weight"].shape[0]
    upscale = 3 if first_up == 9 * num_feat else 2 ** len(ups)

    if "layers.0.conv.weight" in state:
        resi = "1conv"
    elif "layers.0.conv.0.weight" in state:
        resi = "3conv"
    else:
        resi = "identity"

    return HATConfig(
        upscale=upscale, in_chans=in_chans, window_size=window_size,
        compress_ratio=_ratio(embed_dim, cab_hidden, "CAB"),
        squeeze_factor=_ratio(embed_dim, se_hidden, "channel attention"),
        overlap_ratio=overlap_ratio, depths=depths, embed_dim=embed_dim, num_heads=num_heads,
        mlp_ratio=mlp_hidden / embed_dim, resi_connection=resi, num_feat=num_feat,
    )


def variant_name(cfg: HATConfig) -> str:
    """'HAT-S', 'HAT' or 'HAT-L' for the released widths, else 'HAT (custom)'."""
    return VARIANTS.get((cfg.embed_dim, cfg.depths), "HAT (custom)")
