"""Shared test helpers: where the shared fixtures live, and running the CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HATSTREAM_SHARED", ROOT / ".." / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """A file under ../shared; missing fixtures fail the test loudly instead of skipping it."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared fixture {path} is missing (set HATSTREAM_SHARED to the shared/ folder)")
    return path


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m hatstream ARGS` in a subprocess and capture its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hatstream", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kwargs.pop("cwd", ROOT), **kwargs)


def pytest_collection_modifyitems(config, items):
    # GPU-only tests run wherever CUDA is, and skip (visibly) everywhere else.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Two cores are shared by the test process and the subprocesses it starts.
    torch.set_num_threads(2)
