"""Colour conversion between planar YUV/GBR frames and RGB float tensors, in torch.

Frames travel through the pipeline as compact integer planes (uint8 or uint16 numpy arrays, one
per plane, chroma possibly subsampled). The model wants RGB in [0, 1]. The conversion lives here,
in torch, so that it runs on the same device as the model (on a GPU the 4K RGB<->YUV maths is
nearly free, on the CPU it avoids swscale's rgb24 round trip), and so that 10-bit and 12-bit
samples are never truncated to 8 bits on the way.

This module knows nothing about models or containers; `PlaneLayout` and `ColourSpec` are
plain descriptions that the decoder derives from each stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F

# Luma coefficients (Kr, Kb) per matrix. The names are ours; `matrix_from_tag` maps FFmpeg's
# AVColorSpace numbers onto them.
MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "fcc": (0.30, 0.11),
    "smpte240m": (0.212, 0.087),
}

# AVColorSpace values (libavutil/pixfmt.h) -> our matrix names. 0 is AVCOL_SPC_RGB (planar
# GBR), 2 is "unspecified", 10 (BT.2020 constant luminance) is treated as non-constant, which is
# what nearly every decoder in practice does as well.
_MATRIX_TAGS = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt601", 6: "bt601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
# The inverse, for writing the tag we converted with onto frames whose stream had none.
MATRIX_TAG = {"rgb": 0, "bt709": 1, "fcc": 4, "bt601": 6, "smpte240m": 7, "bt2020": 9}

# AVColorRange: 1 = MPEG (limited, "TV"), 2 = JPEG (full, "PC").
RANGE_LIMITED, RANGE_FULL = 1, 2


@dataclass(frozen=True)
class PlaneLayout:
    """How one frame's samples are laid out: planar YUV (or planar GBR) at some bit depth.

    `chroma_shift` is (log2 horizontal, log2 vertical) subsampling, e.g. (1, 1) for 4:2:0.
    """

    pix_fmt: str
    bit_depth: int
    chroma_shift: tuple[int, int]
    is_rgb: bool = False

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of one sample: uint8 up to 8 bits, little-endian uint16 above."""
        return np.dtype(np.uint8) if self.bit_depth <= 8 else np.dtype("<u2")

    @property
    def max_value(self) -> int:
        """The largest code value, e.g. 1023 for 10-bit."""
        return (1 << self.bit_depth) - 1

    def plane_shapes(self, width: int, height: int) -> list[tuple[int, int]]:
        """(height, width) of each plane; chroma sizes round up, as FFmpeg's do for odd sizes."""
        if self.is_rgb:
            return [(height, width)] * 3
        sx, sy = self.chroma_shift
        chroma = (-((-height) >> sy), -((-width) >> sx))
        return [(height, width), chroma, chroma]

    @classmethod
    def from_pix_fmt(cls, name: str) -> "PlaneLayout | None":
        """The layout of a pixel format we can work on directly, or None (use `canonical_pix_fmt`).

        Accepted: three-plane little-endian YUV (yuv420p, yuv422p10le, yuvj444p, ...) and GBR
        (gbrp, gbrp12le, ...), 8 to 16 bits. Anything packed, paletted, with alpha, or
        semi-planar (nv12, p010) is not accepted here; the decoder converts it first.
        """
        try:
            fmt = av.VideoFormat(name)
        except (ValueError, av.error.FFmpegError):
            return None
        comps = fmt.components
        if (len(comps) != 3 or not fmt.is_planar or fmt.is_big_endian or fmt.has_palette
                or fmt.is_bayer or re.search(r"f\d", name)):
            return None
        if sorted(c.plane for c in comps) != [0, 1, 2]:
            return None
        bits = {c.bits for c in comps}
        if len(bits) != 1 or not 8 <= next(iter(bits)) <= 16:
            return None
        if fmt.is_rgb:
            return cls(name, bits.pop(), (0, 0), is_rgb=True)
        if not name.startswith("yuv"):
            return None
        return cls(name, bits.pop(), _chroma_shift(fmt))


def _chroma_shift(fmt: av.VideoFormat) -> tuple[int, int]:
    """log2 of the chroma subsampling: the chroma size of a 1024x1024 frame gives it exactly."""
    w, h = fmt.chroma_width(1024), fmt.chroma_height(1024)
    return (1024 // max(w, 1)).bit_length() - 1, (1024 // max(h, 1)).bit_length() - 1


def canonical_pix_fmt(name: str) -> str:
    """A pixel format `PlaneLayout` accepts that holds `name`'s samples without loss.

    Semi-planar and packed formats are repacked (nv12 -> yuv420p, p010le -> yuv420p10le,
    rgb24 -> gbrp); alpha is dropped, since the models see three channels only.
    """
    if PlaneLayout.from_pix_fmt(name) is not None:
        return name
    fmt = av.VideoFormat(name)
    depth = max(c.bits for c in fmt.components)
    suffix = "" if depth <= 8 else f"{min((d for d in (10, 12) if d >= depth), default=16)}le"
    if fmt.is_rgb or fmt.has_palette:
        return "gbrp" + suffix
    if len(fmt.components) <= 2:  # gray, gray10le, ya8: luma only -> 4:4:4 with neutral chroma
        return "yuv444p" + suffix
    base = {(1, 1): "yuv420p", (1, 0): "yuv422p", (0, 0): "yuv444p", (0, 1): "yuv440p"}.get(_chroma_shift(fmt), "yuv444p")
    if base == "yuv440p" and suffix not in ("", "10le", "12le"):
        base = "yuv444p"
    return base + suffix


@dataclass(frozen=True)
class ColourSpec:
    """Which matrix and range turn the planes into RGB: 'bt601' / 'bt709' / 'bt2020' / ... / 'rgb'."""

    matrix: str
    full_range: bool

    @classmethod
    def from_tags(cls, colorspace: int, color_range: int, height: int, layout: PlaneLayout) -> "ColourSpec":
        """The spec for a stream's AVColorSpace/AVColorRange tags.

        Untagged streams get what players assume: BT.709 from 720 lines up, BT.601 below it, and
        limited range for YUV, except the JPEG formats (yuvj*), which are full range by name.
        GBR is always full range.
        """
        if layout.is_rgb:
            return cls("rgb", True)
        matrix = _MATRIX_TAGS.get(int(colorspace))
        if matrix is None or matrix == "rgb":
            matrix = "bt709" if height >= 720 else "bt601"
        full = int(color_range) == RANGE_FULL or (int(color_range) != RANGE_LIMITED and layout.pix_fmt.startswith("yuvj"))
        return cls(matrix, full)


def _scales(layout: PlaneLayout, spec: ColourSpec) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma offset, chroma span) in code values for this depth/range."""
    k = float(1 << (layout.bit_depth - 8))
    if spec.full_range:
        top = float(layout.max_value)
        return 0.0, top, float(1 << (layout.bit_depth - 1)), top
    return 16.0 * k, 219.0 * k, 128.0 * k, 224.0 * k


def planes_to_rgb(planes: list[torch.Tensor], layout: PlaneLayout, spec: ColourSpec) -> torch.Tensor:
    """Integer planes, each (B, h, w), to RGB float32 (B, 3, H, W) in [0, 1] (not clamped).

    Subsampled chroma is upsampled bilinearly to the luma size before the matrix is applied.
    """
    y, u, v = (p.to(torch.float32) for p in planes)
    height, width = y.shape[-2:]
    if layout.is_rgb:  # planar GBR: plane 0 is G, 1 is B, 2 is R
        return torch.stack((v, y, u), dim=1) / layout.max_value
    if u.shape[-2:] != (height, width):
        uv = F.interpolate(torch.stack((u, v), dim=1), size=(height, width), mode="bilinear", align_corners=False)
        u, v = uv[:, 0], uv[:, 1]
    y_off, y_span, c_off, c_span = _scales(layout, spec)
    yn = (y - y_off) / y_span
    cb = (u - c_off) / c_span
    cr = (v - c_off) / c_span
    kr, kb = MATRICES[spec.matrix]
    kg = 1.0 - kr - kb
    r = yn + 2.0 * (1.0 - kr) * cr
    b = yn + 2.0 * (1.0 - kb) * cb
    g = (yn - kr * r - kb * b) / kg
    return torch.stack((r, g, b), dim=1)


def rgb_to_planes(rgb: torch.Tensor, layout: PlaneLayout, spec: ColourSpec) -> list[torch.Tensor]:
    """RGB float (B, 3, H, W) in [0, 1] to integer planes for `layout` (uint8 or uint16 tensors).

    Chroma is subsampled with a box filter (the mean of each 2x2 or 2x1 block). Values are
    rounded and clamped to the code range of the bit depth; nothing is truncated.
    """
    rgb = rgb.to(torch.float32)
    out_dtype = torch.uint8 if layout.bit_depth <= 8 else torch.uint16
    top = layout.max_value

    def quantise(x: torch.Tensor) -> torch.Tensor:
        return x.round_().clamp_(0, top).to(out_dtype)

    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if layout.is_rgb:
        return [quantise(g * top), quantise(b * top), quantise(r * top)]
    kr, kb = MATRICES[spec.matrix]
    yn = kr * r + (1.0 - kr - kb) * g + kb * b
    cb = (b - yn) / (2.0 * (1.0 - kb))
    cr = (r - yn) / (2.0 * (1.0 - kr))
    y_off, y_span, c_off, c_span = _scales(layout, spec)
    sx, sy = layout.chroma_shift
    if sx or sy:
        # ceil_mode keeps the last half block of odd sizes; its mean is over the pixels present.
        cbcr = F.avg_pool2d(torch.stack((cb, cr), dim=1), kernel_size=(1 << sy, 1 << sx), ceil_mode=True)
        cb, cr = cbcr[:, 0], cbcr[:, 1]
    return [quantise(yn * y_span + y_off), quantise(cb * c_span + c_off), quantise(cr * c_span + c_off)]


def planes_to_tensors(frames: list[tuple[np.ndarray, ...]], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Stack a batch of frames' planes into one (B, h, w) tensor per plane on `device`."""
    tensors = []
    for i in range(len(frames[0])):
        stacked = torch.from_numpy(np.stack([f[i] for f in frames]))
        tensors.append(stacked.to(device, non_blocking=True))
    return tensors


def tensors_to_planes(planes: list[torch.Tensor]) -> list[tuple[np.ndarray, ...]]:
    """Split per-plane (B, h, w) tensors back into a list of per-frame plane tuples (numpy, CPU)."""
    arrays = [p.cpu().numpy() for p in planes]
    return [tuple(np.ascontiguousarray(a[i]) for a in arrays) for i in range(arrays[0].shape[0])]
