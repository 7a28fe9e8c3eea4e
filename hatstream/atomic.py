"""Write-then-rename output files, so nothing half-written ever appears at an output path."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from hatstream.errors import HatstreamError


def check_output_path(output: Path, inputs: list[Path] | tuple[Path, ...] = (), overwrite: bool = False) -> None:
    """Refuse to write over an input, or over an existing file unless `overwrite` is set."""
    out = Path(output)
    for src in inputs:
        if out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise HatstreamError(f"output {out} is the input file; choose another output path")
        if out.resolve() == Path(src).resolve():
            raise HatstreamError(f"output {out} is the input file; choose another output path")
    if out.exists() and not overwrite:
        raise HatstreamError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise HatstreamError(f"output {out} is a folder, expected a file path")


@contextlib.contextmanager
def atomic_output(output: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `output`; rename it onto `output` only if the block succeeds.

    The temporary file lives in the output's own folder, so the final `os.replace` is a rename
    on one filesystem: atomic, and never a copy that could be cut half-way. On any exception
    (KeyboardInterrupt and SystemExit included) the temporary file is removed.
    The temporary name keeps the output's extension, because FFmpeg picks the container from it.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else output.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=f".part{ext}", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
