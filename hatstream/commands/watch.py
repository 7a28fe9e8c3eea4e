"""Placeholder: `hatstream watch` is being built."""

from __future__ import annotations

import argparse

from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs="*")


def run(args: argparse.Namespace) -> int:
    raise HatstreamError("'watch' is not implemented yet")
