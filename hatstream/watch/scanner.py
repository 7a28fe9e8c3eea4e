"""Finding the video files under IN_DIR, and telling when each one has finished arriving.

Safety rules of the walk (see shared/notes/media-and-ray.md §9):
- every path is resolved to its real path, and anything whose real path is outside IN_DIR is
  skipped (a symlink must not lead the watcher to read other files on the machine);
- anything under OUT_DIR is skipped, so a watcher whose OUT_DIR sits inside IN_DIR never
  takes its own outputs;
- dotfiles and dot-folders, and partial downloads (.part, .tmp, .crdownload), are skipped;
- folder symlinks inside IN_DIR are followed once each (loops are cut by real path).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The containers `hatstream.media.probe` lets FFmpeg open.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv",
                              ".ogv", ".ogg", ".wmv", ".asf", ".mxf", ".nut", ".y4m"})
PARTIAL_SUFFIXES = frozenset({".part", ".tmp", ".crdownload"})


@dataclass(frozen=True)
class Candidate:
    """One video file seen by a scan: its path relative to IN_DIR, its real path, size and mtime."""

    rel: str
    path: Path
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies a job: a changed file (new size or mtime) is a new job."""
        return (self.rel, self.size, self.mtime_ns)


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path` is `root` or below it, by name (resolve links first where that matters)."""
    path, root = Path(path), Path(root)
    return path == root or root in path.parents


def _ignored_name(name: str) -> bool:
    lowered = name.lower()
    return name.startswith(".") or any(s in PARTIAL_SUFFIXES for s in Path(lowered).suffixes)


def scan(in_dir: Path, out_dir: Path) -> list[Candidate]:
    """Every video file under `in_dir` that the rules above allow, sorted by relative path."""
    root = os.path.realpath(in_dir)
    out_real = os.path.realpath(out_dir)
    found: list[Candidate] = []
    seen_dirs = {root}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if _ignored_name(name) or not inside(real, root) or inside(real, out_real) or real in seen_dirs:
                continue
            seen_dirs.add(real)
            keep.append(name)
        dirnames[:] = keep  # os.walk descends only into what is left here
        if inside(os.path.realpath(dirpath), out_real):
            continue
        for name in filenames:
            if _ignored_name(name) or Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if not inside(real, root) or inside(real, out_real):
                log.debug("skipping %s: it leads outside the watched folder", full)
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue  # vanished between listing and stat
            if not stat.S_ISREG(st.st_mode):
                continue
            found.append(Candidate(os.path.relpath(full, root), Path(real), st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda c: c.rel)


class Settler:
    """Remembers when each file last changed; a file is ready once it has held still for `settle` seconds.

    Size and mtime both count: a copier that pre-allocates the full size still moves the mtime
    with every write. Time is measured on the monotonic clock from this process's own
    observations, never from the file's mtime, which a copier may have set into the past.
    """

    def __init__(self, settle: float):
        self.settle = settle
        self._since: dict[str, tuple[tuple[str, int, int], float]] = {}

    def update(self, candidates: list[Candidate], now: float) -> list[Candidate]:
        """Record one scan taken at monotonic time `now`; return the candidates that are ready."""
        ready = []
        current = {}
        for c in candidates:
            key, since = self._since.get(c.rel, (None, now))
            if key != c.key:
                since = now
            current[c.rel] = (c.key, since)
            if now - since >= self.settle:
                ready.append(c)
        self._since = current  # files that vanished are forgotten
        return ready
