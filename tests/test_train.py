"""Training: a short run on a tiny config (loss falls, checkpoint, resume, loading), video data,
presets, and the Ray Train data-parallel path with two CPU workers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, run_cli
from hatstream.errors import HatstreamError
from hatstream.inference import load_model
from hatstream.models.checkpoint import read_state_dict
from hatstream.models.hat import HAT
from hatstream.train.config import TrainConfig, hat_config
from hatstream.train.data import load_hr_images
from hatstream.train.trainer import Trainer, load_init
from mediagen import Clip, make_video


def _photo_crops(folder: Path) -> Path:
    """A few 96x96 crops of scikit-image photos: real texture, small enough for seconds per run."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        crop = img[h // 2 - 48: h // 2 + 48, w // 2 - 48: w // 2 + 48]
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(crop[..., ::-1]))
    return folder


def _tiny_config(tmp_path: Path, **changes) -> TrainConfig:
    base = dict(data=(str(_photo_crops(tmp_path / "data")),), out=str(tmp_path / "run"), scale=2, arch="hat-micro",
                iters=30, lr=2e-3, milestones=(1000,), batch=4, patch=16, log_every=5, val_every=30,
                save_every=15, seed=0, threads=2)
    base.update(changes)
    return TrainConfig(**base)


def _logged_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if "loss" in e]


def test_train_resume_and_load(tmp_path):
    val = tmp_path / "val"
    _photo_crops(val)
    cfg = _tiny_config(tmp_path, val=(str(val),))
    events = []
    ckpt = Trainer(cfg).fit(events.append)
    run = Path(cfg.out)

    losses = _logged_losses(run)
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses  # the loss falls
    assert events[-1]["iter"] == 30 and "val_psnr" in events[-1]
    assert ckpt == run / "models" / "net_g_30.pth" and (run / "models" / "net_g_latest.pth").is_file()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(saved) == {"params", "params_ema"}  # BasicSR layout

    # A second start without --resume refuses to overwrite; with it, training continues at 31.
    with pytest.raises(HatstreamError, match="--resume"):
        Trainer(cfg)
    proc = run_cli("train", "--data", *cfg.data, "--out", run, "--scale", "2", "--arch", "hat-micro", "--iters", "40",
                   "--lr", "2e-3", "--batch", "4", "--patch", "16", "--save-every", "10", "--threads", "2", "--resume",
                   timeout=180)
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log if "loss" in e][-1] == 40
    assert (run / "models" / "net_g_40.pth").is_file()
    resumed = torch.load(run / "training_state.pt", map_location="cpu", weights_only=True)
    assert resumed["iter"] == 40 and resumed["elapsed"] > 0

    # The checkpoint loads as a model, through the library and through `hatstream run --model`.
    up = load_model(run / "models" / "net_g_latest.pth", device="cpu")
    assert up.scale == 2 and up.info.hyperparameters["embed_dim"] == 16
    y = up(torch.rand(1, 3, 20, 28))
    assert y.shape == (1, 3, 40, 56) and torch.isfinite(y).all()
    clip = make_video(tmp_path / "clip.mkv", Clip(frames=3, width=32, height=24))
    out = tmp_path / "clip.x2.mkv"
    proc = run_cli("run", clip, "-o", out, "--model", run / "models" / "net_g_latest.pth", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 0


def test_video_frames_are_training_data(tmp_path):
    clip = make_video(tmp_path / "clip.mkv", Clip(frames=20, width=64, height=48))
    frames = load_hr_images([str(clip)], frames_per_video=4)
    assert len(frames) == 4 and frames[0][1].shape == (48, 64, 3)
    assert not np.array_equal(frames[0][1], frames[-1][1])  # sampled across the clip, not one frame
    cfg = _tiny_config(tmp_path, data=(str(clip),), iters=3, frames_per_video=4, save_every=3)
    assert Trainer(cfg).fit() is not None


def test_x4_initialises_from_x2_except_the_new_upsampling_stage(tmp_path):
    from hatstream.models.hat import HAT

    src = HAT.from_config(hat_config("hat-micro", 2))
    x4 = HAT.from_config(hat_config("hat-micro", 4))
    path = tmp_path / "x2.pth"
    torch.save({"params_ema": src.state_dict()}, path)
    assert load_init(x4, str(path)) == ["upsample.2.bias", "upsample.2.weight"]
    assert torch.equal(x4.conv_first.weight, src.conv_first.weight)


def test_a_narrower_head_grows_without_changing_the_output(tmp_path):
    from hatstream.models.hat import HAT, HATConfig

    small = HAT.from_config(hat_config("hat-micro", 4)).eval()  # num_feat 8
    wide = HAT.from_config(HATConfig(**{**hat_config("hat-micro", 4).to_kwargs(), "num_feat": 16})).eval()
    path = tmp_path / "narrow.pth"
    torch.save({"params_ema": small.state_dict()}, path)
    assert load_init(wide, str(path)) == []
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert (wide(x) - small(x)).abs().max().item() < 1e-6
    assert wide.conv_before_upsample[0].weight[8:].abs().sum() > 0  # new channels are live


def test_a_deeper_group_starts_with_the_shallower_output(tmp_path):
    from hatstream.models.hat import HAT, HATConfig

    base = hat_config("hat-micro", 2).to_kwargs()
    shallow = HAT.from_config(hat_config("hat-micro", 2)).eval()  # one block
    deep = HAT.from_config(HATConfig(**{**base, "depths": (3,), "num_heads": (1,)})).eval()
    path = tmp_path / "shallow.pth"
    torch.save({"params_ema": shallow.state_dict()}, path)
    left = load_init(deep, str(path))
    assert left and all(".blocks.1." in k or ".blocks.2." in k for k in left)  # random, not the writers
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert (deep(x) - shallow(x)).abs().max().item() < 1e-6


def test_a_trunk_of_half_the_width_grows_without_changing_the_output_and_its_copies_part(tmp_path):
    narrow_cfg = hat_config("hat-micro", 2)
    wide_cfg = dataclasses.replace(narrow_cfg, embed_dim=32, num_heads=(2,))
    torch.manual_seed(0)
    narrow = HAT.from_config(narrow_cfg)
    with torch.no_grad():
        for p in narrow.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no zeros left from the init that could hide a wrong split
    torch.save({"params": narrow.state_dict()}, tmp_path / "narrow.pth")
    wide = HAT.from_config(wide_cfg)
    assert load_init(wide, str(tmp_path / "narrow.pth")) == []
    x = torch.rand(1, 3, 16, 24)
    narrow.eval(), wide.eval()
    with torch.no_grad():
        assert (wide(x) - narrow(x)).abs().max().item() < 1e-5
    # One step on the wide net: the two copies of a channel take different gradients, so they part.
    wide.train()
    F.l1_loss(wide(x), torch.rand(1, 3, 32, 48)).backward()
    g = wide.conv_first.weight.grad
    assert not torch.allclose(g[:16], g[16:])
    # The other way round, or by another factor, is another network: refused, not half taken.
    torch.save({"params": wide.state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(HatstreamError, match="trunk 32 channels wide where this architecture's is 16"):
        load_init(HAT.from_config(narrow_cfg), str(tmp_path / "wide.pth"))


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_the_step_minimises_the_configured_loss(tmp_path, loss):
    import torch.nn.functional as F

    # Same seed: the same initial weights and the same first batch.
    probe = Trainer(_tiny_config(tmp_path / "a", loss=loss, iters=1))
    trainer = Trainer(_tiny_config(tmp_path / "b", loss=loss, iters=1))
    lr, hr = probe.sampler.sample(probe.cfg.batch)
    with torch.no_grad():
        out = probe.model(lr)
    expected = {"l1": F.l1_loss, "l2": F.mse_loss}[loss](out, hr)
    assert trainer.step() == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(HatstreamError, match="loss must be one of l1, l2"):
        _tiny_config(tmp_path, loss="huber")


def test_presets_and_architectures():
    presets = sorted((ROOT / "pipelines").glob("train-*.toml"))
    assert presets
    cfgs = {p.stem: TrainConfig.from_toml(p, data=["x"], out="y") for p in presets}
    x2 = cfgs["train-hat-x2"]
    assert (x2.iters, x2.lr, x2.milestones, x2.batch, x2.patch) == (
        500_000, 2e-4, (250_000, 400_000, 450_000, 475_000), 32, 64)
    assert (cfgs["train-hat-x4"].iters, cfgs["train-hat-x4"].lr) == (250_000, 1e-4)
    assert (cfgs["train-hat-pretrain-x4"].iters, cfgs["train-hat-pretrain-x4"].lr) == (800_000, 2e-4)
    assert (cfgs["train-hat-finetune-x4"].iters, cfgs["train-hat-finetune-x4"].lr) == (250_000, 1e-5)
    counts = {"hat-s": 9_621_183, "hat": 20_772_507, "hat-l": 40_846_575}  # x4, notes §1
    from hatstream.models.hat import HAT

    for arch, n in counts.items():
        with torch.device("meta"):
            model = HAT.from_config(hat_config(arch, 4))
        assert sum(p.numel() for p in model.parameters()) == n, arch
    with pytest.raises(HatstreamError):
        TrainConfig(data=("x",), out="y", arch="hat-micro", patch=12)  # not a multiple of the window


def test_ray_train_two_cpu_workers(tmp_path):
    import ray.train  # noqa: F401 - a dependency (ray[train]); missing it must fail, not skip
    from hatstream.train.distributed import train_distributed

    cfg = _tiny_config(tmp_path, iters=24, workers=2, batch=8, threads=1, log_every=4, save_every=24)
    events = []
    ckpt = train_distributed(cfg, progress=events.append)
    import ray

    assert not ray.is_initialized()  # the run shut down the Ray it started
    losses = _logged_losses(Path(cfg.out))
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
    assert events and events[-1]["iter"] == 24
    state = read_state_dict(ckpt)
    up = load_model(ckpt, device="cpu")
    assert up.scale == 2 and set(state) == set(up.model.state_dict())


@pytest.mark.parametrize("scale", [2, 4])
def test_bilinear_start_is_a_bilinear_upscaler(scale):
    import torch.nn.functional as F

    from hatstream.models.hat import HAT
    from hatstream.train.init import bilinear_init

    torch.manual_seed(0)
    net = HAT.from_config(hat_config("hat-micro", scale)).eval()
    bilinear_init(net)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        y = net(x)
    ref = x
    for _ in range(scale // 2):  # x4 = two bilinear x2 stages, as the head does
        ref = F.interpolate(ref, scale_factor=2, mode="bilinear", align_corners=False)
    m = scale  # borders see the convolutions' zero padding
    assert torch.allclose(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal Debian package: an `ar` archive holding debian-binary and a data.tar.xz of `files`."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.xz", buf.getvalue())):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) & 1)
    path.write_bytes(out)
    return path


def test_debian_photos_are_read_from_the_package_and_shrunk(tmp_path):
    import hashlib

    from hatstream.train.samples import DEBIAN_SHORT_SIDE, write_debian_photos

    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (900, 1441, 3), dtype=np.uint8), (0, 0), 3)
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    deb = _deb(tmp_path / "walls_1.0_all.deb", {"./usr/share/backgrounds/Sea.jpg": jpeg, "./usr/share/doc/x": b"odd"})
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    photos = {deb.name: (sha, "./usr/share/backgrounds/", ("Sea",))}
    assert write_debian_photos(tmp_path, tmp_path / "out", photos) == ["Sea"]
    img = cv2.imread(str(tmp_path / "out" / "Sea.png"))
    assert img.shape == (DEBIAN_SHORT_SIDE, round(1441 * DEBIAN_SHORT_SIDE / 900), 3)
    # Area shrinking keeps the picture: its mean colour stays within a level of the original's.
    assert np.abs(img.mean((0, 1)) - cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1).mean((0, 1))).max() < 1.0
    with pytest.raises(ValueError, match="sha256"):
        write_debian_photos(tmp_path, tmp_path / "out", {deb.name: ("0" * 64, "./usr/share/backgrounds/", ("Sea",))})


def test_training_videos_are_opened_as_run_opens_them(tmp_path):
    from mediagen import make_audio_only

    photos = _photo_crops(tmp_path / "data")
    audio = make_audio_only(tmp_path / "talk.mkv")
    wav = tmp_path / "song.mp4"  # a WAV file under a video name: the demuxer allow-list refuses it
    import wave

    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    for bad, says in ((audio, "no video stream"), (wav, "supported container")):
        proc = run_cli("train", "--data", photos, bad, "--out", tmp_path / "run", "--arch", "hat-micro",
                       "--iters", "1", "--batch", "1", "--patch", "16", timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("hatstream: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr and bad.name in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resume_uses_the_runs_own_config_and_records_changes(tmp_path):
    photos = _photo_crops(tmp_path / "data")
    run = tmp_path / "run"
    proc = run_cli("train", "--data", photos, "--out", run, "--arch", "hat-micro", "--scale", "2", "--iters", "6",
                   "--batch", "2", "--patch", "16", "--lr", "2e-3", "--save-every", "3", "--threads", "1",
                   timeout=180)
    assert proc.returncode == 0, proc.stderr
    # stderr is a pipe here, as in a log file or CI: plain lines, no tqdm redraws.
    assert "\r" not in proc.stderr and "iteration 6/6" in proc.stderr, proc.stderr
    saved = (run / "config.json").read_bytes()

    for change in (["--arch", "hat-tiny"], ["--scale", "4"], ["--seed", "3"]):
        proc = run_cli("train", "--out", run, "--resume", *change, timeout=120)
        assert proc.returncode == 2, (change, proc.stderr)
        assert proc.stderr.startswith("hatstream: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert change[0][2:] in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "config.json").read_bytes() == saved

    # No flags repeated: data, arch, scale and the rest come from config.json; the new lr is kept.
    proc = run_cli("train", "--out", run, "--resume", "--iters", "8", "--lr", "1e-3", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["checkpoint"].endswith("net_g_8.pth")
    assert events[-2]["event"] == "progress" and events[-2]["iter"] == 8 and events[-2]["lr"] == 1e-3
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["iters"] == 8 and config["arch"] == "hat-micro"
    assert config["changes"] == [{"iter": 6, "iters": {"was": 6, "now": 8}, "lr": {"was": 2e-3, "now": 1e-3}}]
    assert any(e.get("resumed") for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()))


def _train_args(cfg: TrainConfig) -> list[str]:
    return ["train", "--data", *cfg.data, "--out", cfg.out, "--scale", "2", "--arch", "hat-micro", "--iters", "10",
            "--lr", "2e-3", "--batch", "4", "--patch", "16", "--save-every", "10", "--threads", "2", "--gpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_gpu_training_without_cuda_is_one_line(tmp_path):
    cfg = _tiny_config(tmp_path)
    proc = run_cli(*_train_args(cfg), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hatstream: error: --gpu needs a CUDA GPU") and proc.stderr.count("\n") == 1
    assert not Path(cfg.out).exists()


@pytest.mark.gpu
def test_one_worker_trains_on_the_gpu_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    cfg = _tiny_config(tmp_path)
    proc = run_cli(*_train_args(cfg), timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(Path(cfg.out) / "models" / "net_g_10.pth", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["params_ema"].values())
    y = load_model(Path(cfg.out) / "models" / "net_g_latest.pth", device="cpu")(torch.rand(1, 3, 16, 16))
    assert y.shape == (1, 3, 32, 32) and torch.isfinite(y).all()


def test_time_limit_stops_saved_and_resume_continues_exactly(tmp_path):
    # Stopped by the time limit at some step k, then resumed to k + 5: the same weights as one run to k + 5.
    cfg = _tiny_config(tmp_path / "cut", iters=100000, save_every=100000, val_every=100000)
    ckpt = Trainer(cfg).fit(time_limit=0.0)  # stops before the first step: nothing to save yet
    assert ckpt is None and not (Path(cfg.out) / "training_state.pt").exists()
    events = []
    ckpt = Trainer(cfg).fit(events.append, time_limit=1.0)
    k = events[-1]["iter"]
    assert 0 < k < 1000 and ckpt == Path(cfg.out) / "models" / f"net_g_{k}.pth"  # saved where it stopped
    state = torch.load(Path(cfg.out) / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["iter"] == k
    proc = run_cli("train", "--out", cfg.out, "--resume", "--iters", str(k + 5), "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.splitlines()[-1])
    assert done["finished"] and done["iter"] == k + 5
    whole = _tiny_config(tmp_path / "whole", iters=k + 5, save_every=100000, val_every=100000)
    Trainer(whole).fit()
    a = torch.load(Path(whole.out) / "models" / f"net_g_{k + 5}.pth", map_location="cpu", weights_only=True)
    b = torch.load(Path(cfg.out) / "models" / f"net_g_{k + 5}.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(a["params_ema"][n], b["params_ema"][n]) for n in a["params_ema"])


def test_time_limit_from_the_cli_says_it_stopped(tmp_path):
    cfg = _tiny_config(tmp_path, iters=100000)
    proc = run_cli("train", "--data", *cfg.data, "--out", cfg.out, "--scale", "2", "--arch", "hat-micro",
                   "--iters", "100000", "--batch", "4", "--patch", "16", "--threads", "2", "--time-limit", "3",
                   timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "time limit reached at iteration" in proc.stderr and "--resume continues" in proc.stderr
    assert (Path(cfg.out) / "training_state.pt").is_file()
    saved = torch.load(Path(cfg.out) / "training_state.pt", map_location="cpu", weights_only=True)["iter"]
    # A limit that ends the resumed run before its first step still reports it unfinished, where it is.
    again = run_cli("train", "--out", cfg.out, "--resume", "--time-limit", "0.000001", "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert done == {"event": "done", "checkpoint": done["checkpoint"], "finished": False, "iter": saved}
    bad = run_cli("train", "--out", cfg.out, "--resume", "--time-limit", "0", timeout=60)
    assert bad.returncode == 2 and "more than 0 seconds" in bad.stderr


def test_a_second_pass_learns_from_the_first_passs_output_and_saves_the_chain(tmp_path):
    from safetensors.torch import save_file

    from hat_cases import tiny_hat
    from hatstream.train.config import resumed_config
    from hatstream.train.data import make_lr
    from hatstream.train.evaluate import mean_score, score_image

    first = tmp_path / "first.safetensors"
    save_file({k: v.clone().contiguous() for k, v in tiny_hat()[0].state_dict().items()}, first)
    val = _photo_crops(tmp_path / "val")
    cfg = _tiny_config(tmp_path, first_pass=str(first), val=(str(val),), iters=10, save_every=10, val_every=10)
    trainer = Trainer(cfg)

    # Each pair's input is the first pass's output on the bicubic LR at the chain's scale (x4).
    pair = trainer.sampler.pairs[0]
    assert pair.hr.shape[:2] == (96, 96) and pair.lr.shape[:2] == (48, 48)
    up = load_model(first, device="cpu", precision="fp32", backend="torch")
    lr4 = torch.from_numpy(make_lr(pair.hr, 4)).permute(2, 0, 1)[None]
    np.testing.assert_allclose(pair.lr, up(lr4)[0].permute(1, 2, 0).numpy(), atol=1e-6)

    ckpt = trainer.fit()
    # Validation scores the chain at x4: its bicubic baseline is x4 bicubic.
    x4_bicubic = mean_score([score_image(n, img, 4, None) for n, img in trainer.val_images]).bicubic_psnr
    assert trainer.last_val.bicubic_psnr == pytest.approx(x4_bicubic)
    chain = load_model(ckpt, device="cpu", precision="fp32", backend="torch")
    assert (chain.info.arch, chain.scale) == ("HAT-chain", 4)
    saved = read_state_dict(ckpt)  # params_ema: the first pass as it was, the second the EMA
    assert all(torch.equal(saved[f"passes.0.{k}"], v) for k, v in read_state_dict(first).items())
    assert all(torch.equal(saved[f"passes.1.{k}"], v) for k, v in trainer.ema.state_dict().items())
    assert chain(torch.rand(1, 3, 16, 24)).shape == (1, 3, 64, 96)
    # Validation keeps the frozen pass's output per image, and still scores what the saved chain does.
    assert len(trainer._first_val) == len(trainer.val_images)
    whole = mean_score([score_image(n, img, 4, chain) for n, img in trainer.val_images])
    assert trainer.validate().psnr == pytest.approx(whole.psnr, abs=1e-3)
    with pytest.raises(HatstreamError, match="first_pass"):
        resumed_config(cfg.out, first_pass="hat-tiny-x2")
    # The same name on other weights (a built-in updated in a release) is refused on resume too.
    assert Trainer(cfg.replace(iters=12), resume=True).fit() is not None  # unchanged: resumes
    save_file({k: v.clone().contiguous() for k, v in tiny_hat(2, 4)[0].state_dict().items()}, first)
    with pytest.raises(HatstreamError, match="other weights of .*first.safetensors"):
        Trainer(cfg.replace(iters=14), resume=True)


def test_a_chain_trains_whole_end_to_end_at_its_scale(tmp_path):
    from safetensors.torch import save_file

    x2 = tmp_path / "x2.safetensors"  # one x2 network starts both passes
    net = Trainer(_tiny_config(tmp_path / "a", iters=1)).net
    save_file({k: v.clone().contiguous() for k, v in net.state_dict().items()}, x2)
    with pytest.raises(HatstreamError, match="product is the scale"):
        _tiny_config(tmp_path, scale=4, pass_scales=(2, 3))
    cfg = _tiny_config(tmp_path, scale=4, pass_scales=(2, 2), init=str(x2), iters=10, save_every=10, patch=8,
                       val=(str(_photo_crops(tmp_path / "val")),), val_every=10)
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    assert all(torch.equal(start[f"passes.{i}.conv_first.weight"], net.conv_first.weight) for i in (0, 1))
    ckpt = trainer.fit()
    assert trainer.last_val is not None and trainer.sampler.pairs[0].lr.shape[:2] == (24, 24)  # 96 / 4
    chain = load_model(ckpt, device="cpu", precision="fp32", backend="torch")
    assert (chain.info.arch, chain.scale) == ("HAT-chain", 4)
    # Trained end to end: the gradient reaches the first pass through the second.
    saved = read_state_dict(ckpt)
    for i in (0, 1):
        assert not torch.equal(saved[f"passes.{i}.conv_first.weight"], start[f"passes.{i}.conv_first.weight"])
