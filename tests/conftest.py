"""Shared test helpers: the reference data in tests/data, and running the CLI as a real subprocess."""

from __future__ import annotations

import functools
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Ray, left to itself on Linux, takes this machine's interface address as every node's address (and
# turns 127.0.0.1 given as one into it), so its processes would talk to each other through that
# interface. Tests send traffic to loopback only: this switch (Ray's own, meant for macOS and
# Windows) makes it keep loopback. Set before anything imports ray; CLI subprocesses inherit it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The suite checks the torch path (the reference); `auto` would export a graph per model and frame
# size (seconds each) wherever a runtime is installed. tests/test_backend.py tests the runtimes and
# `auto` explicitly. CLI subprocesses inherit it.
os.environ.setdefault("HATSTREAM_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# ../shared exists on the project's own machines only; tests may use it as an extra, never need it.
SHARED = Path(os.environ.get("HATSTREAM_SHARED", ROOT / ".." / "shared")).resolve()


def shared_path_or_skip(*parts: str) -> Path:
    """A file under ../shared for an optional cross-check: skipped (not failed) where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"optional cross-check: {path} is not here (a clone has no ../shared)")
    return path


@functools.lru_cache(maxsize=None)
def released_layouts() -> dict:
    """Every tensor name/shape/dtype, config and parameter count of each released HAT checkpoint."""
    return json.loads(lzma.decompress((DATA / "released_layouts.json.xz").read_bytes()))


@functools.lru_cache(maxsize=None)
def metric_cases() -> tuple[dict, ...]:
    """BasicSR's reference downscales and scores (tests/data/make_golden.py), each with its arrays:
    `hr` (uint8 RGB crop of a scikit-image photo), `lr_float`, `lr` and `sr` (the scored image)."""
    import hashlib

    import cv2
    import numpy as np
    import skimage.data

    arrays = np.load(DATA / "metrics.npz")
    cases = []
    for case in json.loads((DATA / "metrics.json").read_text()):
        name = case["case"]
        top, left, h, w = case["box"]
        hr = np.ascontiguousarray(getattr(skimage.data, case["photo"])()[top:top + h, left:left + w])
        assert hashlib.sha256(hr.tobytes()).hexdigest() == case["hr_sha256"], f"scikit-image's {case['photo']} changed"
        lr = arrays[f"{name}/lr"]
        sr = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
        sr[tuple(arrays[f"{name}/sr_fix_index"])] = arrays[f"{name}/sr_fix_value"]
        lr_float = (lr + arrays[f"{name}/lr_residual"] / 50.0) / 255.0
        cases.append({**case, "hr": hr, "lr": lr, "lr_float": lr_float, "sr": sr})
    return tuple(cases)


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


def processes_marked(mark: str, tag: str) -> list[int]:
    """Pids of the processes (this one aside) whose environment has `mark=tag`: the Ray processes a test
    started after setting that variable, which inherit it, and no one else's."""
    needle = f"{mark}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
