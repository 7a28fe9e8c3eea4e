"""The one exception type that the CLI turns into `hatstream: error: ...` and exit status 2."""


class HatstreamError(Exception):
    """A problem with the user's input or settings, explained in one line.

    Anything else that escapes is a bug, and the CLI shows its traceback.
    """
