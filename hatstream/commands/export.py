"""Export a HAT model as an ONNX graph for one input size (for vs-mlrt, chaiNNer, TensorRT, ...).

The graph is static: one batch and frame size, with the relative-position biases, shift masks and
folded reconstruction head baked in as constants. It takes float32 RGB in [0, 1], pads to the
window itself, and returns float32 RGB in [0, 1] at scale x the input size. Needs the `export`
extra (onnx, onnxscript; onnxruntime to run the result).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hatstream.commands.common import DTYPE_CHOICES, add_model_arguments, positive_int
from hatstream.errors import HatstreamError

log = logging.getLogger(__name__)

def parse_wxh(text: str) -> tuple[int, int]:
    """argparse type: 'WxH' -> (width, height), both at least 1."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH, e.g. 640x360") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be at least 1")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    # No "auto" precision, --device or --compile: an exported file is for another runtime, not this machine.
    add_model_arguments(p, device=False, compile=False, model_positional=True, precisions=DTYPE_CHOICES,
                        precision_default="fp32",
                        model="built-in model name (hat-tiny-x2, ...) or checkpoint path",
                        scale="the upscale factor MODEL must have (default: its own)",
                        precision="compute precision inside the graph, %(choices)s; input and output stay "
                                  "float32 (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--size", type=parse_wxh, required=True, metavar="WxH",
                   help="input frame size the graph is built for, e.g. 640x360 (any size; padded inside)")
    p.add_argument("--batch", type=positive_int, default=1, help="frames per call (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _check_exporter() -> None:
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise HatstreamError(f"ONNX export needs {' and '.join(missing)}: pip install 'hatstream[export]'")


def run(args: argparse.Namespace) -> int:
    from hatstream.atomic import atomic_output, check_output_path

    check_output_path(args.output, overwrite=args.overwrite)
    _check_exporter()

    import torch

    from hatstream.inference import load_network
    from hatstream.inference.precision import DTYPES
    from hatstream.models.export import export_onnx
    from hatstream.models.chain import HATChain
    from hatstream.models.hat import HAT

    model, info = load_network(args.model, args.scale)
    if not isinstance(model, (HAT, HATChain)):
        raise HatstreamError(f"only HAT models can be exported; {args.model} is {info.arch}")
    width, height = args.size
    with atomic_output(args.output, overwrite=args.overwrite) as tmp, torch.no_grad():
        export_onnx(model, tmp, width, height, batch=args.batch, dtype=DTYPES[args.precision])
    s = info.scale
    size_mb = args.output.stat().st_size / 1e6
    print(f"wrote {args.output}: {info.name} x{s}, {args.precision}, input {args.batch}x3x{height}x{width} -> "
          f"output {args.batch}x3x{height * s}x{width * s} (float32 RGB in [0, 1]), {size_mb:.1f} MB")
    return 0
