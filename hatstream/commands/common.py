"""Argument types and option groups that several commands share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    """argparse type: a duration in seconds, 0 or more."""
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --engine, --address, --workers: where the model runs (run and watch)."""
    p.add_argument("--device", help="torch device, e.g. cuda or cpu (default: CUDA when present)")
    p.add_argument("--engine", default="auto", choices=("auto", "local", "ray"),
                   help="local threads, or Ray actors (default: local, Ray only with --address or several GPUs)")
    p.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 "
                                     "(default with --engine ray: an embedded single-machine Ray)")
    p.add_argument("--workers", type=positive_int, help="Ray actors (default: one per GPU, or one on the CPU)")
