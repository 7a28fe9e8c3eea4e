"""The upscaler: pads to the model's window, runs it in the chosen precision, crops and clamps."""

from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from hatstream.errors import HatstreamError
from hatstream.inference.backends import GraphForward, default_backend, resolve_backend
from hatstream.inference.heap import keep_freed_memory
from hatstream.inference.tiling import upscale_tiled
from hatstream.models.registry import prepare_for_inference
from hatstream.models.spec import ModelInfo

log = logging.getLogger(__name__)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad the right and bottom edges of (B, C, H, W) up to a multiple; returns (x, pad_h, pad_w).

    Reflection, as the official test wrapper does. Reflection needs the pad to be smaller than
    the side, so tiny inputs fall back to replicating the edge instead of failing.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw


STRICT_ATTENTION_ENV = "HATSTREAM_STRICT_ATTENTION"


def strict_attention_requested() -> bool:
    """The debug switch: HATSTREAM_STRICT_ATTENTION=1 makes a fallback to the math kernel fail."""
    return os.environ.get(STRICT_ATTENTION_ENV, "") not in ("", "0")


def fused_attention_only():
    """A context in which scaled_dot_product_attention raises instead of using its math kernel.

    The fallback is silent and several times slower (a 3-D mask, a strided head dim, or a head dim
    that is not a multiple of 8 on the GPU all cause it), so benchmarks and debugging turn this on.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


# How a failed allocation reads once it reaches Python, by where it failed.
_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",  # CUDA's caching allocator and CUDA kernels
    "can't allocate memory",  # torch's DefaultCPUAllocator
    "cannot allocate memory",  # strerror(ENOMEM), e.g. from a failed mmap
    "could not create a primitive",  # oneDNN: its scratchpad or workspace allocation failed
    "std::bad_alloc",  # a C++ new inside an operator
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation on the GPU or the CPU.

    On the CPU, under a memory limit (ulimit -v, a container), the failure surfaces as a
    RuntimeError from torch's allocator or from oneDNN, or as Python's MemoryError.
    """
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _OUT_OF_MEMORY_MESSAGES)


class TilesTooSmall(HatstreamError, torch.OutOfMemoryError):
    """Out of memory even at the smallest tile: a one-line error for the CLI, and still an
    OutOfMemoryError for callers that catch that."""


def minimum_tile(window_multiple: int, overlap: int) -> int:
    """The smallest tile side the fallback uses: twice the overlap, so that the step between
    tiles stays at least half a tile, rounded up to the model's window multiple. Below it the
    tile count grows without bound (at a step of 1 pixel, a 1280-wide frame is 860k tiles)."""
    return -(-2 * overlap // window_multiple) * window_multiple


class Upscaler:
    """A loaded model ready to run: `upscaler(x)` maps (B,3,H,W) in [0,1] to (B,3,sH,sW) in [0,1].

    Attributes: `scale`, `info` (ModelInfo: architecture name and hyperparameters), `device`,
    `dtype` (the compute dtype), `model` (the torch module; `compile=True` runs it through
    `torch.compile` with static shapes), `backend` (torch, onnxruntime or openvino: see
    `hatstream.inference.backends`), and `tile`: None to run whole frames
    (the default, and the reference), or the tile side in input pixels. When a whole frame runs
    out of memory, the upscaler halves the tile until it fits and warns once.

    The upscaler takes the module over: its architecture's entry in `models.registry` converts it
    in place (device and dtype, and for HAT the fp16 trunk rescaling, GPU head padding, folded
    head and channels-last weights), so pass a copy to keep the original.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                 tile: int | None = None, tile_overlap: int | None = None, compile: bool = False,
                 backend: str | None = None):
        keep_freed_memory()  # frame-sized activations would otherwise page-fault on every frame
        self.info = info
        self.scale = info.scale
        self.device = device
        self.dtype = dtype
        # `backend` (None: $HATSTREAM_BACKEND or auto): a graph runtime takes the padded frames
        # instead of the module (inference/backends.py), in `dtype`; the module, prepared in fp32,
        # stays its reference.
        self.backend = resolve_backend(backend, model, device, dtype, compile)
        graph = self.backend != "torch"
        prepared = prepare_for_inference(model, info, device, torch.float32 if graph else dtype)
        self.model = prepared.model
        self.input_dtype = prepared.input_dtype  # what the model is fed
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.strict_attention = strict_attention_requested()
        self.forward = self.model
        if compile:
            # Static shapes: a video has one frame size, so each (batch, size) compiles once. On a
            # GPU, "reduce-overhead" also captures CUDA graphs, removing per-kernel launch costs.
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.forward = torch.compile(self.model, dynamic=False, mode=mode)
        if graph:
            self.forward = GraphForward(self.model, self.backend, strict=(backend or default_backend()) != "auto",
                                        dtype=dtype)
        self.tile = tile
        # At least two windows of context on each side of a seam.
        self.tile_overlap = tile_overlap if tile_overlap is not None else max(2 * info.window_multiple, 16)
        self._warned = False

    def __repr__(self) -> str:
        return f"Upscaler({self.info.describe()}, device={self.device}, dtype={self.dtype}, backend={self.backend})"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, run and crop one piece; unclamped, in the compute dtype."""
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.info.window_multiple)
        with fused_attention_only() if self.strict_attention else contextlib.nullcontext():
            y = self.forward(x)
        return y[..., : h * self.scale, : w * self.scale]

    def _run_fitting(self, x: torch.Tensor) -> torch.Tensor:
        """Run whole, or tiled once memory has run out, shrinking the tile on every new failure.

        The tile halves down to `minimum_tile`, and is tried there once; if that fails too, the
        run stops with TilesTooSmall instead of crawling through ever more, ever smaller tiles.
        """
        minimum = minimum_tile(self.info.window_multiple, self.tile_overlap)
        while True:
            try:
                if self.tile is None or self.tile >= max(x.shape[-2:]):
                    return self._run(x)
                return upscale_tiled(self._run, x, self.scale, self.tile, self.tile_overlap)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                side = min(self.tile or max(x.shape[-2:]), max(x.shape[-2:]))
                if side <= minimum:
                    raise TilesTooSmall(
                        f"out of memory on a {x.shape[-1]}x{x.shape[-2]} frame even in {side} px tiles with "
                        f"{self.tile_overlap} px overlap (the smallest this model's tiles go); free memory on "
                        f"{self.device}, or use a smaller --batch or a lighter model") from exc
                new = max((side // 2) // self.info.window_multiple * self.info.window_multiple, minimum)
                self.tile = new
                if not self._warned:
                    log.warning("out of memory on a whole %dx%d frame; continuing in %d px tiles with %d px "
                                "overlap (tiles change HAT's output slightly)", x.shape[-1], x.shape[-2],
                                new, self.tile_overlap)
                    self._warned = True

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale a float batch in [0, 1]; the result has x's float dtype and the upscaler's device."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        x = x.to(device=self.device, dtype=self.input_dtype, non_blocking=True)
        return self._run_fitting(x).clamp_(0, 1).to(out_dtype)
