"""HAT test cases computed live by the reference implementation (spandrel's port of the official code).

Each case is a config, a state dict with every weight perturbed by fixed noise (so that no parameter
is left at a trivial init value), inputs, and the reference's outputs under the official test
wrapper: reflect-pad right and bottom to a multiple of the window, run, crop to scale*H x scale*W.

Why live rather than golden files: the reference is one `pip install` away (a test extra, see the
Makefile), covers any configuration we care to name at no cost to the repository's size, and
cannot drift from the files it would otherwise have produced. spandrel's HAT is checked against
the official weights' layout in tests/test_checkpoints.py and reproduces the official code bit for
bit (its own test suite; ../shared/fixtures/hat when present is a second, independent check).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

_COMMON = {"in_chans": 3, "img_size": 64, "conv_scale": 0.01, "overlap_ratio": 0.5, "img_range": 1.0,
           "mlp_ratio": 2.0, "upsampler": "pixelshuffle", "resi_connection": "1conv"}

# name: (official constructor keywords that differ from _COMMON, input shapes (B, 3, H, W)).
# Inputs that are not multiples of the window exercise the padding; the names of the first four
# are those of ../shared/fixtures/hat, with the same configs.
CONFIGS: dict[str, tuple[dict, list[tuple[int, int, int, int]]]] = {
    "tiny_x2_w8": ({"upscale": 2, "window_size": 8, "embed_dim": 24, "depths": [2, 2], "num_heads": [3, 3],
                    "compress_ratio": 3, "squeeze_factor": 8}, [(1, 3, 16, 24), (1, 3, 13, 21)]),
    "small_x4_w16": ({"upscale": 4, "window_size": 16, "embed_dim": 48, "depths": [2], "num_heads": [6],
                      "compress_ratio": 24, "squeeze_factor": 24}, [(1, 3, 32, 48), (2, 3, 20, 36)]),
    "small_x3_w8": ({"upscale": 3, "window_size": 8, "embed_dim": 30, "depths": [2, 2], "num_heads": [3, 3],
                     "compress_ratio": 3, "squeeze_factor": 30}, [(1, 3, 16, 16), (1, 3, 10, 18)]),
    # HAT/HAT-L widths: 180 channels, 6 heads of 30.
    "hatdim30_x4": ({"upscale": 4, "window_size": 16, "embed_dim": 180, "depths": [2], "num_heads": [6],
                     "compress_ratio": 3, "squeeze_factor": 30}, [(1, 3, 16, 32), (1, 3, 17, 40)]),
    # The official code's other residual connection ("3conv" is SwinIR's; the official HAT has no
    # top-level layer for it), odd sizes in both directions, x2/x4 at window 8 and 16.
    "identity_x4_w8": ({"upscale": 4, "window_size": 8, "embed_dim": 24, "depths": [2, 1], "num_heads": [2, 3],
                        "compress_ratio": 3, "squeeze_factor": 8, "resi_connection": "identity"},
                       [(1, 3, 9, 23)]),
    "odd_x2_w16": ({"upscale": 2, "window_size": 16, "embed_dim": 32, "depths": [2], "num_heads": [4],
                    "compress_ratio": 4, "squeeze_factor": 16}, [(1, 3, 17, 33)]),
}


@dataclass(frozen=True)
class Case:
    """One configuration: the official kwargs, the reference's state dict, and input/output pairs."""

    name: str
    config: dict
    state: dict[str, torch.Tensor]
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]

    @property
    def checkpoint(self) -> dict:
        """The state dict as BasicSR saves it."""
        return {"params_ema": self.state}


@functools.lru_cache(maxsize=1)
def reference_hat_class():
    """The reference `HAT` class (benchmarks/reference.py loads it without torchvision)."""
    spec = importlib.util.spec_from_file_location("hatstream_bench_reference", ROOT / "benchmarks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_hat_class()


def perturbed(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """`state` with fixed noise added to every weight; the integer index buffers are kept."""
    g = torch.Generator().manual_seed(seed)
    return {k: v if not v.is_floating_point() else v + 0.02 * torch.randn(v.shape, generator=g)
            for k, v in state.items()}


def tiny_hat(scale: int = 2, window: int = 8):
    """A small hatstream HAT with every weight perturbed (bias tables included), loaded like a
    checkpoint: `(module, ModelInfo)`, for tests of what runs the model (export, backends)."""
    from hatstream.models.hat import HAT, HATConfig
    from hatstream.models.registry import build_from_state_dict

    torch.manual_seed(window + scale)
    cfg = HATConfig(upscale=scale, window_size=window, embed_dim=16, depths=(2,), num_heads=(2,),
                    compress_ratio=2, squeeze_factor=4, mlp_ratio=2.0, num_feat=16)
    state = HAT.from_config(cfg).state_dict()
    g = torch.Generator().manual_seed(1)
    state = {k: v if "index" in k else v + 0.1 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    return build_from_state_dict(state, "tiny")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of `a` against `b`, both in [0, 1]."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-20))


def official_wrapper(model: torch.nn.Module, x: torch.Tensor, window: int, scale: int) -> torch.Tensor:
    """The official test wrapper: reflect-pad right/bottom to the window, run, crop."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, (-w) % window, 0, (-h) % window), mode="reflect")
    with torch.no_grad():
        return model(xp)[..., : h * scale, : w * scale]


@functools.lru_cache(maxsize=None)
def case(name: str) -> Case:
    """Build the reference for `name`, perturb its weights and record its outputs (cached per process)."""
    extra, shapes = CONFIGS[name]
    config = {**_COMMON, **extra}
    torch.manual_seed(0)
    ref = reference_hat_class()(**config).eval()
    state = perturbed(ref.state_dict())
    ref.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    inputs = tuple(torch.rand(shape, generator=g) for shape in shapes)
    outputs = tuple(official_wrapper(ref, x, config["window_size"], config["upscale"]) for x in inputs)
    return Case(name, config, state, inputs, outputs)


def tiny_chain(windows: tuple[int, int] = (8, 8)):
    """Two perturbed tiny x2 HATs as one chain checkpoint, loaded like a file: `(module, ModelInfo,
    state)`, with `state` the flat `passes.<i>.` dict (for saving, or for building by hand)."""
    from hatstream.models.chain import join_passes
    from hatstream.models.registry import build_from_state_dict

    states = [{k: v.clone() for k, v in tiny_hat(2, w)[0].state_dict().items()} for w in windows]
    state = join_passes(states)
    return (*build_from_state_dict(state, "tiny chain"), state)
