"""The training loop: L1, Adam, MultiStepLR, EMA, BasicSR-compatible checkpoints, resume, validation.

Run layout (RUN_DIR = `cfg.out`):
  config.json                  the TrainConfig the run continues with; "changes" lists what each
                               resume changed (iteration, old and new values)
  log.jsonl                    one JSON object per log/validation event
  training_state.pt            everything needed to resume (tensors and plain values only)
  models/net_g_<iter>.pth      {'params': ..., 'params_ema': ...}, as BasicSR saves
  models/net_g_latest.pth      the newest of those
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hatstream.atomic import atomic_output
from hatstream.errors import HatstreamError
from hatstream.inference.upscaler import pad_to_multiple
from hatstream.models.chain import PREFIX, HATChain, hat_passes, input_multiple, join_passes
from hatstream.models.checkpoint import read_state_dict, state_digest
from hatstream.models.hat import HAT
from hatstream.train.config import (CONFIG_FILE, TrainConfig, check_resume_changes, config_changes, hat_config,
                                    read_run_config)
from hatstream.train.data import CameraLook, PatchSampler, load_hr_images, make_pairs
from hatstream.train.evaluate import Score, mean_score, score_image
from hatstream.train.init import bilinear_init
from hatstream.train.schedule import make_scheduler, set_resumed_lr

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict], None]
STATE_FILE = "training_state.pt"
LATEST = "net_g_latest.pth"


def build_network(cfg: TrainConfig) -> HAT | HATChain:
    """An untrained HAT of the configured architecture and scale, or a chain of them (`pass_scales`)."""
    if cfg.pass_scales:
        return HATChain([HAT.from_config(hat_config(cfg.arch, s)) for s in cfg.pass_scales])
    return HAT.from_config(hat_config(cfg.arch, cfg.scale))


_HEAD = ("conv_before_upsample.", "upsample.", "conv_last.")


def load_init(net: nn.Module, path: str) -> list[str]:
    """Copy every tensor of checkpoint `path` whose name and shape match (params_ema first).

    Returns the names left at their initial values, e.g. the extra upsampling stage when a x4
    model starts from a x2 one (the paper's recipe). Refuses a checkpoint that matches nothing.
    A narrower reconstruction head (smaller num_feat), a shallower group (fewer blocks) or a trunk
    of half the width (embed_dim and heads) grows into this one without changing the network's
    output (`_grow_head`, `_new_blocks_as_identity`, `_widen`).
    A chain (`pass_scales`) takes a chain checkpoint pass by pass, or one network for every pass.
    """
    state = read_state_dict(path)
    if isinstance(net, HATChain) and not any(k.startswith(PREFIX) for k in state):
        state = join_passes([state] * len(net.passes))  # one network starts every pass of the chain
    own = net.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise HatstreamError(f"--init {path} shares no tensors with this architecture")
    # _widen last: where the head's first convolution reads a doubled trunk, its uneven split wins over
    # _grow_head's zeros for the new channels (both keep the output).
    grown = _grow_head(own, state, take) | _new_blocks_as_identity(own, state) | _widen(own, state, take)
    if grown:
        log.info("grew %s into %d tensors of this architecture", path, len(grown))
    # The trunk's first convolution fixes its width: if it neither fits nor grew, the checkpoint is another
    # network (e.g. a wider one), and taking its head alone would train from a random trunk unawares.
    for k in own:
        if k.endswith("conv_first.weight") and k in state and k not in take and k not in grown:
            raise HatstreamError(f"--init {path} has a trunk {state[k].shape[0]} channels wide where this "
                                 f"architecture's is {own[k].shape[0]}; it grows only from half the width")
    net.load_state_dict(take | grown, strict=False)
    return sorted(k for k in own if k not in take and k not in grown)


_BLOCK = re.compile(r"layers\.\d+\.residual_group\.blocks\.\d+\.")
# The layers through which a hybrid attention block writes into the trunk.
_BLOCK_WRITES = ("attn.proj.", "mlp.fc2.", "conv_block.cab.2.")


def _new_blocks_as_identity(own: dict, state: dict) -> dict[str, torch.Tensor]:
    """Zeros for the trunk-writing layers of blocks the checkpoint lacks (a deeper group).

    Such a block then passes its input through unchanged, so the deeper network starts with the
    checkpoint's output; its other layers keep their random init, so gradients reach them.
    """
    have = {m.group(0) for k in state if (m := _BLOCK.match(k))}
    return {k: torch.zeros_like(v) for k, v in own.items()
            if (m := _BLOCK.match(k)) and m.group(0) not in have and k[m.end():].startswith(_BLOCK_WRITES)}


def _grow_head(own: dict, state: dict, take: dict) -> dict[str, torch.Tensor]:
    """Head tensors of `state` embedded in the larger ones of `own`, same function.

    The old channels keep their place (pixel shuffle maps channel 4c+k to c, so the old ones stay
    first at every stage); new output channels keep their random init, and every convolution
    reads the new input channels with zero weights, so the output is unchanged while gradients
    reach both sides (zeros on both sides would never move).
    """
    grown = {}
    for k, mine in own.items():
        old = state.get(k)
        if (k in take or old is None or not k.startswith(_HEAD) or old.ndim != mine.ndim
                or any(a > b for a, b in zip(old.shape, mine.shape))):
            continue
        t = mine.clone()
        if t.ndim == 4:  # conv weight (out, in, kh, kw)
            t[:, old.shape[1]:] = 0
        t[tuple(slice(0, n) for n in old.shape)] = old
        grown[k] = t
    return grown


# Tensors whose second axis is the attention heads, not an input: tiled, never split.
_PER_HEAD = ("relative_position_bias_table",)


def _widen(own: dict, state: dict, take: dict) -> dict[str, torch.Tensor]:
    """The tensors of a trunk of half this width (embed_dim, heads, and the widths made from them),
    doubled so that the wider network computes the same function (Net2WiderNet, Chen et al. 2016).

    Every feature channel c is duplicated as c and c + C ("tiled"), so each head h becomes heads h
    and h + heads with their own copy of the bias table, and a LayerNorm over the duplicated
    channels sees the same mean and variance. A layer reading a duplicated input splits each old
    weight w into a*w and (1 - a)*w between the two copies, a drawn per weight from [0.25, 0.75]:
    the sum is exact, so the output is unchanged, and the two copies get different gradients from
    the first step (an even split would keep them twins for ever). q, k and v are tiled each on
    its own. The head's convolutions, whose width (num_feat) does not change, only read.
    """
    if "conv_first.weight" not in state or "conv_first.weight" not in own:
        return {}
    old_c, new_c = state["conv_first.weight"].shape[0], own["conv_first.weight"].shape[0]
    if new_c != 2 * old_c:
        return {}
    gen = torch.Generator().manual_seed(0)
    grown = {}
    for k, mine in own.items():
        old = state.get(k)
        if k in take or old is None or old.ndim != mine.ndim:
            continue
        doubled = [n == 2 * o for n, o in zip(mine.shape, old.shape)]
        if not any(doubled) or any(n not in (o, 2 * o) for n, o in zip(mine.shape, old.shape)):
            continue
        t = old.detach().clone()
        if k.endswith(("qkv.weight", "qkv.bias")):  # (3C, ...): q, k and v tiled each on its own
            t = t.reshape(3, old.shape[0] // 3, *old.shape[1:])
            t = torch.cat([t, t], dim=1).reshape(2 * old.shape[0], *old.shape[1:])
        elif doubled[0]:
            t = torch.cat([t, t], dim=0)
        if t.ndim >= 2 and doubled[1]:
            if k.endswith(_PER_HEAD):
                t = torch.cat([t, t], dim=1)
            else:  # an input axis: split each weight between its two copies
                a = 0.25 + 0.5 * torch.rand(t.shape, generator=gen)
                t = torch.cat([a * t, (1 - a) * t], dim=1)
        if t.shape != mine.shape:
            continue
        grown[k] = t.to(mine.dtype)
    return grown


class Trainer:
    """One training process. With `world > 1` it is one rank of a data-parallel run; `wrap`
    (e.g. DDP) wraps the network for the gradient all-reduce, and only rank 0 writes files.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, rank: int = 0, world: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, device: torch.device | str = "cpu"):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = torch.device(device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.run_dir = Path(cfg.out)
        state_path = self.run_dir / STATE_FILE
        if state_path.exists() and not resume:
            raise HatstreamError(f"{self.run_dir} already holds a training run; pass --resume to continue it")
        if resume and not state_path.exists():
            raise HatstreamError(f"nothing to resume: {state_path} does not exist")
        if resume and (self.run_dir / CONFIG_FILE).exists():
            # Before any weights are built: a different arch or scale would otherwise surface as
            # load_state_dict's size-mismatch traceback.
            check_resume_changes(config_changes(read_run_config(self.run_dir), cfg), self.run_dir)

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.net = build_network(cfg)
        if cfg.init and not resume:
            left = load_init(self.net, cfg.init)
            log.info("initialised from %s; %d tensors left at random init", cfg.init, len(left))
        elif cfg.start == "bilinear" and not resume:
            bilinear_init(self.net)
        self.net.to(self.device)
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.model = wrap(self.net) if wrap else self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0)
        self.sched = make_scheduler(self.opt, cfg)

        # A chain's second pass (cfg.first_pass): the frozen first pass makes its inputs, and
        # validation scores the whole chain at the chain's scale.
        self.first_pass, self.first_state, first_scale = self._load_first_pass() if cfg.first_pass else (None, None, 1)
        self.first_digest = state_digest(self.first_state) if cfg.first_pass else None
        if resume and cfg.first_pass:
            self._check_first_pass_unchanged()
        self.val_scale = cfg.scale * first_scale
        images = load_hr_images(cfg.data, cfg.frames_per_video)
        pairs = make_pairs(images, cfg.scale, cfg.patch, self._first_pass_image if cfg.first_pass else None,
                           first_scale)
        self.sampler = PatchSampler(pairs, cfg.scale, cfg.patch, seed=cfg.seed + 7919 * rank,
                                    look=CameraLook(cfg.sharpen, cfg.sharpen_amount, cfg.sharpen_sigma,
                                                    cfg.noise, cfg.noise_sigma))
        self.val_images = self._load_val() if rank == 0 and cfg.val else []
        self._first_val: dict[int, torch.Tensor] = {}  # the frozen first pass on each validation image
        self.iter, self.elapsed = 0, 0.0
        self.last_val: Score | None = None
        if resume:
            self._load_state(state_path)
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._record_config(resume, [n for n, _ in images])

    # ---- data and validation -------------------------------------------------------------

    def _load_first_pass(self):
        """(the first pass as an fp32 torch Upscaler, its weights as loaded, its scale)."""
        from hatstream.inference import load_network
        from hatstream.inference.upscaler import Upscaler

        model, info = load_network(self.cfg.first_pass)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # before inference prep
        return Upscaler(model, info, self.device, torch.float32, backend="torch"), state, info.scale

    def _check_first_pass_unchanged(self) -> None:
        """A first pass named by a built-in name changes when the bundled weights do: resuming on
        other weights would train the second pass on another input than it started on."""
        path = self.run_dir / CONFIG_FILE
        recorded = json.loads(path.read_text()).get("first_pass_sha256") if path.exists() else None
        if recorded and recorded != self.first_digest:
            raise HatstreamError(f"{self.run_dir} was trained after other weights of {self.cfg.first_pass} "
                                 f"(sha256 of its tensors {recorded[:12]}..., now {self.first_digest[:12]}...); "
                                 f"resume with those weights, or start a new run")

    def _first_pass_image(self, lr: np.ndarray) -> np.ndarray:
        """The first pass on one float (h, w, 3) image -> float32 (sh, sw, 3), clamped, as the chain runs it."""
        x = torch.from_numpy(lr).permute(2, 0, 1)[None]  # (h, w, 3) -> (1, 3, h, w)
        return self.first_pass(x)[0].permute(1, 2, 0).float().cpu().numpy()  # (1, 3, sh, sw) -> (sh, sw, 3)

    def _load_val(self) -> list[tuple[str, np.ndarray]]:
        images = load_hr_images(self.cfg.val, self.cfg.frames_per_video)
        side = self.cfg.val_max_side
        if side:
            # Centre crops keep validation cheap on a CPU; eval scores whole images.
            out = []
            for name, img in images:
                h, w = img.shape[:2]
                y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
                out.append((name, img[y:y + side, x:x + side]))
            images = out
        return images

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        """EMA network on a (1,3,h,w) batch: pad to the window, crop the result, clamp."""
        h, w = x.shape[-2:]
        xp, _, _ = pad_to_multiple(x, input_multiple(hat_passes(self.ema)))
        return self.ema(xp.to(self.device))[..., : h * self.cfg.scale, : w * self.cfg.scale].clamp(0, 1)

    def validate(self) -> Score | None:
        """Mean PSNR/SSIM-Y of the EMA weights on the validation images (None without any)."""
        if not self.val_images:
            return None
        with torch.inference_mode():
            scores = [score_image(n, img, self.val_scale, self._val_fn(i))
                      for i, (n, img) in enumerate(self.val_images)]
        return mean_score(scores)

    def _val_fn(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """What validation upscales its `i`-th image with: the EMA network, after the first pass if any.

        The first pass is frozen, so its output on a validation image is computed once per run.
        """
        if not self.first_pass:
            return self._upscale

        def chain(x: torch.Tensor) -> torch.Tensor:
            if i not in self._first_val:
                self._first_val[i] = self.first_pass(x)
            return self._upscale(self._first_val[i])
        return chain

    # ---- one step ----------------------------------------------------------------------------

    def step(self) -> float:
        """One optimisation step on this rank's share of the batch; returns the loss (cfg.loss)."""
        self.model.train()
        lr, hr = self.sampler.sample(self.cfg.batch // self.world)  # (b,3,p,p), (b,3,sp,sp)
        lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
        loss = (F.mse_loss if self.cfg.loss == "l2" else F.l1_loss)(self.model(lr), hr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self._update_ema()
        self.iter += 1
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up: with a fixed 0.999 a short run's EMA still holds 0.999**n of the random init
        # (22% after 1,500 steps). (1+n)/(10+n) reaches 0.999 by ~9,000 steps, so the paper's
        # 250k-800k schedules are unchanged in effect.
        d = min(self.cfg.ema, (1 + self.iter) / (10 + self.iter))
        ema_p, net_p = list(self.ema.parameters()), list(self.net.parameters())
        torch._foreach_mul_(ema_p, d)
        torch._foreach_add_(ema_p, net_p, alpha=1 - d)

    # ---- files ------------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """The BasicSR-compatible weights dict; after a first pass, of the whole chain (`models.chain`)."""
        net, ema = self.net.state_dict(), self.ema.state_dict()
        if self.first_state is not None:
            net, ema = join_passes([self.first_state, net]), join_passes([self.first_state, ema])
        return {"params": net, "params_ema": ema}

    def save(self) -> Path:
        """Write the checkpoint and the resume state (rank 0 only); returns the checkpoint path."""
        models = self.run_dir / "models"
        ckpt = models / f"net_g_{self.iter}.pth"
        for path in (ckpt, models / LATEST):
            with atomic_output(path) as tmp:
                torch.save(self.checkpoint(), tmp)
        state = {
            "iter": self.iter, "elapsed": self.elapsed, "net": self.net.state_dict(),
            "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "sampler": json.dumps(self.sampler.state()),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_output(self.run_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)
        return ckpt

    def _load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        # Milestones come from the current config, so a resumed run may extend the schedule.
        sched = dict(state["scheduler"], **{k: v for k, v in self.sched.state_dict().items() if k == "milestones"})
        self.sched.load_state_dict(sched)
        # The learning rate comes from the current config too (fine-tuning resumes with a new one):
        # the saved optimizer and scheduler would bring back the old one.
        for group in self.opt.param_groups:
            group["initial_lr"] = self.cfg.lr
        self.sched.base_lrs = [self.cfg.lr] * len(self.opt.param_groups)
        set_resumed_lr(self.opt, self.sched, self.cfg)  # the schedule's value at this iteration
        self.sampler.set_state(json.loads(state["sampler"]))
        if self.rank:
            # Each rank continues its own stream; rank r's was seeded differently from rank 0's.
            self.sampler.rng = np.random.default_rng([self.cfg.seed + 7919 * self.rank, state["iter"]])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.iter, self.elapsed = int(state["iter"]), float(state["elapsed"])
        log.info("resumed %s at iteration %d", self.run_dir, self.iter)

    def _record_config(self, resume: bool, images: list[str]) -> None:
        """Write config.json; on resume only when something changed, appending what and when."""
        path = self.run_dir / CONFIG_FILE
        record = dict(self.cfg.to_dict(), training_images=images)
        if self.first_digest:
            record["first_pass_sha256"] = self.first_digest
        if resume and path.exists():
            old = json.loads(path.read_text())
            changes = {k: {"was": a, "now": b} for k, (a, b) in config_changes(read_run_config(self.run_dir),
                                                                                 self.cfg).items()}
            if old.get("training_images") != images:
                changes["training_images"] = {"was": len(old.get("training_images") or []), "now": len(images)}
            if not changes:
                return
            record["changes"] = old.get("changes", []) + [{"iter": self.iter, **changes}]
            self._log({"iter": self.iter, "resumed": True, "changes": changes})
            log.info("resumed with changed settings: %s", ", ".join(changes))
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))

    def _log(self, event: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self, progress: ProgressCallback | None = None, time_limit: float | None = None,
            started: float | None = None) -> Path | None:
        """Train to `cfg.iters`; returns the last checkpoint path (rank 0) or None (other ranks).

        `progress` gets a dict after every step: iter, iters, loss (running mean since the last
        log), lr, and val_psnr / val_ssim / bicubic_psnr once validation has run.
        `time_limit` (seconds of wall time, one worker) ends the run early at a step boundary,
        saved, so that `--resume` continues it exactly: for a lent GPU's minutes, or a slot
        between other work. It counts from `started` (a `time.perf_counter()` value; default: now),
        so that a caller can charge the set-up to the same budget.
        """
        cfg = self.cfg
        main = self.rank == 0
        losses: list[float] = []
        ckpt = None
        t0 = time.perf_counter()
        started = t0 if started is None else started
        while self.iter < cfg.iters:
            if time_limit is not None and time.perf_counter() - started >= time_limit:
                log.info("time limit of %.0f s reached at iteration %d of %d", time_limit, self.iter, cfg.iters)
                if main and self.iter:
                    ckpt = self.save()
                return ckpt
            losses.append(self.step())
            now = time.perf_counter()
            self.elapsed += now - t0
            t0 = now
            event = {"iter": self.iter, "iters": cfg.iters, "loss": float(np.mean(losses)),
                     "lr": self.opt.param_groups[0]["lr"]}
            done = self.iter == cfg.iters
            if main and (self.iter % cfg.log_every == 0 or done):
                self._log(dict(event, elapsed=round(self.elapsed, 2)))
                losses = []
            if main and (self.iter % cfg.val_every == 0 or done):
                self.last_val = self.validate()
                if self.last_val:
                    v = self.last_val
                    self._log({"iter": self.iter, "val_psnr": v.psnr, "val_ssim": v.ssim,
                               "bicubic_psnr": v.bicubic_psnr, "bicubic_ssim": v.bicubic_ssim})
            if main and (self.iter % cfg.save_every == 0 or done):
                ckpt = self.save()
            if self.last_val:
                event.update(val_psnr=self.last_val.psnr, val_ssim=self.last_val.ssim,
                             bicubic_psnr=self.last_val.bicubic_psnr)
            if progress and main:
                progress(event)
            t0 = time.perf_counter()  # validation and saving are not training time
        if main and ckpt is None and self.iter:
            ckpt = self.save()  # resumed at or past the target: still leave a checkpoint
        return ckpt


class Trained(NamedTuple):
    """How a `train` call ended: the last checkpoint, the iteration reached, and whether that is the run's end."""

    checkpoint: Path | None
    iteration: int
    finished: bool


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressCallback | None = None,
          gpu: bool = False, time_limit: float | None = None) -> Trained:
    """Train in this process (one worker), on the CPU or with `gpu` on CUDA. `time_limit`: stop,
    saved, once that many seconds have passed since this call (set-up included: the budget is the
    caller's wall time; see `Trainer.fit`); `Trained.finished` says if it did."""
    started = time.perf_counter()
    if gpu and not torch.cuda.is_available():
        raise HatstreamError("--gpu needs a CUDA GPU, and torch sees none here; leave --gpu out to train on the CPU")
    trainer = Trainer(cfg, resume=resume, device="cuda" if gpu else "cpu")
    ckpt = trainer.fit(progress, time_limit=time_limit, started=started)
    return Trained(ckpt, trainer.iter, trainer.iter >= cfg.iters)

