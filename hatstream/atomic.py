"""Write-then-rename output files, so nothing half-written ever appears at an output path.

One durability rule for every write-then-rename here (`durable_replace`): the file's data is
fsynced before the rename, and its folder after it. Without the first, a power cut can leave
the new name pointing at an empty or partial file (the rename reached the disk, the data did
not); without the second, the rename itself may be lost, and a manifest that already counts
the file would name one that is not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from hatstream.errors import HatstreamError

log = logging.getLogger(__name__)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """SHA-256 of a whole file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def durable_replace(tmp: Path, dest: Path) -> None:
    """Rename the finished file `tmp` onto `dest` durably: fsync it, rename, fsync the folder."""
    fsync_path(tmp)
    os.replace(tmp, dest)
    fsync_path(Path(dest).parent)


def write_durably(path: Path, data: bytes | str, suffix: str = ".tmp") -> None:
    """Replace `path` with `data`: written beside it as `<name><suffix>`, then `durable_replace`d."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(output: Path, inputs: list[Path] | tuple[Path, ...] = (), overwrite: bool = False) -> None:
    """Refuse to write over an input, or over an existing file unless `overwrite` is set."""
    out = Path(output)
    for src in inputs:
        same = os.path.samefile(out, src) if out.exists() and Path(src).exists() else out.resolve() == Path(src).resolve()
        if same:
            raise HatstreamError(f"output {out} is the input file; choose another output path")
    if out.is_dir():
        raise HatstreamError(f"output {out} is a folder, expected a file path")
    if out.exists() and not overwrite:
        raise HatstreamError(f"output {out} already exists; pass --overwrite to replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_RANDOM_PART = re.compile(r"[a-z0-9_]{8}")  # what tempfile.mkstemp puts between prefix and suffix


def _temp_prefix_suffix(output: Path) -> tuple[str, str]:
    """The name pattern of `atomic_output`'s temporary files: hidden, and keeping the extension."""
    return f".{output.stem}.", f".part{output.suffix}"


def partial_files(output: Path) -> list[Path]:
    """Temporary files that `atomic_output` left beside `output` (a writer killed outright with
    SIGKILL or a power cut gets no chance to remove its own)."""
    output = Path(output)
    prefix, suffix = _temp_prefix_suffix(output)
    if not output.parent.is_dir():
        return []
    # Exactly mkstemp's shape: prefix, 8 random characters (no dot), suffix. A looser match would
    # also take the live temporary file of another output, e.g. `.talk.final.<rand>.part.mp4`
    # when looking for `talk.mp4`'s.
    return [p for p in output.parent.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(suffix)
            and _RANDOM_PART.fullmatch(p.name[len(prefix):len(p.name) - len(suffix)])]


# How old a temporary file of `atomic_output` must be before another writer takes it for the leftover of a
# killed one: a live writer touches its own far more often (even a slow model's encoder, whose lookahead
# holds back the first packets, writes within minutes).
STALE_SECONDS = 3600.0


def remove_stale(path: Path, older_than: float = STALE_SECONDS) -> bool:
    """Remove the file or folder `path` if nothing has touched it for `older_than` seconds; whether it did."""
    import shutil
    import time

    try:
        if time.time() - path.stat().st_mtime < older_than:
            return False
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False  # gone already (another writer swept it), or not ours to remove
    log.info("removed %s, left by an interrupted write", path)
    return True


def _publish(tmp: Path, output: Path, overwrite: bool) -> None:
    if overwrite:
        durable_replace(tmp, output)
        return
    # The check before the run (check_output_path) can be minutes stale: another job may have
    # written the same path since. A hard link is created only if the name is free, atomically,
    # so an output that appeared meanwhile is never clobbered.
    appeared = HatstreamError(f"output {output} appeared while this run was writing it; pass --overwrite to replace it")
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise appeared from None
    except OSError:
        # Filesystems without hard links (FAT, some network mounts): the best left is a fresh check.
        if output.exists():
            raise appeared from None
        durable_replace(tmp, output)
        return
    tmp.unlink()
    fsync_path(output.parent)  # the new name (the data was fsynced before the link)


def _make_folders(folder: Path) -> list[Path]:
    """`mkdir -p folder`; returns the folders it created, innermost first, so that a failed
    write can take them away again and leave the disk as it found it."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


@contextlib.contextmanager
def atomic_output(output: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `output`; rename it onto `output` only if the block succeeds.

    The temporary file lives in the output's own folder, so the final rename is on one
    filesystem: atomic, and never a copy that could be cut half-way. On any exception
    (KeyboardInterrupt and SystemExit included) the temporary file is removed.
    The temporary name keeps the output's extension, because FFmpeg picks the container from it.
    Missing folders on the way to `output` are created, and removed again if the block fails.
    Temporary files of earlier writers of `output` untouched for an hour (`STALE_SECONDS`: killed
    ones) are removed first.
    With `overwrite=False` a file that appears at `output` while the block runs is left alone,
    and the block's result is discarded with a HatstreamError.
    """
    output = Path(output)
    created = _make_folders(output.parent)
    for leftover in partial_files(output):  # of a writer killed outright (SIGKILL, power cut)
        remove_stale(leftover)
    prefix, suffix = _temp_prefix_suffix(output)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_path(tmp)
        # mkstemp creates the file 0600; give it the permissions any other tool's output would
        # have (0666 less the umask), or finished files would be readable by their owner only.
        os.chmod(tmp, 0o666 & ~_umask())
        _publish(tmp, output, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for folder in created:  # innermost first; one that something else has filled stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
