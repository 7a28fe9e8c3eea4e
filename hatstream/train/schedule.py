"""Learning-rate schedules of a training run: the paper's step decay, or a cosine decay.

Both are closed-form in the iteration, so a resumed run whose preset changed `iters` or the
milestones simply continues on the new curve from where it stopped.
"""

from __future__ import annotations

import math

import torch

from hatstream.train.config import TrainConfig

SCHEDULES = ("step", "cosine")


def lr_factor(cfg: TrainConfig, it: int) -> float:
    """The multiple of `cfg.lr` used at iteration `it`.

    step: `gamma` to the number of milestones passed (MultiStepLR). cosine: from 1 down to
    `lr_min / lr` at `iters`, half a cosine (the longer schedule small SR models gain from).
    """
    if cfg.schedule == "cosine":
        floor = cfg.lr_min / cfg.lr
        t = min(it, cfg.iters) / cfg.iters
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.gamma ** sum(it >= m for m in cfg.milestones)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of `cfg.schedule` on `opt`; call its step() once per iteration."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    # A plain function (not a callable object) keeps LambdaLR's state dict free of it, so a resumed
    # run takes the curve from the current config rather than from the saved one.
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(cfg, it))


def set_resumed_lr(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig) -> None:
    """Put the current config's lr for the resumed iteration into `opt`.

    The optimizer's saved state holds the lr of the curve it was saved on; without this the first
    steps after resuming a run whose `iters` or milestones changed would keep that old value.
    """
    for group, base in zip(opt.param_groups, sched.base_lrs):
        group["lr"] = base * lr_factor(cfg, sched.last_epoch)
    sched._last_lr = [group["lr"] for group in opt.param_groups]
