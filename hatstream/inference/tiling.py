"""Tiled upscaling with overlap and feathered blending: the fallback when a frame does not fit.

Whole frames are the reference: HAT's channel attention averages over the whole input and its
overlapping cross-attention zero-pads at the input's edges, so tiles change the result (seams,
tone shifts). Overlap plus linear feathering keeps the seams small; it cannot make them vanish.
"""

from __future__ import annotations

from typing import Callable

import torch


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` every `step`; the last tile is flush."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(length: int, ov: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blend weights along a tile for the sides that border another tile.

    The first quarter of the overlap next to an inner edge is (almost) discarded, since pixels
    there lack context; the weight then rises linearly to 1 at the overlap's far end. Weights
    never reach 0, so a pixel covered by one tile only is still defined.
    """
    w = torch.ones(length)
    if ov > 0:
        margin = ov // 4
        d = torch.arange(min(ov, length), dtype=torch.float32) + 0.5
        ramp = ((d - margin) / max(ov - 2 * margin, 1)).clamp(1e-6, 1.0)
        if ramp_start:
            w[: len(ramp)] = torch.minimum(w[: len(ramp)], ramp)
        if ramp_end:
            w[-len(ramp):] = torch.minimum(w[-len(ramp):], ramp.flip(0))
    return w


def upscale_tiled(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int,
                  overlap: int) -> torch.Tensor:
    """Upscale (B, C, H, W) `x` tile by tile with `run`, blending overlaps; -> (B, C, sH, sW) float32.

    `run` maps any (B, C, h, w) to (B, C, s·h, s·w) (it pads internally as needed).
    """
    b, c, h, w = x.shape
    if tile < 2 * overlap:
        # The step must stay a sensible part of the tile: at tile - overlap -> 1 the tile count
        # grows with the square of the frame side (a hang, not a fallback).
        raise ValueError(f"tile {tile} must be at least twice the overlap ({overlap})")
    step = tile - overlap
    out = torch.zeros(b, c, h * scale, w * scale, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=x.device)
    ys, xs = tile_starts(h, tile, step), tile_starts(w, tile, step)
    ov = overlap * scale
    for y0 in ys:
        th = min(tile, h - y0)
        wy = _ramp(th * scale, ov, y0 > 0, y0 + th < h)
        for x0 in xs:
            tw = min(tile, w - x0)
            wx = _ramp(tw * scale, ov, x0 > 0, x0 + tw < w)
            mask = (wy[:, None] * wx[None, :]).to(x.device)  # (s·th, s·tw)
            patch = run(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            rows = slice(y0 * scale, (y0 + th) * scale)
            cols = slice(x0 * scale, (x0 + tw) * scale)
            out[..., rows, cols] += patch * mask
            weight[..., rows, cols] += mask
    return out / weight
