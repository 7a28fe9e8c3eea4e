"""Data-parallel training through Ray Train: TorchTrainer, one Trainer per worker, DDP gradients.

Each worker samples its own patches (seeded by rank) and trains on batch/workers of them; DDP
all-reduces the gradients (gloo on CPUs, NCCL on GPUs), so every rank holds the same weights.
Rank 0 validates, logs and writes the checkpoints into the run folder, which must therefore be
on storage all workers share (one machine, or a shared filesystem across a cluster). The driver
follows rank 0's log.jsonl to feed the CLI's progress bar.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from hatstream.errors import HatstreamError
from hatstream.train.config import TrainConfig
from hatstream.train.trainer import LATEST, ProgressCallback, Trainer

log = logging.getLogger(__name__)


def _worker_loop(config: dict) -> None:
    """Runs on every Ray worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    trainer = Trainer(cfg, resume=config["resume"], rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                      wrap=lambda net: ray.train.torch.prepare_model(net, move_to_device=False), device=device)
    trainer.fit()


class _LogFollower(threading.Thread):
    """Reads new lines of log.jsonl and passes training events to `progress`."""

    def __init__(self, path: Path, progress: ProgressCallback):
        super().__init__(daemon=True)
        self.path, self.progress = path, progress
        self.stop = threading.Event()
        self.offset = path.stat().st_size if path.exists() else 0
        self.val: dict = {}

    def poll(self) -> None:
        """Forward whatever was appended since the last poll."""
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            event = json.loads(line)
            if "val_psnr" in event:
                self.val = {k: event[k] for k in ("val_psnr", "val_ssim", "bicubic_psnr")}
            elif "loss" in event:
                self.progress(dict(event, **self.val))

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()


def train_distributed(cfg: TrainConfig, resume: bool = False, progress: ProgressCallback | None = None,
                      use_gpu: bool = False) -> Path:
    """Train with `cfg.workers` Ray workers (on `cfg.address`, or a local Ray); returns the checkpoint."""
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as exc:
        raise HatstreamError(f"--workers/--address need Ray Train (pip install 'ray[train]'): {exc}") from None

    run_dir = Path(cfg.out).resolve()
    cfg = cfg.replace(out=str(run_dir))
    if (run_dir / "training_state.pt").exists() and not resume:
        raise HatstreamError(f"{run_dir} already holds a training run; pass --resume to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    started_ray = not ray.is_initialized()
    if started_ray:
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False)
        else:
            from hatstream.raylocal import start_local_ray

            start_local_ray(cfg.workers + 1, log_to_driver=False)  # one logical CPU per worker, and the driver
    follower = _LogFollower(run_dir / "log.jsonl", progress) if progress else None
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"cfg": cfg.to_dict(), "resume": resume},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name="hatstream", storage_path=str(run_dir / "ray")),
        )
        if follower:
            follower.start()
        result = trainer.fit()
        if follower:
            follower.stop.set()
            follower.join()
            follower.poll()
        if result.error:
            raise HatstreamError(f"distributed training failed: {result.error}")
    finally:
        if started_ray:
            ray.shutdown()
    ckpt = run_dir / "models" / LATEST
    if not ckpt.exists():
        raise HatstreamError(f"distributed training finished without writing {ckpt}")
    return ckpt
