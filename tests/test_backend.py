"""--backend: the exported graph in ONNX Runtime / OpenVINO gives torch's output, per frame size and tile."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_cli
from hat_cases import psnr, tiny_hat
from hatstream.errors import HatstreamError
from hatstream.inference import Upscaler
from hatstream.inference.backends import GRAPH_BACKENDS, backend_installed, resolve_backend

CPU = torch.device("cpu")


def _runtime_or_skip(backend: str) -> None:
    pytest.importorskip("onnx", reason="the exporter's onnx package is not installed: pip install -e '.[export]'")
    pytest.importorskip(backend, reason=f"{backend} is not installed")


@pytest.mark.slow  # two exports of a tiny model: ~10 s of CPU
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_graph_backend_matches_torch_per_size_and_tile(tmp_path, monkeypatch, backend):
    _runtime_or_skip(backend)
    monkeypatch.setenv("HATSTREAM_CACHE_DIR", str(tmp_path))
    model, info = tiny_hat()
    want = Upscaler(copy.deepcopy(model), info, CPU, torch.float32, backend="torch")
    got = Upscaler(copy.deepcopy(model), info, CPU, torch.float32, backend=backend)
    assert got.backend == backend
    # Batch 2 (run frame by frame through one graph), a size that pads to 24x32.
    x = torch.rand(2, 3, 21, 30, generator=torch.Generator().manual_seed(0))
    assert psnr(got(x), want(x)) >= 50
    graphs = sorted(p.name for p in (tmp_path / "graphs").glob("*.onnx"))
    assert len(graphs) == 1 and "-32x24-" in graphs[0], graphs
    assert len(list((tmp_path / "graphs").glob("*.checked.json"))) == 1

    # Another size that pads to the same 24x32 takes the same graph; tiles of 16 px add one graph.
    x2 = torch.rand(1, 3, 24, 27, generator=torch.Generator().manual_seed(1))
    assert psnr(got(x2), want(x2)) >= 50
    assert len(list((tmp_path / "graphs").glob("*.onnx"))) == 1
    got.tile = want.tile = 16
    got.tile_overlap = want.tile_overlap = 8
    assert psnr(got(x), want(x)) >= 50
    assert len(list((tmp_path / "graphs").glob("*.onnx"))) == 2

    # A second process (here: a fresh upscaler) reads the cached graph instead of exporting.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "graphs").iterdir()}
    want.tile = None
    again = Upscaler(copy.deepcopy(model), info, CPU, torch.float32, backend=backend)
    assert psnr(again(x2), want(x2)) >= 50
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "graphs").iterdir()} == before


def test_auto_takes_a_graph_runtime_only_where_one_applies(monkeypatch):
    model, _ = tiny_hat()
    installed = [b for b in GRAPH_BACKENDS if backend_installed(b)]
    assert resolve_backend("auto", model, CPU, torch.float32) == (installed[0] if installed else "torch")
    # Everything a graph cannot honour stays in torch: another precision, a GPU, torch.compile, a non-HAT.
    assert resolve_backend("auto", model, CPU, torch.bfloat16) == "torch"
    assert resolve_backend("auto", model, torch.device("cuda"), torch.float32) == "torch"
    assert resolve_backend("auto", model, CPU, torch.float32, compile=True) == "torch"
    assert resolve_backend("auto", torch.nn.Identity(), CPU, torch.float32) == "torch"
    # No backend given: the environment's, else auto.
    monkeypatch.setenv("HATSTREAM_BACKEND", "torch")
    assert resolve_backend(None, model, CPU, torch.float32) == "torch"
    monkeypatch.delenv("HATSTREAM_BACKEND")
    assert resolve_backend(None, model, CPU, torch.float32) == resolve_backend("auto", model, CPU, torch.float32)


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": torch.bfloat16}, "runs fp32 graphs"),
    ({"device": torch.device("cuda")}, "runs on the CPU"),
    ({"compile": True}, "--compile is for --backend torch"),
])
def test_named_backend_that_cannot_apply_is_an_error(kwargs, message):
    model, _ = tiny_hat()
    args = {"device": CPU, "dtype": torch.float32, **kwargs}
    with pytest.raises(HatstreamError, match=message):
        resolve_backend("onnxruntime", model, args["device"], args["dtype"], compile=kwargs.get("compile", False))


def _one_line_error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hatstream: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_backend_errors_are_one_line(tmp_path):
    out = tmp_path / "out.png"
    line = _one_line_error(run_cli("image", "in.png", "-o", out, "--backend", "tensorrt"))
    assert "--backend" in line and "invalid choice" in line
    src = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (12, 10), (120, 30, 200)).save(src)
    line = _one_line_error(run_cli("image", src, "-o", out, "--model", "bicubic", "--backend", "onnxruntime"))
    assert "runs HAT models only" in line
    assert not out.exists()


def test_missing_runtime_is_a_one_line_error(monkeypatch):
    """Where no runtime is installed (as a fresh install without the extras), a named backend is
    refused in one line and auto runs torch."""
    from hatstream.inference import backends

    monkeypatch.setattr(backends, "backend_installed", lambda name: name == "torch")
    model, _ = tiny_hat()
    for name in GRAPH_BACKENDS:
        with pytest.raises(HatstreamError, match=f"--backend {name} needs onnx {name} installed") as info:
            resolve_backend(name, model, CPU, torch.float32)
        assert "\n" not in str(info.value)
    assert resolve_backend("auto", model, CPU, torch.float32) == "torch"
