"""Running models: `load_model` and the `Upscaler` it returns."""

from __future__ import annotations

from pathlib import Path

import torch

from hatstream.errors import HatstreamError
from hatstream.inference.backends import default_backend, graph_dtypes, resolve_backend
from hatstream.inference.precision import DTYPES, resolve_precision
from hatstream.inference.upscaler import Upscaler
from hatstream.models.registry import BUILTINS, default_model_name, load_builtin, load_checkpoint

__all__ = ["Upscaler", "load_model", "load_network", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or 'auto' picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HatstreamError("--device cuda was asked for, but no CUDA device is available")
    return device


def load_model(name_or_path: str | Path | None = None, device=None, precision: str = "auto",
               scale: int | None = None, compile: bool = False, backend: str | None = None) -> Upscaler:
    """Load a built-in model by name ('bicubic', 'hat-tiny-x2', ...) or a checkpoint by path.

    `name_or_path=None` or 'default' picks the bundled model for `scale` (x2 when unset).
    `scale` is checked against a checkpoint's own scale, and chooses the scale of `bicubic`.
    `compile=True` applies `torch.compile` (static shapes; CUDA graphs on a GPU).
    `backend`: torch, onnxruntime, openvino or auto (None: $HATSTREAM_BACKEND, else auto); see
    `hatstream.inference.backends`; `resolve_run` says which precision and backend auto picks.
    """
    dev = resolve_device(device)
    model, info = load_network(name_or_path, scale)
    dtype, _ = resolve_run(model, info, dev, precision, backend, compile)
    return Upscaler(model, info, dev, dtype, compile=compile, backend=backend)


def resolve_run(model, info, device: torch.device, precision: str = "auto", backend: str | None = None,
                compile: bool = False) -> tuple[torch.dtype, str]:
    """(dtype, backend) that `load_model` runs `model` with for these options (the default path
    when both are auto).

    Precision auto is bf16 where the device runs it natively (and the model allows it), else
    fp32. Backend auto then takes a graph runtime that runs that precision (OpenVINO does bf16),
    else torch: on a bf16 CPU without OpenVINO, torch in bf16 beats ONNX Runtime in fp32
    (benchmarks/RESULTS.md). A graph runtime named by --backend that runs only fp32 makes
    precision auto fp32.
    """
    # A backend that cannot run this is refused first, before any precision warning.
    resolve_backend(backend, model, device, DTYPES.get(precision, torch.float32), compile)
    dtype = resolve_precision(precision, device, info)
    named = backend or default_backend()
    if precision == "auto" and named not in ("auto", "torch") and dtype not in graph_dtypes(named):
        dtype = torch.float32
    return dtype, resolve_backend(backend, model, device, dtype, compile)


def load_network(name_or_path: str | Path | None = None, scale: int | None = None):
    """The (module, ModelInfo) that `load_model` wraps: on the CPU, fp32, not yet prepared."""
    name = str(name_or_path) if name_or_path is not None else "default"
    if name == "default":
        name = default_model_name(scale or 2)
    if name in BUILTINS:
        model, info = load_builtin(name, scale)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            known = ", ".join(BUILTINS)
            raise HatstreamError(f"model {name} is neither a file nor a built-in model ({known})")
        model, info = load_checkpoint(path)
        if scale is not None and scale != info.scale:
            raise HatstreamError(f"model {path} upscales x{info.scale}, but --scale {scale} was asked for")
    return model, info
