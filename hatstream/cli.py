"""The command line: `hatstream <command> ...`.

Each command lives in `hatstream/commands/<name>.py` and exposes `add_arguments(parser)` and
`run(args) -> int`. The list below is the registry: explicit, so nothing is found by import-time
scanning, and a command's heavy imports (torch, av, ray) happen only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hatstream import __version__
from hatstream.errors import HatstreamError, interrupt_on_sigterm, out_of_memory

# (command name, module under hatstream.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("run", "run", "upscale a video file"),
    ("image", "image", "upscale PNG/JPEG images"),
    ("preview", "preview", "a few frames upscaled beside the source and bicubic, as PNG or HTML"),
    ("watch", "watch", "watch a folder and upscale every video that lands in it"),
    ("bench", "bench", "measure each stage's throughput on a synthetic clip"),
    ("models", "models", "list the built-in models"),
    ("eval", "eval", "PSNR/SSIM of a model against bicubic on a folder of images"),
    ("eval-video", "eval_video", "PSNR/SSIM and error flicker of a model on a video clip, per frame and --temporal on"),
    ("train", "train", "train or fine-tune HAT (same-task pretraining, then fine-tuning)"),
    ("export", "export", "write a HAT model as an ONNX graph for one frame size"),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `hatstream: error: ...` line (exit 2), like every other."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"hatstream: error: {self.prog}: {message} (see --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """Build the argument parser; returns it and the command modules by name."""
    parser = _Parser(prog="hatstream", description="Video super-resolution with HAT.")
    parser.add_argument("--version", action="version", version=f"hatstream {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(f"hatstream.commands.{module_name}")
        p = sub.add_parser(name, help=help_text, description=getattr(module, "__doc__", None))
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hatstream` console script; returns the exit status."""
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="hatstream: %(levelname)s: %(message)s", stream=sys.stderr)
    interrupt_on_sigterm()
    try:
        return int(modules[args.command].run(args) or 0)
    except HatstreamError as exc:
        print(f"hatstream: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        why = out_of_memory(exc)
        if why is None:
            raise
        print(f"hatstream: error: {why} (a smaller frame, --tile, --batch or --size needs less)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hatstream: interrupted", file=sys.stderr)
        return 130
