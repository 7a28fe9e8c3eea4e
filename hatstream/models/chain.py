"""A chain of HAT networks run one after another: x4 as two x2 passes.

waifu2x and most CNN upscalers reach x4 by running their x2 model twice. hatstream's chain does
the same with HAT, but its second pass is trained on the first pass's output (`hatstream train`
with `first_pass`), so it learns to undo the first pass's own errors instead of treating them as
detail. Between passes the image is clamped to [0, 1], as a saved picture would be.

A chain checkpoint is one flat state dict whose keys are each pass's HAT keys under
`passes.<i>.`; each pass's hyperparameters are inferred from its own tensors, and each is loaded
strictly. The chain declares what it can do as a HAT does: its scale is the product of the
passes', and its input multiple is the smallest side that every pass can window.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from hatstream.models.hat import HAT

PREFIX = "passes."
_PASS_KEY = re.compile(r"passes\.(\d+)\.(.+)$")


class HATChain(nn.Module):
    """HAT networks in sequence: (B, 3, H, W) -> (B, 3, S*H, S*W), S the product of their scales."""

    def __init__(self, passes: list[HAT]):
        super().__init__()
        if len(passes) < 2:
            raise ValueError("a chain needs at least two passes")
        self.passes = nn.ModuleList(passes)
        self.config = tuple(p.config for p in passes)  # what the graph cache fingerprints
        self.upscale = math.prod(p.upscale for p in passes)
        self.window_multiple = input_multiple(passes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of `window_multiple` -> (B, 3, SH, SW), unclamped."""
        *first, last = self.passes
        for p in first:
            x = p(x).clamp(0, 1)  # (B, 3, sH, sW): the next pass reads an image, as in training
        return last(x)


def input_multiple(passes: list[HAT]) -> int:
    """The smallest m such that an input side divisible by m gives every pass a side divisible by
    its window: pass i sees the input enlarged by the scales of the passes before it."""
    m, before = 1, 1
    for p in passes:
        need = p.window_size // math.gcd(p.window_size, before)
        m = m * need // math.gcd(m, need)
        before *= p.upscale
    return m


def hat_passes(model: nn.Module) -> list[HAT]:
    """The HAT networks a model runs, in order: itself, or a chain's passes."""
    return list(model.passes) if isinstance(model, HATChain) else [model]


def is_chain(state: dict[str, torch.Tensor]) -> bool:
    """True when every key belongs to a numbered pass (`split_passes` then checks the passes)."""
    return bool(state) and all(_PASS_KEY.match(k) for k in state)


def split_passes(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A chain state dict -> one HAT state dict per pass, in order; the passes must be 0..n-1."""
    by_pass: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _PASS_KEY.match(k)
        by_pass.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if sorted(by_pass) != list(range(len(by_pass))):
        raise ValueError(f"pass numbers {sorted(by_pass)} are not 0..{len(by_pass) - 1}")
    if len(by_pass) < 2:
        raise ValueError("it holds one pass only (a chain needs two or more; without the `passes.0.` prefix "
                         "its tensors load as a single HAT)")
    return [by_pass[i] for i in range(len(by_pass))]


def join_passes(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One HAT state dict per pass -> the chain's flat state dict (what `split_passes` reads)."""
    return {f"{PREFIX}{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}
