"""Choosing the compute dtype: bf16 where the hardware runs it natively, fp32 otherwise."""

from __future__ import annotations

import logging

import torch

from hatstream.errors import HatstreamError
from hatstream.models.spec import ModelInfo

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# The CPU features under which oneDNN runs bf16 matmuls natively, as Linux names them in
# /proc/cpuinfo: AVX512-BF16 (vdpbf16ps) and AMX (tile matmuls in bf16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist).

    Read from the OS rather than from torch: the torch._C._cpu queries that once answered this
    were removed (torch 2.13 has none), and the flags are what a benchmark note must record anyway.
    Every core reports the same flags; the first "flags" line is taken.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # "Features" on ARM
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True on CPUs with AMX or AVX512-BF16, where oneDNN runs bf16 matmuls natively.

    Without them bf16 is emulated and slower than fp32, so `auto` must not pick it.
    """
    return bool((cpu_flags() if flags is None else flags) & NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device, info: ModelInfo) -> torch.dtype:
    """The dtype to run `info`'s model in on `device` for the requested precision name."""
    if precision not in PRECISIONS:
        raise HatstreamError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not info.supports_bf16:
            return torch.float32
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if precision == "fp16" and not info.supports_fp16:
        raise HatstreamError(f"{info.name} cannot run in fp16; use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 (AMX/AVX512-BF16); bf16 will be slower than fp32")
    return DTYPES[precision]
