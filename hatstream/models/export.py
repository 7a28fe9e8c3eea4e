"""HAT as a static graph for one input size: the module that ONNX export traces, and the export.

The eager HAT builds its window gathers and shift masks once per input size and caches them
(`HAT.window_plans`, `HAT.shift_masks`). For a fixed size those caches are warmed before tracing,
so they enter the graph as constants: the graph has no argsort, no bincount, nothing that depends
on data, and only static shapes. TensorRT and the other runtimes that vs-mlrt drives need that.
The relative-position biases are `Gather(table, constant index)` (+ the constant mask): constant
subgraphs that the runtimes fold when they load the model, so the file keeps the small tables
instead of one (heads, n, n) bias per block. The folded reconstruction head is a constant kernel.

`StaticHAT` also does what the upscaler does around the network, so that the exported model is
usable as it is: pad to the window (reflect, as the reference's test wrapper does), run, crop to
scale × the input, clamp to [0, 1]. Input and output are float32 whatever the compute precision,
so one VapourSynth script (RGBS clips) runs every export of a model. A chain of HATs
(`models.chain`) exports as one graph: each pass is prepared and warmed as a single HAT at the
size it sees.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hatstream.models.chain import HATChain, hat_passes, input_multiple
from hatstream.models.hat import HAT, keep_sensitive_parts_fp32
from hatstream.models.hat_head import fold_head
from hatstream.models.hat_rescale import make_fp16_safe

log = logging.getLogger(__name__)

# 18: the oldest opset torch's exporter writes (17 fails to convert Pad), and old enough for the
# runtimes people have (vs-mlrt's ONNX Runtime and TensorRT builds, chaiNNer).
DEFAULT_OPSET = 18
BF16_OPSET = 22  # the first opset whose Conv takes bfloat16
INPUT_NAME, OUTPUT_NAME = "input", "output"


def padded_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple`."""
    return -(-size // multiple) * multiple


class StaticHAT(nn.Module):
    """A HAT (or a chain of HATs) prepared for one (batch, 3, height, width) float32 input: pads,
    runs, crops, clamps.

    Building it converts `model` in place for inference in `dtype` (fp16: the trunk rescaling of
    `--precision fp16`; every precision: the folded reconstruction head) and warms every per-size
    cache, so tracing it sees constants only. bf16 keeps the upscaler's fp32 parts (trunk, LayerNorms,
    both ends). The output is the upscaler's, (B, 3, sH, sW) in [0, 1]; `clamp=False` leaves it
    unclamped, as the network's own (the upscaler blends tiles before it clamps).
    """

    def __init__(self, model: HAT | HATChain, batch: int, height: int, width: int,
                 dtype: torch.dtype = torch.float32, clamp: bool = True):
        super().__init__()
        self.clamp = clamp
        if not isinstance(model, (HAT, HATChain)):
            raise TypeError(f"only HAT models export to a static graph, not {type(model).__name__}")
        multiple = input_multiple(hat_passes(model))
        self.size = (height, width)
        self.pad = (padded_size(height, multiple) - height, padded_size(width, multiple) - width)  # (bottom, right)
        # Reflection needs the pad to be smaller than the side (as in the upscaler).
        self.pad_mode = "reflect" if self.pad[0] < height and self.pad[1] < width else "replicate"
        self.scale = model.upscale
        self.dtype = dtype
        model = model.float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        size = (height + self.pad[0], width + self.pad[1])
        for net in hat_passes(model):  # a chain: each pass as a single HAT, at the size it sees
            if dtype == torch.float16:
                make_fp16_safe(net)
            fold_head(net)
            net.to(dtype)
            if dtype == torch.bfloat16:
                keep_sensitive_parts_fp32(net)  # as the upscaler does: trunk, LayerNorms, both ends
            warm_caches(net, batch, *size)
            size = (size[0] * net.upscale, size[1] * net.upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1] -> (B, 3, sH, sW) float32 in [0, 1]."""
        h, w = self.size
        ph, pw = self.pad
        y = x  # HAT.forward casts it to its first conv's dtype
        if ph or pw:
            y = F.pad(y, (0, pw, 0, ph), mode=self.pad_mode)  # (B, 3, Hp, Wp)
        y = self.model(y)[..., : h * self.scale, : w * self.scale]  # (B, 3, sH, sW)
        return (y.clamp(0, 1) if self.clamp else y).to(torch.float32)


@torch.no_grad()
def warm_caches(model: HAT, batch: int, height: int, width: int) -> None:
    """Build the window plans and shift masks for a (batch, ·, height, width) padded input, as the
    first forward at that size would, so that tracing finds them cached.

    The biases are not cached for export (see `_CachedBias.get`): the graph gathers them from each
    block's table by the shared constant index, which runtimes fold into constants at load time.
    """
    device = model.relative_position_index_SA.device
    model.shift_masks(device)
    model.window_plans(batch, height, width, device)


EXPORTERS = ("dynamo", "torchscript")


@contextlib.contextmanager
def _plans_pinned(model: HAT | HATChain, batch: int, height: int, width: int):
    """Make each pass's `window_plans` return the warmed plans for its size, whatever its arguments.

    The TorchScript tracer hands the model traced sizes, which miss the cache's integer keys, so
    the plans would be rebuilt inside the trace (argsort and bincount, which it cannot export).
    The size is fixed for the whole trace, so the pinned plans are the right ones.
    """
    nets = hat_passes(model)
    for net in nets:
        plans = net.window_plans(batch, height, width, net.relative_position_index_SA.device)
        net.window_plans = lambda *args, plans=plans: plans  # an instance attribute hides the method
        height, width = height * net.upscale, width * net.upscale
    # The tracer would also take each block's cached (nH, n, n) bias as a constant: 160 MB for
    # HAT-S at window 16. Gathered from the table in the graph (as the dynamo export does), the
    # runtimes fold them at load time and the file keeps the tables.
    caches = [(m, m._bias) for m in model.modules() if hasattr(m, "_bias")]
    for m, _ in caches:
        m._bias = _Uncached()
    try:
        yield
    finally:
        for net in nets:
            del net.window_plans
        for m, cache in caches:
            m._bias = cache


class _Uncached:
    """`_CachedBias`'s interface without the cache: the bias is built inside the trace."""

    def get(self, table: torch.Tensor, build, dtype: torch.dtype) -> torch.Tensor:
        return build().to(dtype)


def export_onnx(model: HAT | HATChain, path: str | Path, width: int, height: int, batch: int = 1,
                dtype: torch.dtype = torch.float32, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo", clamp: bool = True) -> StaticHAT:
    """Write `model` as an ONNX graph for (batch, 3, height, width) float32 inputs to `path`.

    The weights are stored inside the one file (no external data), so it can be moved and renamed.
    bf16 graphs use at least opset 22: before it, Conv has no bfloat16 type.
    `exporter`: "dynamo" (torch.export, what `hatstream export` writes) or "torchscript" (the
    tracer: the same graph in about a quarter of the CPU time, which is what the runtime
    backends use, since they export once per frame size while the user waits).
    `clamp=False`: the output is not clamped to [0, 1] (see `StaticHAT`).
    Returns the traced `StaticHAT` (the eager twin of the graph, e.g. to compare outputs).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    if dtype == torch.bfloat16:
        opset = max(opset, BF16_OPSET)
    static = StaticHAT(model, batch, height, width, dtype, clamp=clamp)
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    padded = (batch, height + static.pad[0], width + static.pad[1])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The exporter warns about lifted tensor constants (baking them in is the point here)
            # and logs every optional op it cannot register (torchvision's).
            warnings.simplefilter("ignore")
            exporter_log.setLevel(logging.ERROR)
            if exporter == "dynamo":
                program = torch.onnx.export(static, (x,), dynamo=True, opset_version=opset, external_data=False,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
                program.save(str(path), external_data=False)
            else:
                with _plans_pinned(static.model, *padded):
                    # No constant folding: it would bake every block's gathered bias into the file
                    # (160 MB for HAT-S); the runtimes fold them when they load the graph.
                    torch.onnx.export(static, (x,), str(path), dynamo=False, opset_version=opset,
                                      do_constant_folding=False, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], verbose=False)
    finally:
        exporter_log.setLevel(level)
    log.info("exported %s: %dx%d, batch %d, %s, opset %d (%s)", path, width, height, batch, dtype, opset, exporter)
    return static
