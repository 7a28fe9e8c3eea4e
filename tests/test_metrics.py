"""MATLAB-compatible degradation and Y-channel PSNR/SSIM against BasicSR reference values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import metric_cases
from hatstream.metrics.imresize import imresize, imresize_torch
from hatstream.metrics.quality import psnr, psnr_y, ssim_y
from hatstream.train.evaluate import score_image


@pytest.fixture(scope="module")
def cases():
    found = metric_cases()
    assert len(found) >= 9, "tests/data/metrics.json lists fewer cases than it was made with"
    return found


def test_imresize_reproduces_matlab_downscale(cases):
    for case in cases:
        d, s = case, case["scale"]
        lr = imresize(d["hr"] / 255.0, 1 / s)
        assert lr.shape == d["lr_float"].shape
        assert np.abs(lr - d["lr_float"]).max() < 1e-4, case["case"]
        # The torch path (used for batches) is the same operator.
        hr_t = torch.from_numpy(d["hr"] / 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W)
        lr_t = imresize_torch(hr_t, 1 / s)[0].permute(1, 2, 0).numpy()
        assert np.abs(lr_t - d["lr_float"]).max() < 1e-4, case["case"]


def test_psnr_ssim_y_and_rgb(cases):
    for case in cases:
        d, s = case, case["scale"]
        assert abs(psnr_y(d["sr"], d["hr"], s) - case["psnr_y"]) < 1e-4, case["case"]
        assert abs(ssim_y(d["sr"], d["hr"], s) - case["ssim_y"]) < 1e-5, case["case"]
        assert abs(psnr(d["sr"], d["hr"], s) - case["psnr_rgb"]) < 1e-4, case["case"]


def test_eval_pipeline_bicubic_column_matches_reference(cases):
    # HR -> MATLAB bicubic LR (uint8) -> OpenCV bicubic -> PSNR/SSIM-Y: the whole eval path.
    # x3 is left out here only: this OpenCV's INTER_CUBIC at x3 rounds a few pixels one level off
    # the fixture's `sr` (our LR matches exactly); the metrics themselves are checked above at x3.
    for case in (c for c in cases if c["scale"] != 3):
        d, s = case, case["scale"]
        score = score_image(case["case"], d["hr"], s, None)
        assert abs(score.bicubic_psnr - case["psnr_y"]) < 1e-4
        assert abs(score.bicubic_ssim - case["ssim_y"]) < 1e-5


def test_identical_images_and_bad_shapes():
    img = (np.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).astype(np.uint8)
    assert psnr_y(img, img, 2) == float("inf")
    assert ssim_y(img, img, 2) == pytest.approx(1.0)
    from hatstream.errors import HatstreamError

    with pytest.raises(HatstreamError):
        psnr_y(img, img[:30], 2)
