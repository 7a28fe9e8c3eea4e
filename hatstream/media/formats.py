"""Pixel layouts and colour descriptions of decoded frames (no torch here, so probing stays light).

`PlaneLayout` says how a frame's samples are stored (planar YUV or GBR, subsampling, bit depth);
`ColourSpec` says which matrix and range turn them into RGB. The decoder derives both from each
stream, the encoder chooses them for the output, and `hatstream.media.colour` does the maths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

# Luma coefficients (Kr, Kb) per matrix. The names are ours; `ColourSpec.from_tags` maps FFmpeg's
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
    `has_alpha`: a fourth, full-size plane of opacity follows (yuva420p, gbrap, ...); it is
    never part of the colour maths.
    """

    pix_fmt: str
    bit_depth: int
    chroma_shift: tuple[int, int]
    is_rgb: bool = False
    has_alpha: bool = False

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
        alpha = [(height, width)] if self.has_alpha else []
        if self.is_rgb:
            return [(height, width)] * 3 + alpha
        sx, sy = self.chroma_shift
        chroma = (-((-height) >> sy), -((-width) >> sx))
        return [(height, width), chroma, chroma] + alpha

    def without_alpha(self) -> "PlaneLayout":
        """The same layout with no alpha plane (yuva420p -> yuv420p, gbrap10le -> gbrp10le)."""
        if not self.has_alpha:
            return self
        name = self.pix_fmt.replace("yuva", "yuv", 1).replace("gbrap", "gbrp", 1)
        return PlaneLayout(name, self.bit_depth, self.chroma_shift, self.is_rgb)

    def with_alpha(self) -> "PlaneLayout | None":
        """The same layout with an alpha plane, or None where FFmpeg has no such format (yuva440p)."""
        if self.has_alpha:
            return self
        name = self.pix_fmt.replace("yuvj", "yuv", 1)
        name = name.replace("yuv", "yuva", 1) if not self.is_rgb else name.replace("gbrp", "gbrap", 1)
        found = PlaneLayout.from_pix_fmt(name)
        return found if found is not None and found.has_alpha else None

    @classmethod
    def from_pix_fmt(cls, name: str) -> "PlaneLayout | None":
        """The layout of a pixel format we can work on directly, or None (use `canonical_pix_fmt`).

        Accepted: three-plane little-endian YUV (yuv420p, yuv422p10le, yuvj444p, ...) and GBR
        (gbrp, gbrp12le, ...), 8 to 16 bits, each optionally with a fourth plane of alpha
        (yuva420p, yuva444p10le, gbrap, ...). Anything packed, paletted or semi-planar (nv12,
        p010, rgba) is not accepted here; the decoder converts it first.
        """
        try:
            fmt = av.VideoFormat(name)
        except (ValueError, av.error.FFmpegError):
            return None
        comps = fmt.components
        alpha = len(comps) == 4 and comps[3].is_alpha and comps[3].plane == 3
        if (len(comps) != 3 + alpha or not fmt.is_planar or fmt.is_big_endian or fmt.has_palette
                or fmt.is_bayer or re.search(r"f\d", name)):
            return None
        if sorted(c.plane for c in comps) != [0, 1, 2] + [3] * alpha:
            return None
        bits = {c.bits for c in comps}
        if len(bits) != 1 or not 8 <= next(iter(bits)) <= 16:
            return None
        if fmt.is_rgb:
            return cls(name, bits.pop(), (0, 0), is_rgb=True, has_alpha=alpha)
        if not name.startswith("yuv"):
            return None
        return cls(name, bits.pop(), _chroma_shift(fmt), has_alpha=alpha)


def _chroma_shift(fmt: av.VideoFormat) -> tuple[int, int]:
    """log2 of the chroma subsampling: the chroma size of a 1024x1024 frame gives it exactly."""
    w, h = fmt.chroma_width(1024), fmt.chroma_height(1024)
    return (1024 // max(w, 1)).bit_length() - 1, (1024 // max(h, 1)).bit_length() - 1


def canonical_pix_fmt(name: str) -> str:
    """A pixel format `PlaneLayout` accepts that holds `name`'s samples without loss.

    Semi-planar and packed formats are repacked (nv12 -> yuv420p, p010le -> yuv420p10le,
    rgb24 -> gbrp, rgba -> gbrap, ya8 -> yuva444p); alpha is kept as a plane of its own,
    which the colour maths never sees. A palette's transparency is not (pal8 -> gbrp).
    """
    if PlaneLayout.from_pix_fmt(name) is not None:
        return name
    fmt = av.VideoFormat(name)
    depth = max(c.bits for c in fmt.components)
    suffix = "" if depth <= 8 else f"{min((d for d in (10, 12) if d >= depth), default=16)}le"
    alpha = not fmt.has_palette and any(c.is_alpha for c in fmt.components)
    if fmt.is_rgb or fmt.has_palette:
        return ("gbrap" if alpha else "gbrp") + suffix
    if len(fmt.components) - alpha <= 1:  # gray, gray10le, ya8: luma only -> 4:4:4 with neutral chroma
        return ("yuva444p" if alpha else "yuv444p") + suffix
    base = {(1, 1): "yuv420p", (1, 0): "yuv422p", (0, 0): "yuv444p", (0, 1): "yuv440p"}.get(_chroma_shift(fmt), "yuv444p")
    if base == "yuv440p" and (alpha or suffix not in ("", "10le", "12le")):
        base = "yuv444p"
    name = (base.replace("yuv", "yuva", 1) if alpha else base) + suffix
    # FFmpeg has yuva formats at 8, 9, 10, 12 (4:2:2/4:4:4 only) and 16 bits.
    return name if PlaneLayout.from_pix_fmt(name) is not None else "yuva444p16le"


# Where each AVChromaLocation puts a subsampled chroma sample, per axis (horizontal, vertical),
# as a fraction of the luma block it covers: 0 co-sited with the block's first luma sample,
# 0.5 centred in the block, 1 co-sited with its last. The offset in luma samples is the
# fraction times (subsampling factor - 1): "left" 4:2:0 chroma sits on the even columns and
# between each pair of rows.
CHROMA_PHASES: dict[str, tuple[float, float]] = {
    "left": (0.0, 0.5), "center": (0.5, 0.5), "topleft": (0.0, 0.0), "top": (0.5, 0.0),
    "bottomleft": (0.0, 1.0), "bottom": (0.5, 1.0),
}
# Codecs whose untagged subsampled chroma is co-sited with the even luma columns ("left"):
# MPEG-2 and its successors (H.264, HEVC, VVC) for 4:2:0, and every professional 4:2:2/4:1:1
# format (ProRes, DNxHD, DV), as BT.601/709 sample them. MPEG-1, JPEG/MJPEG, MPEG-4 Part 2,
# VP8/VP9 and the rest are taken as centred, which is FFmpeg's own default.
LEFT_SITED_CODECS = ("h264", "hevc", "vvc", "mpeg2video", "prores", "dnxhd", "dvvideo")


def chroma_siting(location: str, codec: str) -> str:
    """The chroma location to convert with: the stream's own, else its codec's convention."""
    if location in CHROMA_PHASES:
        return location
    return "left" if codec in LEFT_SITED_CODECS else "center"


@dataclass(frozen=True)
class ColourSpec:
    """Which matrix and range turn the planes into RGB: 'bt601' / 'bt709' / 'bt2020' / ... / 'rgb'.

    `chroma` is where subsampled chroma samples sit (a `CHROMA_PHASES` name), which the
    chroma upsampling and subsampling follow.
    """

    matrix: str
    full_range: bool
    chroma: str = "center"

    @classmethod
    def from_tags(cls, colorspace: int, color_range: int, height: int, layout: PlaneLayout,
                  width: int = 0) -> "ColourSpec":
        """The spec for a stream's AVColorSpace/AVColorRange tags.

        Untagged streams get what players assume: BT.709 for HD (`is_hd`), BT.601 otherwise, and
        limited range for YUV, except the JPEG formats (yuvj*), which are full range by name.
        GBR is always full range.
        """
        if layout.is_rgb:
            return cls("rgb", True)
        matrix = _MATRIX_TAGS.get(int(colorspace))
        if matrix is None or matrix == "rgb":
            matrix = "bt709" if is_hd(width, height) else "bt601"
        full = int(color_range) == RANGE_FULL or (int(color_range) != RANGE_LIMITED and layout.pix_fmt.startswith("yuvj"))
        return cls(matrix, full)


def is_hd(width: int, height: int) -> bool:
    """Whether players take an untagged picture of this size for HD (BT.709) rather than SD (BT.601).

    mpv/libplacebo's rule: wider than 1279 or taller than 576 (PAL) lines. A height-only rule
    takes cropped widescreen HD (1280x544, 1920x800) for SD and shifts its colours.
    """
    return width >= 1280 or height > 576


# AVColorTransferCharacteristic values of the HDR transfers: SMPTE 2084 (PQ) and ARIB STD-B67 (HLG).
HDR_TRANSFERS = {16: "PQ", 18: "HLG"}


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata: the mastering display (CIE 1931 xy chromaticities of R, G, B and the
    white point; luminance in cd/m2) and the content light levels, each None when absent."""

    primaries: tuple[tuple[Fraction, Fraction], ...] | None = None  # (R, G, B), each (x, y)
    white_point: tuple[Fraction, Fraction] | None = None
    luminance: tuple[Fraction, Fraction] | None = None  # (min, max)
    max_cll: int | None = None
    max_fall: int | None = None

    @classmethod
    def from_side_data(cls, mastering: bytes | None, light: bytes | None) -> "HdrMetadata | None":
        """Parse FFmpeg's AVMasteringDisplayMetadata and AVContentLightMetadata structs (as the
        frame side data of those types holds them); None when neither says anything."""
        primaries = white = luminance = cll = fall = None
        # 10 AVRationals (R, G, B and white point as x, y; then min and max luminance) and two
        # int flags: 88 bytes.
        if mastering is not None and len(mastering) >= 88:
            ints = np.frombuffer(mastering[:88], dtype="<i4")
            rats = [Fraction(int(n), int(d)) if d else Fraction(0) for n, d in ints[:20].reshape(10, 2)]
            has_primaries, has_luminance = int(ints[20]), int(ints[21])
            if has_primaries:
                primaries = ((rats[0], rats[1]), (rats[2], rats[3]), (rats[4], rats[5]))
                white = (rats[6], rats[7])
            if has_luminance:
                luminance = (rats[8], rats[9])
        if light is not None and len(light) >= 8:
            cll, fall = (int(v) for v in np.frombuffer(light[:8], dtype="<u4"))
        if primaries is None and luminance is None and cll is None:
            return None
        return cls(primaries, white, luminance, cll, fall)

    def x265_params(self) -> list[str]:
        """x265's `master-display` (chromaticity in 1/50000, luminance in 1/10000 cd/m2) and `max-cll`."""
        params = []
        if self.primaries is not None and self.luminance is not None:
            (rx, ry), (gx, gy), (bx, by) = self.primaries
            wx, wy = self.white_point

            def c(v):
                return round(v * 50000)
            lo, hi = self.luminance
            params.append(f"master-display=G({c(gx)},{c(gy)})B({c(bx)},{c(by)})R({c(rx)},{c(ry)})"
                          f"WP({c(wx)},{c(wy)})L({round(hi * 10000)},{round(lo * 10000)})")
        if self.max_cll is not None:
            params.append(f"max-cll={self.max_cll},{self.max_fall or 0}")
        return params

    def svtav1_params(self) -> list[str]:
        """SVT-AV1's `mastering-display` (plain decimals) and `content-light`."""
        params = []
        if self.primaries is not None and self.luminance is not None:
            (rx, ry), (gx, gy), (bx, by) = self.primaries
            wx, wy = self.white_point
            lo, hi = self.luminance

            def f(v):
                return f"{float(v):.4f}"
            params.append(f"mastering-display=G({f(gx)},{f(gy)})B({f(bx)},{f(by)})R({f(rx)},{f(ry)})"
                          f"WP({f(wx)},{f(wy)})L({float(hi):.4f},{float(lo):.4f})")
        if self.max_cll is not None:
            params.append(f"content-light={self.max_cll},{self.max_fall or 0}")
        return params
