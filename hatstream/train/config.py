"""Training configuration: a frozen dataclass, architecture presets, and TOML presets (`pipelines/`)."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hatstream.errors import HatstreamError
from hatstream.models.hat import HATConfig

CONFIG_FILE = "config.json"  # in the run folder: the run's settings, and what each resume changed

# Released configurations (notes §1): window 16, overlap 0.5, mlp 2, img_range 1, pixelshuffle.
_RELEASED = dict(window_size=16, overlap_ratio=0.5, mlp_ratio=2.0, img_range=1.0, upsampler="pixelshuffle",
                 resi_connection="1conv")

# The bundled models' family: one group, two heads, window 8 (see "hat-tiny" below for why).
_TINY = dict(embed_dim=32, num_heads=(2,), window_size=8, compress_ratio=2, squeeze_factor=16, mlp_ratio=2.0)

# Training presets: HAT architectures by name; `upscale` is added from the training scale.
TRAIN_PRESETS: dict[str, dict] = {
    "hat-s": dict(_RELEASED, embed_dim=144, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=24,
                  squeeze_factor=24),
    "hat": dict(_RELEASED, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=3,
                squeeze_factor=30),
    "hat-l": dict(_RELEASED, embed_dim=180, depths=(6,) * 12, num_heads=(6,) * 12, compress_ratio=3,
                  squeeze_factor=30),
    # The bundled models: chosen for CPU speed. One group (OCAB per group is the costliest block
    # at this width), window 8, and a 16-wide reconstruction head, because at x4 the head's
    # convolutions run at 2x and 4x resolution and would otherwise outweigh the whole trunk.
    "hat-tiny": dict(_TINY, depths=(4,), num_feat=16),
    # hat-tiny with a 32-wide head, for x4: the head's linear upsampling chain folds into one
    # LR-resolution convolution at inference (models.hat_head), so its width costs little there.
    "hat-tiny-wide": dict(_TINY, depths=(4,), num_feat=32),
    # One more block than hat-tiny-wide: what the x4 frame time affords once the head is folded.
    "hat-tiny-plus": dict(_TINY, depths=(5,), num_feat=32),
    # Issue 17: deeper, to spend the peer's (waifu2x's) frame time. Both grow from the bundled
    # weights without changing their output (train.trainer.load_init: blocks start as the identity,
    # the 16-wide x2 head widens to 32). x2: ~1.5x hat-tiny-x2's frame; x4: waifu2x's x4 is two x2
    # passes (~5x its x2 time), so depth 10 leaves room.
    "hat-tiny-d8": dict(_TINY, depths=(8,), num_feat=32),
    "hat-tiny-d10": dict(_TINY, depths=(10,), num_feat=32),
    # Stage C of issue 17: the shipped d8 x2 grown by half again (~1.4x its frame, still well inside
    # waifu2x's), since its own longer and larger-patch training went flat on validation.
    "hat-tiny-d12": dict(_TINY, depths=(12,), num_feat=32),
    # Stage W of issue 17: the shipped d8 x2 at twice the width (embed 64, 4 heads), grown from it without
    # changing its output (train.trainer._widen): ~2.0 s per 640x360 frame against waifu2x's 2.4-2.9 s on
    # the same CPU, where the d8 takes 1.0 s; every fine-tune at width 32 went flat on validation.
    "hat-tiny-w64": dict(_TINY, embed_dim=64, num_heads=(4,), depths=(8,), num_feat=32),
    # For tests and smoke runs only: seconds per hundred iterations.
    "hat-micro": dict(embed_dim=16, depths=(1,), num_heads=(1,), window_size=8, compress_ratio=2,
                      squeeze_factor=8, mlp_ratio=2.0, num_feat=8),
}


def hat_config(arch: str, scale: int) -> HATConfig:
    """The HATConfig of architecture preset `arch` at `scale`."""
    if arch not in TRAIN_PRESETS:
        raise HatstreamError(f"unknown architecture {arch!r}; choose one of {', '.join(TRAIN_PRESETS)}")
    try:
        return HATConfig(upscale=scale, **TRAIN_PRESETS[arch])
    except ValueError as exc:
        raise HatstreamError(f"architecture {arch} at x{scale}: {exc}") from None


LOSSES = ("l1", "l2")  # TrainConfig.loss


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults follow the paper (notes §8) except the size.

    `batch` is the total batch over all workers; `patch` is the LR patch side (HR = patch*scale).
    `milestones` are the iterations where the learning rate is multiplied by `gamma`.
    """

    data: tuple[str, ...] = ()
    out: str = ""
    scale: int = 2
    arch: str = "hat"
    init: str | None = None
    # A model (built-in name or checkpoint) run on the bicubic LR before the network, frozen: the
    # network learns to upscale its output by `scale`, and checkpoints hold the two as one chain
    # (models.chain), e.g. x4 as hat-tiny-x2 then a second x2 trained on what it leaves.
    first_pass: str | None = None
    # A chain trained whole (models.chain): e.g. (2, 2) trains x4 as two `arch` networks at x2, end to
    # end on the x4 LR (`scale` must be their product). Empty: one network at `scale`.
    pass_scales: tuple[int, ...] = ()
    # Starting weights when there is no --init: "random" (the reference's init) or "bilinear"
    # (the network starts as a bilinear upscaler; hatstream.train.init), for short CPU runs.
    start: str = "random"
    iters: int = 500_000
    lr: float = 2e-4
    milestones: tuple[int, ...] = (250_000, 400_000, 450_000, 475_000)
    gamma: float = 0.5
    # "step" (milestones and gamma, the paper's) or "cosine" (lr down to lr_min at iters; train.schedule).
    schedule: str = "step"
    lr_min: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    # "l1" (the paper's) or "l2": mean squared error is what PSNR measures, and it weighs the large
    # errors at strong edges more than L1 does; the usual last stage for a PSNR-oriented model.
    loss: str = "l1"
    batch: int = 32
    patch: int = 64
    # The look of camera frames on a share of the patches' HR before their LR is made (train.data.CameraLook;
    # video frames have it, clean photos lack it): the probability of a camera's sharpening, the uniform
    # ranges of its unsharp-mask amount and Gaussian sigma (HR px); the probability of grey sensor noise,
    # the range of its sigma (levels of 255).
    sharpen: float = 0.0
    sharpen_amount: tuple[float, float] = (0.25, 1.0)
    sharpen_sigma: tuple[float, float] = (0.5, 1.5)
    noise: float = 0.0
    noise_sigma: tuple[float, float] = (0.5, 4.0)
    ema: float = 0.999
    val: tuple[str, ...] = ()
    val_every: int = 5000
    val_max_side: int = 0  # centre-crop validation HR images to this side (0: whole images)
    save_every: int = 5000
    log_every: int = 100
    seed: int = 0
    threads: int = 0  # torch intra-op threads per worker (0: torch's default)
    frames_per_video: int = 64
    workers: int = 1
    address: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes kept in the run record

    def __post_init__(self):
        for name in ("data", "val", "milestones", "pass_scales"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        for name in ("betas", "sharpen_amount", "sharpen_sigma", "noise_sigma"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.scale not in (2, 3, 4, 8):
            raise HatstreamError(f"scale must be 2, 3, 4 or 8, got {self.scale}")
        for name in ("iters", "batch", "patch", "workers", "val_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise HatstreamError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch % self.workers:
            raise HatstreamError(f"batch {self.batch} does not split evenly over {self.workers} workers")
        if not self.lr > 0:
            raise HatstreamError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("step", "cosine"):
            raise HatstreamError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.lr_min <= self.lr:
            raise HatstreamError(f"lr_min must be between 0 and lr ({self.lr}), got {self.lr_min}")
        if self.loss not in LOSSES:
            raise HatstreamError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        self._check_camera_look()
        if self.start not in ("random", "bilinear"):
            raise HatstreamError(f"start must be 'random' or 'bilinear', got {self.start!r}")
        for s in self.pass_scales or (self.scale,):
            hat_config(self.arch, s)  # validates the name early
        if self.pass_scales:
            if math.prod(self.pass_scales) != self.scale or len(self.pass_scales) < 2:
                raise HatstreamError(f"pass_scales {list(self.pass_scales)} must be two or more scales whose "
                                     f"product is the scale ({self.scale})")
            if self.first_pass:
                raise HatstreamError("first_pass and pass_scales do not mix: train the chain whole, or its "
                                     "last pass after a frozen first")
            if self.start == "bilinear":
                raise HatstreamError("start 'bilinear' is for a single network, not a chain (pass_scales)")
        window = TRAIN_PRESETS[self.arch]["window_size"]
        if self.patch % window:
            raise HatstreamError(f"patch {self.patch} must be a multiple of {self.arch}'s window ({window})")

    def _check_camera_look(self) -> None:
        for name in ("sharpen", "noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise HatstreamError(f"{name} is a probability (0 to 1), got {getattr(self, name)}")
        # sigma's top: the context the sampler cuts around a changed patch (PatchSampler.MARGIN).
        for name, lo, hi in (("sharpen_amount", 0.0, 4.0), ("sharpen_sigma", 0.1, 1.5), ("noise_sigma", 0.0, 64.0)):
            value = getattr(self, name)
            if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
                raise HatstreamError(f"{name} must be [low, high] with {lo} <= low <= high <= {hi}, "
                                     f"got {list(value)}")
        if (self.sharpen or self.noise) and self.first_pass:
            raise HatstreamError("sharpen and noise make a patch's LR by bicubic from its changed HR; with "
                                 "first_pass the input is the first pass's output, so they do not mix")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (None values are ignored, so CLI flags can pass through)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        """Plain dict, for the run record and the model card."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Load a preset such as `pipelines/train-hat-x2.toml`; keyword overrides win (None ignored)."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise HatstreamError(f"cannot read training preset {path}: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        flat = {}
        for key, value in raw.items():
            # Tables ([model], [schedule], ...) only group keys for readers; flatten them.
            items = value.items() if isinstance(value, dict) and key != "extra" else [(key, value)]
            for k, v in items:
                k = k.replace("-", "_")
                if k not in known:
                    raise HatstreamError(f"{path}: unknown training setting {k!r}")
                flat[k] = v
        flat.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**flat)


# What a resumed run may not change: the network's shape, its starting point and the seed are
# what the saved weights and optimizer state were made with.
FIXED_ON_RESUME = ("arch", "scale", "init", "start", "seed", "first_pass", "pass_scales")


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run folder's config.json (extra keys there are ignored)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise HatstreamError(f"nothing to resume: {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise HatstreamError(f"cannot read {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


def config_changes(old: TrainConfig, new: TrainConfig) -> dict[str, tuple]:
    """{field: (old, new)} for every setting that differs; `out` is where the run is, not a setting."""
    return {f.name: (getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(TrainConfig)
            if f.compare and f.name != "out" and getattr(old, f.name) != getattr(new, f.name)}


def check_resume_changes(changes: dict[str, tuple], run_dir: str | Path) -> None:
    """Refuse, in one line, a resume that changes what the saved run was made with."""
    fixed = [k for k in FIXED_ON_RESUME if k in changes]
    if fixed:
        said = ", ".join(f"{k} {changes[k][0]!r} (asked: {changes[k][1]!r})" for k in fixed)
        raise HatstreamError(f"{run_dir} was trained with {said}; a resumed run keeps those. Start a new run "
                             f"(another --out, with --init from this run's checkpoint) to change them")


def resumed_config(run_dir: str | Path, **changes) -> TrainConfig:
    """The run's saved config with `changes` applied (None values ignored), checked for resuming."""
    saved = read_run_config(run_dir)
    cfg = saved.replace(**changes).replace(out=str(run_dir))
    check_resume_changes(config_changes(saved, cfg), run_dir)
    return cfg
