"""Argument types and option groups that several commands share."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hatstream.atomic import atomic_output
from hatstream.errors import HatstreamError


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def nonnegative_seconds(text: str) -> float:
    """argparse type: a duration in seconds, 0 or more."""
    value = _number_of_seconds(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, more than 0 (an interval between polls)."""
    value = _number_of_seconds(text)
    if not 0 < value < float("inf"):  # also refuses NaN
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def check_output_file(path: Path, option: str) -> Path:
    """Refuse, before any work, a file path for `option` that cannot be written: its folder is
    missing or not a folder, or the path is a folder. An existing file is replaced."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise HatstreamError(f"{option} {path} is a folder, expected a file path")
    if not parent.is_dir():
        raise HatstreamError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HatstreamError(f"{option} {path}: folder {parent} is not writable")
    return path


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_file(path: Path, obj, indent: int = 1) -> None:
    """Write `obj` as strict JSON, atomically. JSON has no NaN or Infinity (Python's json module
    writes them anyway, and other readers then fail), so non-finite numbers become null: an
    infinite PSNR (identical images) or a rate over no measurable time."""
    text = json.dumps(_finite(obj), indent=indent, allow_nan=False)
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text + "\n")


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (checked here, so a typo is a usage error)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    return text


class LazyChoices(Sequence):
    """The names in `module.attr` (a tuple, or a dict's keys), read when argparse first needs them.

    The modules that define these lists import torch or av, which takes seconds; argparse only
    reads `choices` to check a value that was given or to print help, so building the parser
    stays light. Options using it need an explicit `metavar`: argparse would otherwise read the
    names at `add_argument` time to build one.
    """

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr
        self._names: tuple[str, ...] | None = None

    def _load(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(getattr(importlib.import_module(self.module), self.attr))
        return self._names

    def __getitem__(self, i):
        return self._load()[i]

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, value) -> bool:
        return value in self._load()


PRECISION_CHOICES = LazyChoices("hatstream.inference.precision", "PRECISIONS")
DTYPE_CHOICES = LazyChoices("hatstream.inference.precision", "DTYPES")  # the precisions but auto
ON_ERROR_CHOICES = LazyChoices("hatstream.media.decode", "ON_ERROR")
TRAIN_PRESET_CHOICES = LazyChoices("hatstream.train.config", "TRAIN_PRESETS")
BACKEND_CHOICES = LazyChoices("hatstream.inference.backends", "BACKENDS")

_MODEL_HELP = {
    "model": "built-in model name or checkpoint path (default: the bundled model for --scale)",
    "scale": "upscale factor (default: the model's; x2 for the default model)",
    "precision": "compute precision: %(choices)s (default: %(default)s)",
    "device": "torch device: auto, cpu, cuda or cuda:N (default: CUDA when present)",
    "compile": "torch.compile the model (slow start, faster frames)",
    "backend": "what runs the network: %(choices)s (default: auto, the fastest installed graph runtime that "
               "runs a HAT on the CPU in the chosen precision: OpenVINO in fp32, or in bf16 where the CPU has "
               "it; else torch. A graph is exported once per frame size and cached)",
}


def add_model_arguments(p: argparse.ArgumentParser, device: bool = True, compile: bool = True,
                        model_positional: bool = False, precisions: Sequence[str] = PRECISION_CHOICES,
                        precision_default: str = "auto", **help_text: str) -> None:
    """--model, --scale, --precision, --device, --compile, --backend: which model runs, and how.

    One set of types, checks and defaults for every command that loads a model; a caller passes
    only what differs: help text (keyword = option name), `device=False` where
    add_engine_arguments adds --device already, `compile=False` where the model runs too little
    for compiling to pay, `model_positional` for a required MODEL argument (export), and a
    narrower precision list with its default.
    """
    unknown = set(help_text) - set(_MODEL_HELP)
    if unknown:
        raise TypeError(f"no model option named {', '.join(sorted(unknown))}")
    h = dict(_MODEL_HELP, **help_text)
    if model_positional:
        p.add_argument("model", metavar="MODEL", help=h["model"])
    else:
        p.add_argument("--model", help=h["model"])
    p.add_argument("--scale", type=positive_int, help=h["scale"])
    p.add_argument("--precision", default=precision_default, choices=precisions, metavar="NAME",
                   help=h["precision"])
    if device:
        p.add_argument("--device", type=device_name, help=h["device"])
    if compile:
        p.add_argument("--compile", action="store_true", help=h["compile"])
        # With --compile: a graph export pays off where compiling does. Default None:
        # $HATSTREAM_BACKEND, else auto (hatstream.inference.backends.default_backend).
        p.add_argument("--backend", choices=BACKEND_CHOICES, metavar="NAME", help=h["backend"])


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --engine, --address, --workers: where the model runs (run and watch)."""
    p.add_argument("--device", type=device_name, help=_MODEL_HELP["device"])
    p.add_argument("--engine", default="auto", choices=("auto", "local", "ray"),
                   help="local threads, or Ray actors (default: local, Ray only with --address or several GPUs)")
    p.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 "
                                     "(default with --engine ray: an embedded single-machine Ray)")
    p.add_argument("--workers", type=positive_int, help="Ray actors (default: one per GPU, or one on the CPU)")


PROGRESS_SECONDS = 30.0  # where no bar can be drawn: the longest silence between progress lines


def stderr_is_terminal() -> bool:
    """Whether a progress bar can be drawn: on a log file, systemd or CI its redraws are noise."""
    return sys.stderr.isatty()


class Throttle:
    """`due()` is True at most once every `seconds` (or when forced): the cadence of plain progress lines."""

    def __init__(self, seconds: float = PROGRESS_SECONDS):
        self.seconds = seconds
        self.last = time.monotonic()

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.seconds:
            self.last = now
            return True
        return False
