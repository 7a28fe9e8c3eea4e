"""How a run ends early: the one exception type that the CLI turns into `hatstream: error: ...` and
exit status 2, and SIGTERM turned into the KeyboardInterrupt that Ctrl-C raises."""

import signal


class HatstreamError(Exception):
    """A problem with the user's input or settings, explained in one line.

    Anything else that escapes is a bug, and the CLI shows its traceback.
    """


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread (call from the main thread), so
    that `kill` takes the same clean-up paths as Ctrl-C: atomic outputs removed, worker threads
    stopped. Used by the CLI and by each watch job's child process."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
