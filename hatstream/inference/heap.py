"""Keep freed CPU memory in the process, so large activations do not page-fault on every frame.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free. A HAT activation on a 640×360 frame is 30-90 MiB, so each one starts as
untouched pages: the first write to each 4 KiB page faults. With hat-tiny that was ~14 % of the
frame time, most of it inside Linear's bias copy (aten::copy_), at well under 1 GB/s.
Turning mmap off for the heap (M_MMAP_MAX = 0) and never trimming it makes freed blocks reusable
at once; the price is that the process keeps its peak heap until it exits, as with jemalloc or
tcmalloc, which PyTorch recommends for CPU inference for the same reason.

Process-wide, glibc only; HATSTREAM_KEEP_FREED_MEMORY=0 leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "HATSTREAM_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory, once per process; True when it is in effect."""
    global _done
    if _done:
        return True
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return False
    log.debug("glibc malloc: mmap off, no trimming (set %s=0 to keep the defaults)", ENV)
    _done = True
    return True
