"""Training data: HR images from folders, image files or videos; paired LR/HR patches on the fly.

Each HR image is cropped to a multiple of the scale and downscaled once with MATLAB-compatible
bicubic (the LR is kept in float, not rounded, as HAT's ImageNet pairs are). Batches are then
aligned LR/HR crops of the whole-image pair with random flips and 90-degree rotations, so the
LR patch is exactly what the full-image degradation gives, edges included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from hatstream.errors import HatstreamError
from hatstream.metrics.imresize import imresize

log = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".y4m"}


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3); grey is replicated, alpha dropped, 16-bit reduced."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise HatstreamError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img.astype(np.float64) / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1])  # BGR -> RGB


def read_video_frames(path: Path, count: int) -> list[np.ndarray]:
    """`count` frames spread evenly across a video, as uint8 RGB, found by seeking (no full decode).

    The file is opened as `hatstream run` opens its input (a local file, the video demuxers only).
    """
    import av  # only videos need PyAV

    from hatstream.media.probe import open_input, pick_video_stream

    frames: list[np.ndarray] = []
    try:
        with open_input(path) as container:
            stream = pick_video_stream(container)
            if stream is None:
                raise HatstreamError(f"training data {path} has no video stream (audio only?)")
            duration = (float(stream.duration * stream.time_base) if stream.duration
                        else (container.duration or 0) / 1e6)
            starts = np.linspace(0.0, max(duration, 0.0), num=count, endpoint=False) if duration > 0 else [0.0]
            for t in starts:
                container.seek(int(t / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.time is None or frame.time + 1e-6 >= t:
                        frames.append(frame.to_ndarray(format="rgb24"))
                        break
    except av.error.FFmpegError as exc:
        raise HatstreamError(f"cannot read video {path}: {exc}") from None
    if not frames:
        raise HatstreamError(f"no frames could be decoded from {path}")
    return frames


def list_sources(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """Expand folders (recursively) to their image and video files, sorted; check files exist."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            if not found:
                raise HatstreamError(f"folder {p} holds no images or videos")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise HatstreamError(f"training data {p} does not exist")
    return out


def load_hr_images(paths: tuple[str, ...] | list[str], frames_per_video: int = 64) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB image) for every image and sampled video frame under `paths`."""
    images = []
    for f in list_sources(paths):
        if f.suffix.lower() in VIDEO_EXTS:
            frames = read_video_frames(f, frames_per_video)
            images += [(f"{f.name}#{i}", fr) for i, fr in enumerate(frames)]
        else:
            images.append((f.name, read_image(f)))
    return images


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of `scale` (the SR evaluation convention)."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic downscale of a uint8 HR image (multiple of scale) -> float32 [0, 1], unrounded."""
    return imresize(hr.astype(np.float64) / 255.0, 1.0 / scale).astype(np.float32)


def unsharp(img: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """A camera's sharpening: uint8 img + amount * (img - Gaussian(img, sigma)), clipped and rounded."""
    f = img.astype(np.float32)
    blurred = cv2.GaussianBlur(f, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.clip(f + amount * (f - blurred), 0, 255).round().astype(np.uint8)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Grey (luma) Gaussian noise of `sigma` levels on a uint8 image, clipped and rounded."""
    grain = rng.normal(0.0, sigma, img.shape[:2]).astype(np.float32)[..., None]
    return np.clip(img + grain, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class CameraLook:
    """HR-side augmentation: the look of camera frames, given to a share of the patches before their
    LR is made. With probability `noise` the HR gets grey sensor noise (`add_noise`, sigma drawn from
    `noise_sigma`), then with probability `sharpen` a camera's sharpening (`unsharp`, amount and sigma
    drawn from the ranges), in the order a camera applies them.

    Why: camera frames carry sensor noise and sharpening halos that clean photos (wallpapers, downscaled
    with soft filters) lack, and a ground truth with either is where the bundled x2 loses ground to a
    peer: on the validation photos at half size with noise of 2 levels in the HR, its lead over waifu2x
    fell from +0.16 dB to -0.04; with their HR unsharp-masked (amount 0.8, sigma 1) waifu2x's lead grew
    by 0.21 dB. (Fine-tuning the bundled x2 with either did not move its validation: benchmarks/RESULTS.md.)
    """

    sharpen: float = 0.0
    amount: tuple[float, float] = (0.25, 1.0)
    sigma: tuple[float, float] = (0.5, 1.5)
    noise: float = 0.0
    noise_sigma: tuple[float, float] = (0.5, 4.0)

    @property
    def on(self) -> bool:
        """Whether any patch is changed at all."""
        return self.sharpen > 0 or self.noise > 0


@dataclass
class Pair:
    """One training image: float32 LR (h, w, 3) and uint8 HR (h*s, w*s, 3)."""

    name: str
    lr: np.ndarray
    hr: np.ndarray


FirstPass = Callable[[np.ndarray], np.ndarray]  # float32 (h, w, 3) [0, 1] -> float32 (sh, sw, 3) [0, 1]


def make_pairs(images: list[tuple[str, np.ndarray]], scale: int, min_lr: int,
               first_pass: FirstPass | None = None, first_scale: int = 1) -> list[Pair]:
    """Pairs for patch sampling; images smaller than an HR patch are first enlarged (bilinear).

    With `first_pass` (a frozen model of scale `first_scale`), the network's input is that model's
    output on the bicubic LR at `scale * first_scale`: the second pass of a chain learns from what
    the first pass really leaves, not from a bicubic LR it will never see.
    """
    pairs = []
    whole = scale * first_scale
    for name, hr in images:
        h, w = hr.shape[:2]
        need = -(-min_lr * scale // whole) * whole
        if h < need or w < need:
            # As HAT's ImageNet pairs do: bilinear upsizing of small GT images to the patch size.
            f = need / min(h, w)
            hr = cv2.resize(hr, (max(need, round(w * f)), max(need, round(h * f))), interpolation=cv2.INTER_LINEAR)
        hr = modcrop(hr, whole)
        lr = make_lr(hr, whole)
        pairs.append(Pair(name, first_pass(lr) if first_pass else lr, hr))
    return pairs


class PatchSampler:
    """Random aligned (LR, HR) patches with flips and rotations, as float tensors in [0, 1].

    Images are drawn in proportion to the square root of their area: large photos are sampled
    more, but one huge image (often mostly background) does not crowd out the rest.
    """

    # LR pixels of context around a changed patch: the bicubic kernel's reach (2 LR px at any scale)
    # plus the sharpening blur's (4 sigma, at most 6 HR px), so the patch's LR is that of the whole
    # changed image.
    MARGIN = 6

    def __init__(self, pairs: list[Pair], scale: int, patch: int, seed: int, look: CameraLook | None = None):
        if not pairs:
            raise HatstreamError("no training images")
        self.pairs, self.scale, self.patch = pairs, scale, patch
        self.look = look if look and look.on else None
        areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in pairs], dtype=np.float64)
        self.weights = np.sqrt(areas) / np.sqrt(areas).sum()
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, p, p) LR and (B, 3, p*s, p*s) HR."""
        s, p = self.scale, self.patch
        lrs, hrs = [], []
        for i in self.rng.choice(len(self.pairs), size=batch, p=self.weights):
            pair = self.pairs[i]
            h, w = pair.lr.shape[:2]
            y, x = self.rng.integers(0, h - p + 1), self.rng.integers(0, w - p + 1)
            # Drawn only for what is on, so that runs without it keep their sample stream.
            look = self.look
            sharpen = bool(look and look.sharpen and self.rng.random() < look.sharpen)
            noise = bool(look and look.noise and self.rng.random() < look.noise)
            if sharpen or noise:
                lr, hr = self._camera(pair, y, x, sharpen, noise)
            else:
                lr = pair.lr[y:y + p, x:x + p]
                hr = pair.hr[y * s:(y + p) * s, x * s:(x + p) * s]
            # flip, flip, transpose: together with the flips, all 8 dihedral orientations.
            if self.rng.random() < 0.5:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            if self.rng.random() < 0.5:
                lr, hr = lr[::-1], hr[::-1]
            if self.rng.random() < 0.5:
                lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
            lrs.append(np.ascontiguousarray(lr))
            hrs.append(np.ascontiguousarray(hr))
        # (B, p, p, 3) -> (B, 3, p, p)
        lr_t = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).contiguous()
        hr_t = torch.from_numpy(np.stack(hrs)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return lr_t, hr_t

    def _camera(self, pair: Pair, y: int, x: int, sharpen: bool, noise: bool) -> tuple[np.ndarray, np.ndarray]:
        """The patch at LR (y, x) with the camera look on its HR (CameraLook) and its LR made from that by
        the pairs' degradation (a crop near the image's edge sees the same symmetric border as the
        whole image would)."""
        s, p, m = self.scale, self.patch, self.MARGIN
        h, w = pair.lr.shape[:2]
        y0, x0, y1, x1 = max(0, y - m), max(0, x - m), min(h, y + p + m), min(w, x + p + m)
        hr = pair.hr[y0 * s:y1 * s, x0 * s:x1 * s]
        if sharpen:
            amount, sigma = self.rng.uniform(*self.look.amount), self.rng.uniform(*self.look.sigma)
        if noise:
            hr = add_noise(hr, self.rng.uniform(*self.look.noise_sigma), self.rng)
        if sharpen:
            hr = unsharp(hr, amount, sigma)
        ly, lx = y - y0, x - x0
        lr = make_lr(hr, s)[ly:ly + p, lx:lx + p]
        return lr, hr[ly * s:(ly + p) * s, lx * s:(lx + p) * s]

    def state(self) -> dict:
        """The generator state, so a resumed run continues the same sample stream."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore `state()`."""
        self.rng.bit_generator.state = state
