"""Explicit registries: the architectures a model can be, and the built-in models by name.

Both are plain lists/dicts written out here; nothing registers itself at import time. Each
architecture entry carries its builder and its `prepare`, so that what its ModelInfo claims
(fp16, bf16) is done by the entry itself, and the upscaler stays generic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hatstream.errors import HatstreamError
from hatstream.models import detect
from hatstream.models.bicubic import Bicubic
from hatstream.models.chain import HATChain, is_chain, split_passes
from hatstream.models.checkpoint import read_state_dict
from hatstream.models.hat import (HAT, keep_sensitive_parts_fp32, pad_heads, relative_position_index_oca,
                                  relative_position_index_sa)
from hatstream.models.hat_head import fold_head
from hatstream.models.hat_rescale import make_fp16_safe
from hatstream.models.spec import ModelInfo

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_hat(state: dict[str, torch.Tensor], source: str) -> tuple[nn.Module, ModelInfo]:
    """Build HAT with hyperparameters inferred from `state` and load it strictly."""
    try:
        cfg = detect.infer_config(state)
    except (detect.NotHAT, ValueError, KeyError) as exc:
        raise HatstreamError(f"{source} looks like HAT but its tensors are inconsistent: {exc}") from None
    # The two index buffers are derived from the window size; fill them in when a converted
    # checkpoint left them out, so that everything else is still loaded strictly.
    state = dict(state)
    state.setdefault("relative_position_index_SA", relative_position_index_sa(cfg.window_size))
    state.setdefault("relative_position_index_OCA",
                     relative_position_index_oca(cfg.window_size, cfg.overlap_window_size))
    _check_keys(HAT, cfg, state, source)
    model = HAT.from_state_dict(cfg, state)
    info = ModelInfo(
        name=detect.variant_name(cfg), arch="HAT", scale=cfg.upscale, window_multiple=cfg.window_size,
        supports_bf16=True, supports_fp16=True, hyperparameters=cfg.to_kwargs(), source=source,
        parameters=_count_params(model),
    )
    return model.eval(), info


def _check_keys(cls, cfg, state: dict, source: str) -> None:
    """Raise a one-line error naming the first missing, unexpected or mis-shaped tensor."""
    with torch.device("meta"):
        own = cls.from_config(cfg).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    if wrong:
        problems.append(f"wrong shapes: {wrong[0]}")
    if problems:
        raise HatstreamError(f"{source} does not match the HAT architecture: {'; '.join(problems)}")


def build_chain(state: dict[str, torch.Tensor], source: str) -> tuple[nn.Module, ModelInfo]:
    """Build a chain of HATs (`models.chain`), each pass inferred from its own tensors and loaded strictly."""
    try:
        states = split_passes(state)
    except ValueError as exc:
        raise HatstreamError(f"{source} looks like a chain of HATs but {exc}") from None
    built = [build_hat(s, f"{source} (pass {i})") for i, s in enumerate(states)]
    chain = HATChain([m for m, _ in built]).eval()
    scales = " then ".join(f"{i.name} x{i.scale}" for _, i in built)
    info = ModelInfo(
        name=f"HAT chain ({scales})", arch="HAT-chain", scale=chain.upscale,
        window_multiple=chain.window_multiple, supports_bf16=True, supports_fp16=True,
        hyperparameters={"passes": [dict(i.hyperparameters) for _, i in built]}, source=source,
        parameters=_count_params(chain),
    )
    return chain, info


@dataclass(frozen=True)
class Prepared:
    """A module converted for inference, and the dtype its input is fed in."""

    model: nn.Module
    input_dtype: torch.dtype  # the compute dtype, except where the model takes the image wider


def prepare_plain(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Prepared:
    """Any module: on `device`, in `dtype`, in eval mode."""
    return Prepared(model.to(device=device, dtype=dtype).eval(), dtype)


def prepare_hat(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Prepared:
    """HAT for inference, in place: what makes `supports_fp16` and `supports_bf16` true.

    fp16: the trunk is rescaled first, while still fp32 (it overflows plain fp16). On a GPU the
    heads are padded to 8 dims (head dim 30 would silently take the math attention kernel). Every
    precision gets the folded reconstruction head (x4: ~10x fewer MACs) and channels-last weights:
    HAT's convs read (B, H, W, C) token tensors permuted to NCHW, which is already the channels-last
    layout, so this spares a copy per conv. bf16 keeps the trunk, the LayerNorms and both ends in
    fp32 (>= 50 dB from fp32), so the image is fed in fp32.
    """
    if not isinstance(model, HAT):
        raise TypeError(f"prepare_hat needs a HAT, not {type(model).__name__}")
    if dtype == torch.float16:
        make_fp16_safe(model)
    if device.type == "cuda":
        pad_heads(model, 8)
    fold_head(model)
    model = model.to(memory_format=torch.channels_last).to(device=device, dtype=dtype).eval()
    if dtype == torch.bfloat16:
        keep_sensitive_parts_fp32(model)
        return Prepared(model, torch.float32)
    return Prepared(model, dtype)


def prepare_chain(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Prepared:
    """Each pass of a HATChain as `prepare_hat` prepares a HAT; the chain is fed as its first pass."""
    if not isinstance(model, HATChain):
        raise TypeError(f"prepare_chain needs a HATChain, not {type(model).__name__}")
    prepared = [prepare_hat(p, device, dtype) for p in model.passes]  # each in place
    return Prepared(model.eval(), prepared[0].input_dtype)


@dataclass(frozen=True)
class Architecture:
    """A network family: how to prepare it for inference and, for checkpoint families, how to
    recognise and build one from a state dict."""

    name: str  # ModelInfo.arch of the models it builds
    prepare: Callable[[nn.Module, torch.device, torch.dtype], Prepared]
    recognise: Callable[[dict], bool] | None = None  # None: not read from checkpoints
    build: Callable[[dict, str], tuple[nn.Module, ModelInfo]] | None = None


# Checkpoints are recognised in this order; the first entry whose `recognise` accepts wins.
ARCHITECTURES: list[Architecture] = [
    Architecture("HAT", prepare_hat, detect.is_hat, build_hat),
    Architecture("HAT-chain", prepare_chain, is_chain, build_chain),
    Architecture("bicubic", prepare_plain),  # built by load_builtin, from a scale
]


def prepare_for_inference(model: nn.Module, info: ModelInfo, device: torch.device,
                          dtype: torch.dtype) -> Prepared:
    """Convert `model` (in place) as the entry for `info.arch` says; any other module is only
    moved and cast."""
    for arch in ARCHITECTURES:
        if arch.name == info.arch:
            return arch.prepare(model, device, dtype)
    return prepare_plain(model, device, dtype)


def build_from_state_dict(state: dict[str, torch.Tensor], source: str) -> tuple[nn.Module, ModelInfo]:
    """Recognise the architecture of `state` and build the loaded network."""
    families = [a for a in ARCHITECTURES if a.recognise is not None]
    for arch in families:
        if arch.recognise(state):
            return arch.build(state, source)
    sample = ", ".join(list(state)[:3])
    expected = " or ".join(a.name for a in families)
    raise HatstreamError(
        f"{source} is not a {expected} checkpoint: expected keys such as {detect.REQUIRED_KEYS[2]}, "
        f"found {sample}{', ...' if len(state) > 3 else ''}"
    )


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Read a checkpoint file and build the network it holds."""
    return build_from_state_dict(read_state_dict(path), str(path))


# ---- built-in models -------------------------------------------------------------------------

@dataclass(frozen=True)
class Builtin:
    """A model that ships with hatstream, by name."""

    name: str
    description: str
    scales: tuple[int, ...] | None  # None: any scale
    weights: str | None = None  # file under WEIGHTS_DIR

    def available(self) -> bool:
        return self.weights is None or (WEIGHTS_DIR / self.weights).is_file()

    def card(self) -> dict:
        """The model card beside the weights, if any."""
        if self.weights is None:
            return {}
        card = WEIGHTS_DIR / (Path(self.weights).stem + ".json")
        return json.loads(card.read_text()) if card.is_file() else {}


BUILTINS: dict[str, Builtin] = {
    "bicubic": Builtin("bicubic", "bicubic interpolation, any scale, no weights", None),
    "hat-tiny-x2": Builtin("hat-tiny-x2", "small HAT trained here, x2", (2,), "hat-tiny-x2.safetensors"),
    "hat-tiny-x4": Builtin("hat-tiny-x4", "small HAT chain trained here, x4 (x2 twice)", (4,),
                           "hat-tiny-x4.safetensors"),
}
DEFAULT_SCALE = 2


def default_model_name(scale: int) -> str:
    """The bundled model for `scale`, or 'bicubic' where none ships."""
    for b in BUILTINS.values():
        if b.weights and b.scales and scale in b.scales and b.available():
            return b.name
    return "bicubic"


def load_builtin(name: str, scale: int | None) -> tuple[nn.Module, ModelInfo]:
    """Build a built-in model; `scale` picks the scale where the model allows several."""
    b = BUILTINS[name]
    if b.weights is None:
        s = scale or DEFAULT_SCALE
        # No bf16 for `auto`: interpolation gains nothing from it, and bf16's 8-bit mantissa would
        # round 10-bit video (steps of 1/1023) to about 1/256 near white.
        return Bicubic(s), ModelInfo(name="bicubic", arch="bicubic", scale=s, supports_fp16=True,
                                     supports_bf16=False, hyperparameters={"upscale": s})
    if not b.available():
        raise HatstreamError(f"built-in model {name} is not installed (missing {WEIGHTS_DIR / b.weights})")
    if scale is not None and b.scales and scale not in b.scales:
        raise HatstreamError(f"model {name} upscales x{b.scales[0]}, not x{scale}")
    model, info = load_checkpoint(WEIGHTS_DIR / b.weights)
    return model, replace(info, name=name, source="built-in")
