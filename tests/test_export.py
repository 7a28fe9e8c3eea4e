"""`hatstream export`: the ONNX graph runs in ONNX Runtime and gives hatstream's output."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_cli
from hat_cases import psnr, tiny_hat
from hatstream.atomic import partial_files
from hatstream.inference import Upscaler, load_network
from hatstream.models.export import INPUT_NAME, export_onnx

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export extra is not installed: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

# Ops whose output shape or values depend on the data: none may appear in a static graph.
DATA_DEPENDENT = {"Sort", "TopK", "NonZero", "Unique", "ArgMax", "ArgMin", "Loop", "If", "Scan", "Shape", "Size"}


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


@pytest.mark.slow  # one export: ~20-30 s of CPU
@pytest.mark.parametrize("scale, window, batch, height, width", [
    (2, 8, 1, 30, 44),    # padded on both sides
    (4, 16, 2, 21, 35),   # window 16, batch 2, padded
    (3, 8, 1, 24, 40),    # no padding
])
def test_onnx_runtime_matches_hatstream(tmp_path, scale, window, batch, height, width):
    model, info = tiny_hat(scale, window)
    want = Upscaler(copy.deepcopy(model), info, torch.device("cpu"), torch.float32)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, width, height, batch=batch)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & DATA_DEPENDENT, f"data-dependent ops in the graph: {ops & DATA_DEPENDENT}"
    # Static shapes: every input and output dimension is a number.
    for value in (*graph.graph.input, *graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), value
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(2))
    got = _run_onnx(path, x)
    assert got.shape == (batch, 3, scale * height, scale * width)
    assert psnr(got, want(x)) >= 50


@pytest.mark.slow  # one export: ~20-30 s of CPU
def test_fp16_export_uses_the_rescaled_trunk(tmp_path):
    # A trunk far past fp16's range (65504): without the rescaling the graph would give inf/NaN.
    from hatstream.models.hat_rescale import rescale_trunk

    model, info = tiny_hat(2, 8)
    rescale_trunk(model, 2.0**18)
    want = Upscaler(copy.deepcopy(model), info, torch.device("cpu"), torch.float32)
    path = tmp_path / "fp16.onnx"
    export_onnx(model, path, 32, 24, dtype=torch.float16)
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    got = _run_onnx(path, x)
    assert torch.isfinite(got).all()
    assert psnr(got, want(x)) >= 40  # fp16 rounding, not overflow (which gives single digits)


@pytest.mark.slow  # one export: ~20-30 s of CPU
def test_bf16_export_computes_in_bf16_with_the_fp32_parts_kept(tmp_path):
    # ONNX Runtime's CPU provider has no bf16 kernels (TensorRT runs it), so check the graph itself.
    model, _ = tiny_hat(2, 8)
    path = tmp_path / "bf16.onnx"
    export_onnx(model, path, 16, 16, dtype=torch.bfloat16)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    types = {t.name: t.data_type for t in graph.graph.initializer}
    bf16, fp32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    assert any("qkv" in name and t == bf16 for name, t in types.items())  # the branches: bf16
    assert any("norm" in name and t == fp32 for name, t in types.items())  # the LayerNorms: fp32
    assert graph.graph.input[0].type.tensor_type.elem_type == fp32
    assert graph.graph.output[0].type.tensor_type.elem_type == fp32


@pytest.mark.slow  # one export: ~20-30 s of CPU
def test_cli_exports_the_bundled_model(tmp_path):
    out = tmp_path / "tiny.onnx"
    r = run_cli("export", "hat-tiny-x2", "-o", out, "--size", "40x26")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and r.stderr == ""
    assert not partial_files(out)
    model, info = load_network("hat-tiny-x2")
    want = Upscaler(model, info, torch.device("cpu"), torch.float32)
    x = torch.rand(1, 3, 26, 40, generator=torch.Generator().manual_seed(4))
    assert psnr(_run_onnx(out, x), want(x)) >= 50
    # The output exists now: without --overwrite it is refused, before any work.
    r = run_cli("export", "hat-tiny-x2", "-o", out, "--size", "40x26")
    assert r.returncode == 2 and r.stderr.startswith("hatstream: error:") and "exists" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["hat-tiny-x2", "--size", "40"], "is not WxH"),
    (["hat-tiny-x2", "--size", "0x20"], "at least 1"),
    (["hat-tiny-x2", "--size", "40x20", "--batch", "0"], "at least 1"),
    (["bicubic", "--size", "40x20"], "only HAT models"),
    (["no-such-model", "--size", "40x20"], "neither a file nor a built-in"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    out = tmp_path / "bad.onnx"
    r = run_cli("export", *args, "-o", out)
    assert r.returncode == 2
    assert r.stderr.startswith("hatstream: error:") and r.stderr.count("\n") == 1 and message in r.stderr
    assert not out.exists() and not partial_files(out)


def _address_space_16_gib():
    # Out of memory on any machine: a 16 GiB address space, far below the frame's first tensor.
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def test_a_size_too_large_for_memory_is_one_line_and_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "folder" / "huge.onnx"
    r = run_cli("export", "hat-tiny-x2", "-o", out, "--size", "100000x100000", preexec_fn=_address_space_16_gib)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("hatstream: error: out of memory: an allocation of ") and r.stderr.count("\n") == 1
    assert "GiB failed" in r.stderr
    assert list(tmp_path.iterdir()) == []  # the folders made for the output went with the failed write
