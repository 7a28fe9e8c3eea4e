"""Reading and writing still images (PNG, JPEG) as float RGB plus optional alpha; knows no model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hatstream.atomic import atomic_output
from hatstream.errors import HatstreamError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Image:
    """An image split for upscaling: RGB float32 (H, W, 3) in [0, 1], alpha likewise or None."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int  # 8 or 16
    grey: bool


def read_image(path: Path) -> Image:
    """Read an 8- or 16-bit PNG/JPEG, grey or colour, with or without alpha."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise HatstreamError(f"input {path} does not exist")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise HatstreamError(f"input {path} is not a readable PNG or JPEG image")
    if img.dtype == np.uint8:
        depth, peak = 8, 255.0
    elif img.dtype == np.uint16:
        depth, peak = 16, 65535.0
    else:
        raise HatstreamError(f"input {path} has unsupported sample type {img.dtype}")
    img = img.astype(np.float32) / peak
    grey = img.ndim == 2 or img.shape[2] in (1, 2)
    if img.ndim == 2:
        img = img[..., None]
    alpha = img[..., -1] if img.shape[2] in (2, 4) else None
    colour = img[..., :1] if grey else img[..., 2::-1]  # OpenCV stores BGR(A)
    rgb = np.repeat(colour, 3, axis=2) if grey else colour
    return Image(np.ascontiguousarray(rgb), alpha, depth, grey)


def write_image(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, bit_depth: int, grey: bool,
                overwrite: bool = True) -> None:
    """Write float RGB (and alpha) in [0, 1] atomically; JPEG is always 8-bit."""
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise HatstreamError(f"output {path} must end in one of {', '.join(IMAGE_EXTENSIONS)}")
    if ext != ".png":
        bit_depth, alpha = 8, None  # JPEG holds neither 16 bits nor alpha
    peak = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    planes = [rgb.mean(axis=2, keepdims=True)] if grey else [rgb[..., ::-1]]
    if alpha is not None:
        planes.append(alpha[..., None])
    out = np.concatenate(planes, axis=2)
    out = np.rint(np.clip(out, 0, 1) * peak).astype(dtype)
    ok, buf = cv2.imencode(ext, out if out.shape[2] > 1 else out[..., 0])
    if not ok:
        raise HatstreamError(f"could not encode {path}")
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(buf.tobytes())
