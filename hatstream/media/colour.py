"""Colour conversion between planar YUV/GBR frames and RGB float tensors, in torch.

Frames travel through the pipeline as compact integer planes (uint8 or uint16 numpy arrays, one
per plane, chroma possibly subsampled). The model wants RGB in [0, 1]. The conversion lives here,
in torch, so that it runs on the same device as the model (on a GPU the 4K RGB<->YUV maths is
nearly free, on the CPU it avoids swscale's rgb24 round trip), and so that 10-bit and 12-bit
samples are never truncated to 8 bits on the way.

This module knows nothing about models or containers; `PlaneLayout` and `ColourSpec`
(`hatstream.media.formats`) are plain descriptions that the decoder derives from each stream.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from hatstream.media.formats import CHROMA_PHASES, MATRICES, ColourSpec, PlaneLayout

__all__ = ["ColourSpec", "PlaneLayout", "planes_to_rgb", "planes_to_tensors", "rgb_to_planes", "tensors_to_planes",
           "unrepresentable"]


def _scales(layout: PlaneLayout, spec: ColourSpec) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma offset, chroma span) in code values for this depth/range."""
    k = float(1 << (layout.bit_depth - 8))
    if spec.full_range:
        top = float(layout.max_value)
        return 0.0, top, float(1 << (layout.bit_depth - 1)), top
    return 16.0 * k, 219.0 * k, 128.0 * k, 224.0 * k


def planes_to_rgb(planes: list[torch.Tensor], layout: PlaneLayout, spec: ColourSpec) -> torch.Tensor:
    """Integer planes, each (B, h, w), to RGB float32 (B, 3, H, W) in [0, 1] (not clamped).

    Subsampled chroma is upsampled linearly to the luma size before the matrix is applied, from
    where its samples sit (`ColourSpec.chroma`). An alpha plane after the colour planes is ignored.
    """
    y, u, v = (p.to(torch.float32) for p in planes[:3])
    height, width = y.shape[-2:]
    if layout.is_rgb:  # planar GBR: plane 0 is G, 1 is B, 2 is R
        return torch.stack((v, y, u), dim=1) / layout.max_value
    if u.shape[-2:] != (height, width):
        u, v = _upsample_chroma(torch.stack((u, v), dim=1), (height, width), layout, spec.chroma).unbind(1)
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


def _offsets(layout: PlaneLayout, chroma: str) -> tuple[float, float]:
    """(horizontal, vertical) position of chroma sample 0 in luma samples, from `CHROMA_PHASES`."""
    px, py = CHROMA_PHASES.get(chroma, CHROMA_PHASES["center"])
    sx, sy = layout.chroma_shift
    return px * ((1 << sx) - 1), py * ((1 << sy) - 1)


def _upsample_chroma(cbcr: torch.Tensor, size: tuple[int, int], layout: PlaneLayout, chroma: str) -> torch.Tensor:
    """(B, 2, h, w) chroma -> (B, 2, H, W) by linear interpolation between the chroma samples'
    own positions (luma x = f * k + offset), edges held. Centred siting gives exactly bilinear
    with half-pixel centres (align_corners=False)."""
    out = cbcr
    for axis, (n, shift, offset) in enumerate(zip(size, layout.chroma_shift[::-1], _offsets(layout, chroma)[::-1])):
        dim = 2 + axis
        if out.shape[dim] == n:
            continue
        pos = (torch.arange(n, device=cbcr.device, dtype=torch.float32) - offset) / (1 << shift)
        pos = pos.clamp_(0, out.shape[dim] - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp_(max=out.shape[dim] - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = n
        w = (pos - lo).view(shape)
        out = out.index_select(dim, lo) * (1 - w) + out.index_select(dim, hi) * w
    return out


def _subsample_chroma(cbcr: torch.Tensor, layout: PlaneLayout, chroma: str) -> torch.Tensor:
    """(B, 2, H, W) full-size chroma -> the layout's chroma size, filtered for its siting."""
    sx, sy = layout.chroma_shift
    ox, oy = _offsets(layout, chroma)
    out = cbcr
    for dim, shift, offset in ((3, sx, ox), (2, sy, oy)):
        f = 1 << shift
        if f == 1:
            continue
        n = out.shape[dim]
        count = -(-n // f)
        if offset == (f - 1) / 2:
            # Centred: the block's mean; ceil_mode keeps the last half block of odd sizes,
            # averaged over the samples present.
            kernel = (1, f) if dim == 3 else (f, 1)
            out = F.avg_pool2d(out, kernel_size=kernel, ceil_mode=True)
            continue
        # Co-sited with luma sample f*k + offset: a triangle (f - |d|) around it, edges held.
        taps = torch.tensor([f - abs(d) for d in range(1 - f, f)], dtype=out.dtype, device=out.device)
        centres = torch.arange(count, device=out.device) * f + int(offset)
        idx = (centres[:, None] + torch.arange(1 - f, f, device=out.device)[None, :]).clamp_(0, n - 1)
        gathered = out.index_select(dim, idx.flatten())
        shape = list(out.shape)
        shape[dim:dim + 1] = [count, 2 * f - 1]
        out = (gathered.reshape(shape) * taps.view([-1] + [1] * (len(shape) - dim - 2))).sum(dim + 1) / taps.sum()
    return out


def _normalised(rgb: torch.Tensor, layout: PlaneLayout, spec: ColourSpec) -> list[torch.Tensor]:
    """RGB float (B, 3, H, W) -> the three planes' samples in plane order at full size, before
    scaling to code values: (G, B, R) for GBR, (Y, Cb, Cr) with Y in [0, 1] and Cb/Cr in
    [-0.5, 0.5] for YUV. Linear, so a difference of colours converts the same way."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if layout.is_rgb:
        return [g, b, r]
    kr, kb = MATRICES[spec.matrix]
    yn = kr * r + (1.0 - kr - kb) * g + kb * b
    return [yn, (b - yn) / (2.0 * (1.0 - kb)), (r - yn) / (2.0 * (1.0 - kr))]


def _code_scales(layout: PlaneLayout, spec: ColourSpec) -> list[tuple[float, float]]:
    """(span, offset) per plane: code value = normalised sample * span + offset."""
    if layout.is_rgb:
        return [(float(layout.max_value), 0.0)] * 3
    y_off, y_span, c_off, c_span = _scales(layout, spec)
    return [(y_span, y_off), (c_span, c_off), (c_span, c_off)]


def rgb_to_planes(rgb: torch.Tensor, layout: PlaneLayout, spec: ColourSpec,
                  residual: torch.Tensor | None = None) -> list[torch.Tensor]:
    """RGB float (B, 3, H, W) in [0, 1] to integer planes for `layout` (uint8 or uint16 tensors).

    Chroma is subsampled where its samples sit (`ColourSpec.chroma`): a box filter (the mean of
    each 2x2 or 2x1 block) along an axis where they are centred, a triangle filter centred on
    the luma sample they share where they are co-sited ("left" 4:2:0: [1 2 1] / 4 across,
    the pair's mean down). `residual`, an
    RGB difference at a smaller size (what lay outside [0, 1] before a model), is converted to
    the planes' components at that size and upscaled bicubically to each plane's own size,
    then added: one full-size plane and two chroma-sized ones for 4:2:0, instead of three
    full-size RGB channels. Values are rounded and clamped to the code range of the bit depth;
    nothing is truncated.
    """
    rgb = rgb.to(torch.float32)
    out_dtype = torch.uint8 if layout.bit_depth <= 8 else torch.uint16
    top = layout.max_value
    comps = _normalised(rgb, layout, spec)
    sx, sy = layout.chroma_shift
    if not layout.is_rgb and (sx or sy):
        comps[1:] = _subsample_chroma(torch.stack(comps[1:], dim=1), layout, spec.chroma).unbind(1)
    if residual is not None:
        for c, e in zip(comps, _normalised(residual.to(torch.float32), layout, spec)):
            _add_upscaled(c, e)
    return [(c * span + off).round_().clamp_(0, top).to(out_dtype)
            for c, (span, off) in zip(comps, _code_scales(layout, spec))]


def _add_upscaled(plane: torch.Tensor, residual: torch.Tensor) -> None:
    """Add `residual` (B, h, w), upscaled bicubically to `plane`'s (B, H, W), into `plane`.

    On the CPU only the box around its non-zero samples is upscaled: super-whites are mostly a
    highlight or two, and a whole-frame bicubic at the output size costs more than the colour
    conversion itself. The box starts on a sample that maps to a whole output sample and has
    two samples of zeros around it (the bicubic kernel's reach), so the result is the same as
    the whole frame's. On a GPU finding the box would wait for the device; the whole frame is
    cheap there.
    """
    (h, w), (H, W) = residual.shape[-2:], plane.shape[-2:]
    if plane.device.type != "cpu":
        plane += F.interpolate(residual[:, None], size=(H, W), mode="bicubic", align_corners=False)[:, 0]
        return
    nonzero = residual.abs() > 1e-7
    rows, cols = nonzero.any(dim=2).any(dim=0), nonzero.any(dim=1).any(dim=0)
    if not bool(rows.any()):
        return
    fy, fx = Fraction(H, h), Fraction(W, w)

    def span(hits: torch.Tensor, n: int, f: Fraction) -> tuple[int, int, int, int]:
        idx = torch.nonzero(hits)[:, 0]
        lo, hi = max(0, int(idx[0]) - 2), min(n, int(idx[-1]) + 3)
        lo -= lo % f.denominator  # lo * f is a whole output sample
        hi = n if n - hi < f.denominator else hi + (-hi) % f.denominator
        return lo, hi, int(lo * f), int(hi * f) if hi < n else int(n * f)

    r0, r1, R0, R1 = span(rows, h, fy)
    c0, c1, C0, C1 = span(cols, w, fx)
    crop = residual[:, None, r0:r1, c0:c1]
    plane[:, R0:R1, C0:C1] += F.interpolate(crop, scale_factor=(float(fy), float(fx)), mode="bicubic",
                                            align_corners=False, recompute_scale_factor=False)[:, 0, :R1 - R0, :C1 - C0]


def unrepresentable(rgb: torch.Tensor, layout: PlaneLayout, spec: ColourSpec) -> torch.Tensor:
    """Per frame of RGB float (B, 3, H, W), unclamped: how many pixels have a sample outside the
    code range of `layout` (a limited-range super-white in full-range or RGB output); (B,) int64."""
    codes = [c * span + off for c, (span, off) in
             zip(_normalised(rgb.to(torch.float32), layout, spec), _code_scales(layout, spec))]
    top = layout.max_value + 0.5
    outside = torch.zeros_like(codes[0], dtype=torch.bool)
    for c in codes:
        outside |= (c < -0.5) | (c > top)
    return outside.flatten(1).sum(dim=1)


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
