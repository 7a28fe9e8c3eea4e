"""Train or fine-tune HAT: same-task pretraining, then fine-tuning with a small learning rate.

LR inputs are made on the fly by MATLAB-compatible bicubic downscaling of the HR data (image
folders, image files, or videos whose frames are sampled across their length). Checkpoints are
BasicSR-compatible ({'params', 'params_ema'}) and load in `hatstream run --model`.
Presets reproducing the paper's schedules live in `pipelines/train-*.toml` (--config).
"""

from __future__ import annotations

import argparse
import sys

from hatstream.commands.common import (PROGRESS_SECONDS, TRAIN_PRESET_CHOICES, Throttle, positive_seconds,
                                       stderr_is_terminal)
from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags; those left unset fall back to --config, then to the paper's defaults."""
    p.add_argument("--config", metavar="TOML", help="training preset, e.g. pipelines/train-hat-x2.toml")
    p.add_argument("--data", nargs="+", metavar="DIR|VIDEO", help="HR training images: folders, images, videos")
    p.add_argument("--scale", type=int, help="upscaling factor (2, 3, 4)")
    p.add_argument("--arch", choices=TRAIN_PRESET_CHOICES, metavar="NAME", help="architecture preset: %(choices)s")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder: checkpoints, log, resume state")
    p.add_argument("--init", metavar="CKPT", help="start from these weights (params_ema first), e.g. to fine-tune")
    p.add_argument("--first-pass", metavar="MODEL",
                   help="a model (built-in name or checkpoint) run before the network, frozen: train the second "
                        "pass of a chain on its output (x4 = hat-tiny-x2, then this network at x2)")
    p.add_argument("--start", choices=("random", "bilinear"),
                   help="initial weights without --init: the reference's random init, or a bilinear upscaler")
    p.add_argument("--iters", type=int, help="total iterations")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--milestones", type=int, nargs="*", help="iterations where the learning rate is halved")
    p.add_argument("--loss", choices=("l1", "l2"), help="training loss: l1 (the paper's) or l2 (what PSNR measures)")
    p.add_argument("--sharpen", type=float, metavar="P",
                   help="probability that a patch's HR is sharpened (unsharp mask) before its LR is made: "
                        "teaches the halos of camera and encoder sharpening that video frames have")
    p.add_argument("--noise", type=float, metavar="P",
                   help="probability that a patch's HR gets grey sensor noise before its LR is made (the grain "
                        "of camera frames, which clean photos lack)")
    p.add_argument("--batch", type=int, help="total batch size (split over --workers)")
    p.add_argument("--patch", type=int, help="LR patch side (HR patch = patch x scale)")
    p.add_argument("--val", nargs="+", metavar="DIR", help="validation images (PSNR/SSIM-Y, crop border = scale)")
    p.add_argument("--val-every", type=int, help="validate every N iterations")
    p.add_argument("--save-every", type=int, help="checkpoint every N iterations")
    p.add_argument("--seed", type=int, help="random seed (weights and patch sampling)")
    p.add_argument("--threads", type=int, help="torch threads per worker")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved settings; flags given change them (e.g. --lr), "
                        "except arch, scale, init, start and seed")
    p.add_argument("--workers", type=int, help="data-parallel workers through Ray Train (DDP)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto or ray://host:10001)")
    p.add_argument("--gpu", action="store_true",
                   help="train on a CUDA GPU: this process, or with --workers/--address one GPU per Ray worker "
                        "(otherwise the CPU, with gloo between Ray workers)")
    p.add_argument("--time-limit", type=positive_seconds, metavar="SECONDS",
                   help="stop after this much wall time, at a step boundary and saved; --resume continues "
                        "(one worker only)")
    p.add_argument("--json", action="store_true", help="print progress as JSON lines on stdout instead of a bar")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig: --config preset (if any) overridden by explicit flags.

    With --resume: the run's own saved config.json, with only the flags given applied (a new
    learning rate, more iterations, ...); changes to what made the saved weights are refused.
    """
    from hatstream.train.config import TrainConfig, resumed_config

    names = ("data", "scale", "arch", "out", "init", "first_pass", "start", "iters", "lr", "milestones", "loss",
             "sharpen", "noise", "batch", "patch", "val", "val_every", "save_every", "seed", "threads", "workers",
             "address")
    flags = {name: getattr(args, name) for name in names}
    if args.resume:
        if not args.out:
            raise HatstreamError("--resume needs --out RUN_DIR: the run to continue")
        if args.config:
            raise HatstreamError("--resume continues with RUN_DIR/config.json; pass only the settings to change "
                                 "as flags, not --config")
        return resumed_config(flags.pop("out"), **flags)
    cfg = TrainConfig.from_toml(args.config, **flags) if args.config else TrainConfig(
        **{k: v for k, v in flags.items() if v is not None})
    if not cfg.data:
        raise HatstreamError("no training data: pass --data DIR|VIDEO ... (or data = [...] in --config)")
    if not cfg.out:
        raise HatstreamError("no run folder: pass --out RUN_DIR")
    return cfg


def _describe(event: dict) -> str:
    text = f"loss {event['loss']:.4g}, lr {event['lr']:.1e}"
    if "val_psnr" in event:
        text += f", val {event['val_psnr']:.2f} dB (bicubic {event['bicubic_psnr']:.2f})"
    return text


def _progress(cfg, as_json: bool):
    """The progress callback and its closer: a tqdm bar on a terminal; otherwise (a log file,
    systemd, CI) one line, or one JSON object with --json, per logged iteration (every
    log_every), at least every PROGRESS_SECONDS, and at the end. Never carriage returns."""
    import json

    desc = f"train x{cfg.scale} {cfg.arch}" + (f" after {cfg.first_pass}" if cfg.first_pass else "")
    if not as_json and stderr_is_terminal():
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, unit="it", dynamic_ncols=True, desc=desc)

        def draw(event: dict) -> None:
            bar.n = event["iter"]
            post = {"loss": f"{event['loss']:.4g}", "lr": f"{event['lr']:.1e}"}
            if "val_psnr" in event:
                post["val"] = f"{event['val_psnr']:.2f}dB (bicubic {event['bicubic_psnr']:.2f})"
            bar.set_postfix(post, refresh=False)
            bar.refresh()

        return draw, bar.close

    due = Throttle(PROGRESS_SECONDS)

    def line(event: dict) -> None:
        it, total = event["iter"], event["iters"]
        if not due(force=it % cfg.log_every == 0 or it >= total):
            return
        if as_json:
            print(json.dumps(dict(event, event="progress")), flush=True)
        else:
            print(f"hatstream: {desc}: iteration {it}/{total} ({it / total:.0%}), {_describe(event)}",
                  file=sys.stderr, flush=True)

    return line, lambda: None


def run(args: argparse.Namespace) -> int:
    """Train, showing progress with the loss and the latest validation PSNR."""
    import json

    cfg = config_from_args(args)
    distributed = cfg.workers > 1 or cfg.address
    if distributed and args.time_limit is not None:
        raise HatstreamError("--time-limit is for one worker; Ray Train runs end at --iters")
    progress, close = _progress(cfg, args.json)
    try:
        if distributed:
            from hatstream.train.distributed import train_distributed

            ckpt = train_distributed(cfg, resume=args.resume, progress=progress, use_gpu=args.gpu)
            iteration, finished = cfg.iters, True  # Ray Train runs end at --iters
        else:
            from hatstream.train.trainer import train

            ckpt, iteration, finished = train(cfg, resume=args.resume, progress=progress, gpu=args.gpu,
                                              time_limit=args.time_limit)
    finally:
        close()
    if args.json:
        print(json.dumps({"event": "done", "checkpoint": str(ckpt), "finished": finished, "iter": iteration}),
              flush=True)
    else:
        if not finished:
            print(f"hatstream: train: time limit reached at iteration {iteration} of {cfg.iters}; "
                  "--resume continues", file=sys.stderr)
        print(f"checkpoint: {ckpt}")
    return 0
