"""Freed frame-sized buffers are reused without page faults once the upscaler is set up."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from hatstream.inference.heap import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.empty(0)
for i in range(11):  # 64 MiB, well above glibc's largest mmap threshold
    if i == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = None
    x = torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_buffers_are_reused_without_page_faults():
    pages = 10 * 64 * 2**20 // 4096  # ten fresh 64 MiB buffers, if each one faults in anew
    assert _faults("default") > pages // 2
    assert _faults("keep") < pages // 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_opt_out_leaves_the_allocator_alone():
    import os

    env = dict(os.environ, HATSTREAM_KEEP_FREED_MEMORY="0")
    out = subprocess.run([sys.executable, "-c", "from hatstream.inference.heap import keep_freed_memory;"
                          "print(keep_freed_memory())"], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
