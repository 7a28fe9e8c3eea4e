"""HAT, the Hybrid Attention Transformer for image super-resolution (Chen et al., CVPR 2023).

Written from the paper and from the behaviour of the released code, so that the released
checkpoints load with `strict=True` and give the same numbers. Parameter and buffer names are
the official ones; everything else (how attention is computed, what is cached) is ours:

- window attention runs through `scaled_dot_product_attention`, with the relative-position bias
  as an additive mask;
- the bias gathers and the shifted-window mask are built once per input size, device and dtype and
  cached, instead of being rebuilt on the CPU at every forward as the reference does;
- the shift mask is non-zero only in the last row and column of windows, so those windows are
  attended separately and the interior needs no mask at all (a full mask costs ~2 GB at 1080p);
- window partition, cyclic shift and OCAB's overlapping windows are each one cached gather
  (`WindowPlan`) instead of rolls, permute-copies and unfold: ~20% faster on a small HAT here.

Shapes in comments: B batch, C channels, H×W the (padded) feature size, ws window, ows overlapping
window, nW windows per image, nH heads, d head dim, n = ws*ws tokens per window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

# Mean of DIV2K in RGB; subtracted before the first conv. A plain attribute in the reference,
# so it is not part of any checkpoint.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SHIFT_MASK_VALUE = -100.0  # the reference fills masked logits with -100, not -inf


@dataclass(frozen=True)
class HATConfig:
    """Hyperparameters of a HAT network; field names are the official constructor keywords."""

    upscale: int = 2
    in_chans: int = 3
    img_size: int = 64  # kept for compatibility; the network works at any input size
    window_size: int = 7
    compress_ratio: int = 3
    squeeze_factor: int = 30
    conv_scale: float = 0.01
    overlap_ratio: float = 0.5
    img_range: float = 1.0
    depths: tuple[int, ...] = (6, 6, 6, 6)
    embed_dim: int = 96
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    mlp_ratio: float = 4.0
    upsampler: str = "pixelshuffle"
    resi_connection: str = "1conv"
    num_feat: int = 64  # width of the reconstruction head; fixed at 64 in every released model

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have one entry per group")
        if self.upsampler != "pixelshuffle":
            # The reference returns its input unchanged for any other upsampler; refuse instead.
            raise ValueError(f"unsupported upsampler {self.upsampler!r}; only 'pixelshuffle' exists")
        if self.resi_connection not in ("1conv", "3conv", "identity"):
            raise ValueError(f"unsupported resi_connection {self.resi_connection!r}")
        if not _is_supported_scale(self.upscale):
            raise ValueError(f"unsupported upscale {self.upscale}; HAT supports 2^n and 3")
        if self.window_size % 2:
            raise ValueError("window_size must be even (the shift is window_size // 2)")

    @property
    def overlap_window_size(self) -> int:
        """Side of the key/value windows of OCAB; the code computes ws + int(ratio*ws)."""
        return self.window_size + int(self.overlap_ratio * self.window_size)

    def to_kwargs(self) -> dict:
        """The official constructor keywords (lists, not tuples), e.g. for a model card."""
        d = asdict(self)
        d["depths"] = list(self.depths)
        d["num_heads"] = list(self.num_heads)
        return d

    @classmethod
    def from_kwargs(cls, **kwargs) -> "HATConfig":
        """Build from official keywords, ignoring those that change nothing at inference."""
        ignored = {"drop_rate", "attn_drop_rate", "drop_path_rate", "ape", "patch_norm", "use_checkpoint",
                   "qkv_bias", "qk_scale", "norm_layer", "patch_size"}
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known - ignored
        if unknown:
            raise TypeError(f"unknown HAT arguments: {sorted(unknown)}")
        return cls(**{k: v for k, v in kwargs.items() if k in known})


def _is_supported_scale(scale: int) -> bool:
    return scale == 3 or (scale >= 1 and scale & (scale - 1) == 0)


# --------------------------------------------------------------------------------------------
# Index buffers and masks. All integer/geometry work, done once per window size or input size.
# --------------------------------------------------------------------------------------------

def _grid(size: int) -> torch.Tensor:
    """(2, size*size) row/col coordinates of a size×size window, row-major."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()])


def relative_position_index_sa(ws: int) -> torch.Tensor:
    """(n, n) index into the (2ws-1)^2 bias table of window self-attention; values 0..(2ws-1)^2-1."""
    c = _grid(ws)
    rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0)  # (n, n, 2) in -(ws-1)..ws-1
    return (rel[..., 0] + ws - 1) * (2 * ws - 1) + (rel[..., 1] + ws - 1)


def relative_position_index_oca(ws: int, ows: int) -> torch.Tensor:
    """(ws*ws, ows*ows) index into the (ws+ows-1)^2 table of overlapping cross-attention.

    Reproduces the released formula exactly, including its negative values: the reference indexes
    its table with them and Python-style wrap-around makes them count from the end. Callers must
    index with `idx % table_len` (index_select raises on negatives, some kernels clamp).
    """
    q = _grid(ws)
    k = _grid(ows)
    rel = (k[:, None, :] - q[:, :, None]).permute(1, 2, 0)  # (ws*ws, ows*ows, 2)
    off = ws - ows + 1
    return (rel[..., 0] + off) * (ws + ows - 1) + (rel[..., 1] + off)


def shift_mask_patterns(ws: int, shift: int) -> torch.Tensor:
    """(4, n, n) additive masks of shifted-window attention: interior, last column, last row, corner.

    After the cyclic shift only windows in the last row or column of windows mix pixels from
    opposite image borders, and each of those three groups shares one pattern. This equals the
    reference's per-window mask (built from 9 labelled regions) at every window.
    """
    # Region labels inside one window on the boundary: 0 before the shift seam, 1 after.
    seam = (torch.arange(ws) >= ws - shift).long()  # (ws,)
    zero = torch.zeros(ws, dtype=torch.long)
    patterns = []
    for rows, cols in ((zero, zero), (zero, seam), (seam, zero), (seam, seam)):
        label = (rows[:, None] * 2 + cols[None, :]).flatten()  # (n,)
        differs = label[None, :] != label[:, None]
        patterns.append(torch.where(differs, SHIFT_MASK_VALUE, 0.0))
    return torch.stack(patterns)


@dataclass(frozen=True)
class WindowPlan:
    """Where each window's tokens live in the flat (B*H*W, C) token matrix, for one input size.

    Window partition, the cyclic shift and their inverses are each one `index_select` with these
    indices, instead of a roll (two copies per axis) plus a permute-copy each way. Windows are
    ordered window-major, then batch, then token: (nW, B, n). They are also grouped by shift-mask
    pattern (interior, last column, last row, corner), so each group is one contiguous slice.
    """

    order: torch.Tensor  # (nW*B*n,) flat token index of each window slot
    inverse: torch.Tensor  # (B*H*W,) window slot of each flat token
    groups: tuple[tuple[int, int, int], ...]  # (first window, end window, mask pattern), in nW*B units
    kv_order: torch.Tensor | None = None  # OCAB: (nW*B*ows²,) index into the zero-padded token map


def _index_dtype(n: int) -> torch.dtype:
    return torch.int32 if n < 2**31 else torch.int64  # int32 halves the plan's memory


def window_plan(b: int, h: int, w: int, ws: int, shift: int, ows: int | None, device) -> WindowPlan:
    """Build the gather indices for (B, H, W) tokens, ws windows cyclically shifted by `shift`.

    With `ows`, also the indices of OCAB's ows×ows key/value windows in the token map zero-padded
    by (ows-ws)/2 on each side (the same windows `nn.Unfold(ows, stride=ws, padding=...)` takes).
    """
    nh, nw = h // ws, w // ws
    kind = (2 * (torch.arange(nh)[:, None] == nh - 1) + (torch.arange(nw)[None, :] == nw - 1)).flatten()
    if not shift:
        kind = torch.zeros_like(kind)  # no mask: one group, natural order
    wins = torch.argsort(kind, stable=True)  # (nW,) window ids grouped by mask pattern
    wr, wc = (wins // nw)[:, None], (wins % nw)[:, None]
    t = torch.arange(ws)
    ty, tx = t.repeat_interleave(ws)[None, :], t.repeat(ws)[None, :]  # (1, n) row-major offsets
    # Token (i, j) of the rolled map is token ((i+s) % H, (j+s) % W) of the original.
    pos = ((wr * ws + ty + shift) % h) * w + (wc * ws + tx + shift) % w  # (nW, n)
    batch = torch.arange(b)[None, :, None]
    order = (batch * (h * w) + pos[:, None, :]).flatten()  # (nW, B, n) -> flat
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    counts = torch.bincount(kind, minlength=4).tolist()
    ends = torch.tensor(counts).cumsum(0).tolist()
    groups = tuple((b * (e - c), b * e, p) for p, (c, e) in enumerate(zip(counts, ends)) if c)
    kv_order = None
    if ows is not None:
        hp, wp = h + ows - ws, w + ows - ws
        t = torch.arange(ows)
        ky, kx = t.repeat_interleave(ows)[None, :], t.repeat(ows)[None, :]
        kpos = (wr * ws + ky) * wp + (wc * ws + kx)  # (nW, ows²) in the padded map
        kv_order = (batch * (hp * wp) + kpos[:, None, :]).flatten()
    dt = _index_dtype(max(order.numel(), kv_order.numel() if kv_order is not None else 0))
    as_index = lambda idx: None if idx is None else idx.to(device=device, dtype=dt)  # noqa: E731
    return WindowPlan(as_index(order), as_index(inverse), groups, as_index(kv_order))


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation over the whole feature map (which is why tiles change HAT's output)."""

    def __init__(self, dim: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // squeeze_factor, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention block: conv, GELU, conv, channel attention."""

    def __init__(self, dim: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(dim, dim // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(dim // compress_ratio, dim, 3, 1, 1),
            ChannelAttention(dim, squeeze_factor),
        )

    def forward(self, x):
        return self.cab(x)


class _CachedBias:
    """Caches a gathered relative-position bias per (device, dtype) while the table is unchanged.

    During training the table changes every step and needs gradients, so nothing is cached then.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def get(self, table: torch.Tensor, build, dtype: torch.dtype) -> torch.Tensor:
        if torch.is_grad_enabled() and table.requires_grad:
            return build().to(dtype)
        if torch.compiler.is_exporting():
            # Exported graphs gather from the table by the constant index: every runtime folds
            # that when it loads the model, and the file holds the tables, not one (nH, n, n)
            # bias per block (HAT-S at window 16: 160 MB of them in fp32).
            return build().to(dtype)
        if torch.compiler.is_compiling() and self._key is not None and self._key[:2] == (table.device, dtype):
            # Traced by torch.compile: the warmed value becomes a graph constant (a traced table
            # has no data_ptr to key the cache on).
            return self._value
        key = (table.device, dtype, table.data_ptr(), table._version)
        if key != self._key:
            self._value = build().to(dtype).contiguous()
            self._key = key
        return self._value


def _attention(q, k, v, bias, scale):
    """Softmax attention with an additive float mask: q (..., nH, nq, d), k/v (..., nH, nk, d),
    bias (nH, nq, nk) -> (..., nH, nq, d).

    The fused SDPA kernels take only 4-D inputs whose last dimension is contiguous; anything else
    silently runs the math kernel, several times slower. So leading dimensions are folded into
    one, and a strided head dimension is copied once.
    """
    lead = q.shape[:-3]
    q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out.view(*lead, *out.shape[-3:])


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads  # may grow with `pad_heads`; the scale never does
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self._bias = _CachedBias()

    def bias(self, rpi: torch.Tensor, dtype: torch.dtype, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(1, nH, n, n) bias gathered from the table with the model's shared index; with the
        (4, n, n) shift-mask patterns, (4, nH, n, n): one bias per pattern, masks included.

        4-D on purpose: CPU SDPA takes its fused (flash) kernel only for a 4-D mask and runs the
        math fallback, about 5x slower, for a 3-D one.
        """
        n = self.window_size**2

        def build():
            bias = self.relative_position_bias_table[rpi.reshape(-1)].view(n, n, -1).permute(2, 0, 1)
            return bias[None] if masks is None else bias[None] + masks[:, None].to(bias.dtype)

        return self._bias.get(self.relative_position_bias_table, build, dtype)

    def forward(self, windows: torch.Tensor, rpi: torch.Tensor, masks: torch.Tensor | None,
                groups: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
        """windows (nW*B, n, C) -> (nW*B, n, C).

        `masks` is None for unshifted blocks; for shifted ones, the (4, n, n) patterns of
        `shift_mask_patterns`, and `groups` says which contiguous run of windows takes which.
        """
        nb, n, _ = windows.shape
        nh, d = self.num_heads, self.head_dim
        qkv = self.qkv(windows).view(nb, n, 3, nh, d)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (nW*B, nH, n, d), d contiguous
        bias = self.bias(rpi, q.dtype, masks)  # (1 or 4, nH, n, n)
        # The groups are contiguous runs in window order, so concatenating them is the output:
        # one copy, as writing into slices would be, and a static graph without in-place writes.
        outs = [_attention(q[first:end], k[first:end], v[first:end],
                           bias[pattern : pattern + 1] if masks is not None else bias, self.scale).transpose(1, 2)
                for first, end, pattern in groups]  # each (windows, n, nH, d)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (nW*B, n, nH, d)
        return self.proj(out.reshape(nb, n, nh * d))


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention + scaled CAB in parallel, then MLP."""

    def __init__(self, dim, num_heads, window_size, shift_size, compress_ratio, squeeze_factor,
                 conv_scale, mlp_ratio):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi_sa: torch.Tensor,
                masks: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C); `plan` is the shifted one for shifted blocks."""
        h, w = x_size
        b, _, c = x.shape
        dt = self.attn.qkv.weight.dtype  # the branches' dtype; the trunk x may be wider (bf16: fp32)
        y = self.norm1(x).to(dt)

        conv = self.conv_block(y.view(b, h, w, c).permute(0, 3, 1, 2))  # (B, C, H, W), channels-last
        conv = conv.permute(0, 2, 3, 1).reshape(b, h * w, c)

        # (B*H*W, C) -> (nW*B, n, C): partition (and cyclic shift) in one gather.
        windows = y.reshape(b * h * w, c).index_select(0, plan.order).view(-1, self.window_size**2, c)
        attn = self.attn(windows, rpi_sa, masks if self.shift_size else None, plan.groups)
        attn = attn.view(-1, c).index_select(0, plan.inverse).view(b, h * w, c)  # and back

        x = x + attn + conv * self.conv_scale  # in the trunk's dtype
        return x + self.mlp(self.norm2(x).to(dt))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from ws×ws windows, keys/values from ows×ows windows.

    Keys and values outside the image are zeros and are *not* masked (they get logit 0 plus the
    bias); the released models were trained that way, so it is reproduced.
    """

    def __init__(self, dim, window_size, overlap_ratio, num_heads, mlp_ratio):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.overlap_win_size = window_size + int(overlap_ratio * window_size)
        self.head_dim = dim // num_heads  # may grow with `pad_heads`; the scale never does
        self.scale = (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        table_side = window_size + self.overlap_win_size - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_side**2, num_heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._bias = _CachedBias()

    def bias(self, rpi: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(1, nH, ws*ws, ows*ows) bias; negative indices wrap to the table's end as in the reference."""
        table = self.relative_position_bias_table
        nq, nk = self.window_size**2, self.overlap_win_size**2

        def build():
            idx = rpi.reshape(-1) % table.shape[0]
            return table[idx].view(nq, nk, -1).permute(2, 0, 1)[None]  # (1, nH, nq, nk): see WindowAttention.bias

        return self._bias.get(table, build, dtype)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], rpi_oca: torch.Tensor,
                plan: WindowPlan) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C); `plan` is the unshifted one, with `kv_order`."""
        h, w = x_size
        b, _, _ = x.shape
        ws, ows, nh, d = self.window_size, self.overlap_win_size, self.num_heads, self.head_dim
        cq = nh * d
        dt = self.qkv.weight.dtype  # as in HAB: the trunk x may be wider than the branches
        qkv = self.qkv(self.norm1(x).to(dt))  # (B, H*W, 3C)

        q = qkv.view(b * h * w, 3 * cq)[:, :cq].index_select(0, plan.order)  # (nW*B*n, C)
        q = q.view(-1, ws * ws, nh, d).transpose(1, 2)  # (nW*B, nH, n, d)

        # Overlapping ows×ows key/value windows at stride ws over the map zero-padded by
        # (ows-ws)/2 on every side: one pad, one gather.
        pad = (ows - ws) // 2
        kv = F.pad(qkv.view(b, h, w, 3 * cq)[..., cq:], (0, 0, pad, pad, pad, pad))  # (B, Hp, Wp, 2C)
        kv = kv.view(-1, 2 * cq).index_select(0, plan.kv_order).view(-1, ows * ows, 2, nh, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (nW*B, nH, ows², d)

        out = _attention(q, k, v, self.bias(rpi_oca, q.dtype), self.scale)  # (nW*B, nH, n, d)
        # reshape, not view: under torch.export the gather's output strides are not known to be
        # contiguous, and view refuses ("Cannot view a tensor ... as shape").
        out = out.transpose(1, 2).reshape(-1, cq).index_select(0, plan.inverse).reshape(b, h * w, cq)

        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x).to(dt))


class AttenBlocks(nn.Module):
    """The HABs of one group (alternating plain and shifted windows), then its OCAB."""

    def __init__(self, cfg: HATConfig, depth: int, num_heads: int):
        super().__init__()
        ws = cfg.window_size
        self.blocks = nn.ModuleList(
            HAB(cfg.embed_dim, num_heads, ws, 0 if i % 2 == 0 else ws // 2, cfg.compress_ratio,
                cfg.squeeze_factor, cfg.conv_scale, cfg.mlp_ratio)
            for i in range(depth)
        )
        self.overlap_attn = OCAB(cfg.embed_dim, ws, cfg.overlap_ratio, num_heads, cfg.mlp_ratio)

    def forward(self, x, x_size, rpi_sa, rpi_oca, masks, plans):
        plain, shifted = plans
        for blk in self.blocks:
            x = blk(x, x_size, rpi_sa, masks, shifted if blk.shift_size else plain)
        return self.overlap_attn(x, x_size, rpi_oca, plain)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H*W, C), optionally normalised."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def _unembed(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *x_size)


def _group_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    return nn.Identity()


class RHAG(nn.Module):
    """Residual hybrid attention group: blocks, 3×3 conv, and the group's residual."""

    def __init__(self, cfg: HATConfig, depth: int, num_heads: int):
        super().__init__()
        self.residual_group = AttenBlocks(cfg, depth, num_heads)
        self.conv = _group_conv(cfg.embed_dim, cfg.resi_connection)
        self.patch_embed = PatchEmbed(cfg.embed_dim, norm=False)

    def forward(self, x, x_size, rpi_sa, rpi_oca, masks, plans):
        y = self.residual_group(x, x_size, rpi_sa, rpi_oca, masks, plans)
        dt = self.residual_group.overlap_attn.qkv.weight.dtype
        return self.patch_embed(self.conv(_unembed(y, x_size).to(dt))) + x


class Upsample(nn.Sequential):
    """Pixel-shuffle upsampler: n×(conv to 4C, shuffle 2) for 2^n, or (conv to 9C, shuffle 3)."""

    def __init__(self, scale: int, num_feat: int):
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        super().__init__(*layers)


class HAT(nn.Module):
    """The HAT network. `HAT(**official_kwargs)` or `HAT.from_config(HATConfig(...))`.

    The input's height and width must be multiples of `window_size` (the inference wrapper pads);
    the output is not clamped, as in the reference.
    """

    def __init__(self, **kwargs):
        super().__init__()
        cfg = kwargs.pop("config", None) or HATConfig.from_kwargs(**kwargs)
        self.config = cfg
        self.window_size = cfg.window_size
        self.upscale = cfg.upscale
        self.img_range = cfg.img_range
        self.register_buffer("mean", _input_mean(cfg.in_chans), persistent=False)

        ows = cfg.overlap_window_size
        self.register_buffer("relative_position_index_SA", relative_position_index_sa(cfg.window_size))
        self.register_buffer("relative_position_index_OCA", relative_position_index_oca(cfg.window_size, ows))

        dim = cfg.embed_dim
        self.conv_first = nn.Conv2d(cfg.in_chans, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, norm=True)
        self.layers = nn.ModuleList(RHAG(cfg, d, h) for d, h in zip(cfg.depths, cfg.num_heads))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1) if cfg.resi_connection != "identity" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, cfg.num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(cfg.upscale, cfg.num_feat)
        self.conv_last = nn.Conv2d(cfg.num_feat, cfg.in_chans, 3, 1, 1)
        self.folded_head: nn.Module | None = None  # set for inference by models.hat_head.fold_head
        self._masks: dict = {}
        self._plans: dict = {}
        self.apply(_init_weights)

    @classmethod
    def from_config(cls, cfg: HATConfig) -> "HAT":
        """Build an (untrained) network from a config."""
        return cls(config=cfg)

    @classmethod
    def from_state_dict(cls, cfg: HATConfig, state: dict[str, torch.Tensor]) -> "HAT":
        """Build the network for `cfg` and load `state` into it strictly.

        The modules are created on the meta device and take the checkpoint's tensors directly, so
        no time goes into random initialisation (seconds for HAT-L) or into a second copy.
        """
        with torch.device("meta"):
            model = cls(config=cfg)
        model.load_state_dict(state, strict=True, assign=True)
        model.mean = _input_mean(cfg.in_chans)  # not in checkpoints; rebuild off the meta device
        return model

    def shift_masks(self, device: torch.device) -> torch.Tensor:
        """The (4, n, n) shifted-window mask patterns, cached per device (they depend on ws only)."""
        masks = self._masks.get(device)
        if masks is None:
            ws = self.window_size
            masks = self._masks[device] = shift_mask_patterns(ws, ws // 2).to(device)
        return masks

    def window_plans(self, b: int, h: int, w: int, device: torch.device) -> tuple[WindowPlan, WindowPlan]:
        """(unshifted, shifted) gather plans for a (B, ·, H, W) input, cached per size and device."""
        key = (b, h, w, device)
        plans = self._plans.get(key)
        if plans is None:
            if len(self._plans) >= 8:  # a video has one size; don't hoard indices for many
                self._plans.clear()
            cfg = self.config
            ws = cfg.window_size
            plans = self._plans[key] = (window_plan(b, h, w, ws, 0, cfg.overlap_window_size, device),
                                        window_plan(b, h, w, ws, ws // 2, None, device))
        return plans

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) through the groups of hybrid attention."""
        x_size = (x.shape[2], x.shape[3])
        masks = self.shift_masks(x.device)
        plans = self.window_plans(x.shape[0], *x_size, x.device)
        rpi_sa, rpi_oca = self.relative_position_index_SA, self.relative_position_index_OCA
        x = self.patch_embed(x.to(self.norm.weight.dtype))  # (B, H*W, C), in the trunk's dtype
        for layer in self.layers:
            x = layer(x, x_size, rpi_sa, rpi_oca, masks, plans)
        return _unembed(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of the window -> (B, 3, sH, sW), unclamped."""
        ws = self.window_size
        if x.shape[-2] % ws or x.shape[-1] % ws:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the window size {ws}")
        x = x.to(self.conv_first.weight.dtype)  # fp32 under bf16: see keep_sensitive_parts_fp32
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x).to(x.dtype)) + x
        x = self.conv_before_upsample(x)
        x = self.folded_head(x) if self.folded_head is not None else self.conv_last(self.upsample(x))
        return x / self.img_range + mean


@torch.no_grad()
def pad_heads(model: HAT, multiple: int = 8) -> None:
    """Pad every attention head to a multiple of `multiple` dims, in place, for inference.

    The fused GPU attention kernels (memory-efficient, cuDNN) need head dims that are multiples
    of 8; HAT and HAT-L have 30, and would silently run the slow math kernel. Zero rows in the
    qkv projection give zero extra q/k/v dims, which add nothing to q·k, and zero output columns
    in the projection ignore the extra (zero) outputs, so the function is unchanged. The scale
    stays 1/sqrt(original head dim). The state dict no longer matches the checkpoint's shapes.
    """
    for m in model.modules():
        if not isinstance(m, (WindowAttention, OCAB)):
            continue
        d, nh = m.head_dim, m.num_heads
        dp = -(-d // multiple) * multiple
        if dp == d:
            continue
        c = m.qkv.in_features
        qkv = nn.Linear(c, 3 * nh * dp, device=m.qkv.weight.device, dtype=m.qkv.weight.dtype)
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.weight.view(3, nh, dp, c)[:, :, :d] = m.qkv.weight.view(3, nh, d, c)
        qkv.bias.view(3, nh, dp)[:, :, :d] = m.qkv.bias.view(3, nh, d)
        proj = nn.Linear(nh * dp, m.proj.out_features, device=m.proj.weight.device, dtype=m.proj.weight.dtype)
        proj.weight.zero_()
        proj.weight.view(-1, nh, dp)[:, :, :d] = m.proj.weight.view(-1, nh, d)
        proj.bias.copy_(m.proj.bias)
        m.qkv, m.proj, m.head_dim = qkv, proj, dp


@torch.no_grad()
def keep_sensitive_parts_fp32(model: HAT) -> None:
    """For bf16 inference: keep the parts that bf16's 8-bit mantissa hurts most in fp32, in place.

    The residual trunk is never normalised and grows to hundreds (or, trained, past 65504), so
    each of its ~50 additions rounded to bf16 loses about three significant digits of the trunk
    (2^-9 of its size) in every block. The trunk therefore stays fp32, and so do the LayerNorms
    that read it (each branch then starts from an exact normalisation and runs in bf16), and the
    thin convolutions at both ends, whose inputs are the image itself and whose output is the
    image: conv_first, conv_after_body and the reconstruction head. Together they are ~3% of
    HAT-S's multiply-adds. Measured on HAT-S x4 (perturbed random weights, 64x64): 49.3 dB from
    fp32 with everything in bf16, see benchmarks/RESULTS.md for the figure with this.
    Call after the model has been converted to bf16; forward() casts at each boundary.
    """
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.float()
    for m in (model.conv_first, model.conv_after_body, model.conv_before_upsample, model.upsample,
              model.conv_last, model.folded_head):
        if m is not None:
            m.float()
    model.mean = model.mean.float()


def _input_mean(in_chans: int) -> torch.Tensor:
    mean = DIV2K_RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
    return torch.tensor(mean).view(1, -1, 1, 1)


def _init_weights(m: nn.Module) -> None:
    # Training from scratch follows the reference: truncated-normal linears and bias tables,
    # unit LayerNorms. Loading a checkpoint overwrites all of it.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, (WindowAttention, OCAB)):
        nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
