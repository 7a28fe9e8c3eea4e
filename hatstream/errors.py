"""How a run ends early: the one exception type that the CLI turns into `hatstream: error: ...` and
exit status 2, allocation failures recognised as such, and SIGTERM turned into the KeyboardInterrupt
that Ctrl-C raises."""

import re
import signal


class HatstreamError(Exception):
    """A problem with the user's input or settings, explained in one line.

    Anything else that escapes is a bug, and the CLI shows its traceback.
    """


# torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
_CPU_ALLOC = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")


def out_of_memory(exc: BaseException) -> str | None:
    """One line saying how much memory a failed allocation wanted, or None if `exc` is not one.

    Too large an input (a frame, an export size, a batch) fails deep inside torch, as Python's
    MemoryError, torch's CPU allocator's RuntimeError or CUDA's OutOfMemoryError. That is a
    problem with the input's size, not a bug, so the CLI reports it in one line.
    """
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda: its message names the GPU and sizes
        return f"out of GPU memory: {str(exc).splitlines()[0]}"
    if isinstance(exc, MemoryError):
        return "out of memory"
    match = _CPU_ALLOC.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if match:
        return f"out of memory: an allocation of {int(match.group(1)) / 2**30:.1f} GiB failed"
    return None


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread (call from the main thread), so
    that `kill` takes the same clean-up paths as Ctrl-C: atomic outputs removed, worker threads
    stopped. Used by the CLI and by each watch job's child process."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
