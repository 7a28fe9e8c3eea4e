"""`hatstream bench` and the FLOP count it reports."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import released_layouts, run_cli
from hatstream.models.flops import hat_macs
from hatstream.models.hat import HAT, HATConfig


def test_mac_count_matches_published_hat_costs():
    layouts = released_layouts()
    # Published multiply-adds per input pixel (millions): HAT-S x4 13.3, HAT x4 25.4, HAT-L x4 49.6.
    for name, expected in (("HAT-S_SRx4", 13.33), ("HAT_SRx4", 25.36), ("HAT-L_SRx4", 49.56)):
        per_px = hat_macs(HATConfig(**layouts[name]["config"]), 64, 64) / 4096 / 1e6
        assert abs(per_px - expected) < 0.02, (name, per_px)


def test_bench_reports_every_stage_and_tflops(tmp_path):
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"params_ema": model.state_dict()}, ckpt)
    out = tmp_path / "bench.json"
    res = run_cli("bench", "--model", ckpt, "--size", "64x48", "--frames", "2", "--json-out", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert [s["name"] for s in data["stages"]] == ["decode", "upload", "model", "download", "encode"]
    assert all(s["fps"] > 0 for s in data["stages"])
    assert data["tflops"] > 0 and data["width"] == 64 and data["scale"] == 2
    assert "TFLOP/s" in res.stdout


def test_bench_rejects_a_bad_size():
    res = run_cli("bench", "--model", "bicubic", "--size", "huge")
    assert res.returncode == 2 and res.stderr.startswith("hatstream: error: ")


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_bench_batches_time_what_was_run(tmp_path):
    from hatstream.inference import Upscaler
    from hatstream.models.bicubic import Bicubic
    from hatstream.models.spec import ModelInfo
    from hatstream.pipeline.bench import run_bench

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.batches = Bicubic(2), []

        def forward(self, x):
            self.batches.append(x.shape[0])
            return self.inner(x)

    model = Counting()
    up = Upscaler(model, ModelInfo(name="bicubic", arch="bicubic", scale=2), torch.device("cpu"), torch.float32)
    result = run_bench(up, 32, 16, frames=3, batch=2)
    assert model.batches == [2, 2, 1]  # one whole warm-up batch, then the 3 timed frames
    stages = {s.name: s for s in result.stages}
    assert stages["model"].frames == stages["upload"].frames == 3 and stages["decode"].frames == 5
    _strict_json(json.dumps(result.to_json()))


def test_bench_refuses_what_it_cannot_time_or_write(tmp_path):
    cases = [["--frames", "2", "--batch", "4"], ["--json-out", tmp_path / "missing" / "b.json"],
             ["--size", "20000x20000"], ["--size", "8192x4096", "--scale", "4"]]
    for extra in cases:
        res = run_cli("bench", "--model", "bicubic", "--size", "32x16", *extra, cwd=tmp_path, timeout=120)
        assert res.returncode == 2, (extra, res.stderr)
        assert res.stderr.startswith("hatstream: error: ") and res.stderr.count("\n") == 1, (extra, res.stderr)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the default JSON


def test_bench_json_is_strict_with_batches(tmp_path):
    out = tmp_path / "b.json"
    res = run_cli("bench", "--model", "bicubic", "--scale", "2", "--size", "32x16", "--frames", "4", "--batch", "2",
                  "--json-out", out, timeout=120)
    assert res.returncode == 0, res.stderr
    data = _strict_json(out.read_text())
    assert all(s["fps"] is None or s["fps"] > 0 for s in data["stages"])
    assert "inf" not in res.stdout


def _slowest(data) -> str:
    return min((s for s in data["stages"] if s["fps"] is not None), key=lambda s: s["fps"])["name"]


def test_bench_names_the_encoder_as_the_limit_and_the_threads_that_would_lift_it(tmp_path):
    # Bicubic on 32x16 frames costs next to nothing; opening, running and flushing x264 for 128x64
    # frames costs more than every other stage, several times over at its slowest preset.
    out = tmp_path / "bench.json"
    res = run_cli("bench", "--model", "bicubic", "--scale", "4", "--precision", "fp32", "--size", "32x16",
                  "--frames", "16", "--preset", "veryslow", "--json-out", out, timeout=120)
    assert res.returncode == 0, res.stderr
    data = _strict_json(out.read_text())
    assert data["limit"] == _slowest(data) == "encode", data["stages"]
    stages = {s["name"]: s["fps"] for s in data["stages"]}
    assert data["limit_fps"] == stages["encode"]
    assert data["encoder"] == "libx264 crf=18 preset=veryslow"
    # The encode stage is the encoder at the threads run gives it, one of those measured.
    scaling = {e["threads"]: e["fps"] for e in data["encoder_scaling"]}
    assert len(scaling) == min(2, data["cores"]) and 1 in scaling
    assert scaling[data["encoder_threads"]] == stages["encode"]
    per_thread = min(fps / threads for threads, fps in scaling.items())
    assert data["fps_per_encoder_thread"] == per_thread
    needed = data["encoder_threads_needed"]
    # The fewest threads at the lowest measured rate per thread that reach the model's fps: more than
    # the encode stage had, since at those it was slower than the model.
    assert (needed - 1) * per_thread < stages["model"] <= needed * per_thread
    assert needed > data["encoder_threads"] and data["segment_workers_needed"] >= 1
    assert f"limit: encode at {stages['encode']:.2f} fps" in res.stdout
    assert f"at about {needed} thread(s)" in res.stdout


def test_bench_names_the_model_as_the_limit_where_it_is_slowest():
    from hatstream.inference import Upscaler
    from hatstream.models.spec import ModelInfo
    from hatstream.pipeline.bench import run_bench

    torch.manual_seed(0)
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4).eval()
    info = ModelInfo(name="tiny-hat", arch="HAT", scale=2, hyperparameters=dict(
        upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4))
    up = Upscaler(model, info, torch.device("cpu"), torch.float32)
    # A HAT, even a tiny one, on 128x96 frames: some ten times the encoder's time for 256x192.
    data = _strict_json(json.dumps(run_bench(up, 128, 96, frames=2).to_json()))
    assert data["limit"] == _slowest(data) == "model", data["stages"]
    assert data["limit_fps"] == next(s["fps"] for s in data["stages"] if s["name"] == "model")
    # What `run` encodes by default: libx264 at CRF 18 and x264's own preset.
    assert data["encoder"] == "libx264 crf=18 preset=medium (the encoder's default)"


def test_bench_counts_the_work_of_every_pass_of_a_chain(tmp_path):
    from safetensors.torch import save_file

    from hatstream.models.chain import join_passes

    kwargs = dict(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    state = HAT(**kwargs).state_dict()
    chain = {k: v.clone().contiguous() for k, v in join_passes([state, state]).items()}
    save_file(chain, tmp_path / "chain.safetensors")
    out = tmp_path / "bench.json"
    res = run_cli("bench", "--model", tmp_path / "chain.safetensors", "--size", "64x48", "--frames", "2",
                  "--backend", "torch", "--precision", "fp32", "--json-out", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["scale"] == 4 and data["tflops"] > 0
    cfg = HATConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    macs = hat_macs(cfg, 48, 64, folded_head=True) + hat_macs(cfg, 96, 128, folded_head=True)
    model_s = next(s for s in data["stages"] if s["name"] == "model")
    # The reported rate is the two passes' multiply-adds over the model stage's time.
    assert data["tflops"] == pytest.approx(2 * macs * 2 / model_s["seconds"] / 1e12, rel=1e-3)
