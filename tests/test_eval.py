"""`hatstream eval` as a real subprocess: the table, and the reference values through the CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import metric_cases, run_cli


def test_eval_prints_table_and_reproduces_reference(tmp_path):
    expected = {c["case"]: c for c in metric_cases()}
    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), expected[f"{name}_x4"]["hr"][..., ::-1])
    out = tmp_path / "scores.json"
    proc = run_cli("eval", "--model", "bicubic", "--data", folder, "--scale", "4", "--json", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "bicubic PSNR" in lines[1] and "model PSNR" in lines[1]
    assert [ln.split()[0] for ln in lines if ln.endswith(".png") or ".png " in ln] == [
        "astronaut.png", "chelsea.png", "coffee.png"]
    assert lines[-1].startswith("mean")
    scores = json.loads(out.read_text())
    for row in scores["images"]:
        ref = expected[row["name"].removesuffix(".png") + "_x4"]
        assert abs(row["bicubic_psnr"] - ref["psnr_y"]) < 1e-4
        assert abs(row["bicubic_ssim"] - ref["ssim_y"]) < 1e-5


def test_eval_reports_missing_data(tmp_path):
    proc = run_cli("eval", "--model", "bicubic", "--data", tmp_path / "nothing", "--scale", "2", timeout=60)
    assert proc.returncode == 2
    assert "hatstream: error:" in proc.stderr


def test_eval_checks_its_json_path_before_scoring(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((48, 48, 3), 128, np.uint8))
    proc = run_cli("eval", "--model", "bicubic", "--data", folder, "--scale", "2", "--json",
                   tmp_path / "missing" / "x.json", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("hatstream: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "missing" in proc.stderr
    # A flat image upscales exactly: an infinite PSNR is written as null, never as Infinity.
    out = tmp_path / "x.json"
    proc = run_cli("eval", "--model", "bicubic", "--data", folder, "--scale", "2", "--json", out, timeout=60)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert scores["images"][0]["bicubic_ssim"] > 0.99
