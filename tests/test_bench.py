"""`hatstream bench` and the FLOP count it reports."""

from __future__ import annotations

import json

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
