"""The job ledger of a watcher: SQLite in WAL mode at `OUT_DIR/.hatstream/ledger.sqlite`.

One row per job, keyed by (relative path, size, mtime): a file that changes is a new job, and
the old row stays as history. Every state change is one autocommitted UPDATE, so a crash at any
moment leaves each row in a state the next start knows how to resume:

    queued  ──▶ running ──▶ done
      ▲            │
      └────────────┴──────▶ failed ──(retry after a delay)──▶ running ...
       interrupted               └── quarantined after --max-attempts

WAL lets `hatstream watch --status` (and the --http status page) read while a watcher writes.
A running job's own process also writes its progress (the `progress_*` columns) about once a second.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from hatstream.errors import HatstreamError

STATE_DIR = ".hatstream"
LEDGER_NAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    rel         TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    note        TEXT,
    output      TEXT,
    queued_at   REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    seconds     REAL,
    frames      INTEGER,
    UNIQUE (rel, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS jobs_output ON jobs (output);
"""

# Columns added after the first release, with their types. `_migrate` adds any that an older
# ledger lacks (ALTER TABLE ADD COLUMN only appends, so old rows read NULL and old readers work).
_ADDED_COLUMNS = (
    ("progress_frames", "INTEGER"),  # frames written by the running attempt
    ("progress_total", "INTEGER"),   # the frames it expects (an estimate for MKV/WebM)
    ("progress_fps", "REAL"),        # its speed so far
    ("progress_at", "REAL"),         # when it last reported (Unix seconds)
)


@dataclass(frozen=True)
class Job:
    """One row of the ledger. Times are Unix seconds; `seconds` is the last run's duration."""

    id: int
    rel: str
    size: int
    mtime_ns: int
    state: str
    attempts: int
    quarantined: bool
    last_error: str | None
    note: str | None
    output: str | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    frames: int | None
    progress_frames: int | None = None
    progress_total: int | None = None
    progress_fps: float | None = None
    progress_at: float | None = None

    @property
    def label(self) -> str:
        """The state as shown to people: 'quarantined' for a failed job that will not be retried."""
        return "quarantined" if self.quarantined else self.state


def ledger_path(out_dir: Path) -> Path:
    """Where the ledger of the watcher writing into `out_dir` lives."""
    return Path(out_dir) / STATE_DIR / LEDGER_NAME


class Ledger:
    """The jobs of one OUT_DIR. Use from one thread; open another Ledger to read elsewhere."""

    def __init__(self, out_dir: Path, create: bool = True):
        path = ledger_path(out_dir)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise HatstreamError(f"{out_dir} has no watch ledger ({path} is missing)")
        try:
            # isolation_level=None: autocommit, so each statement is its own durable transaction.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is safe against process crashes in WAL mode; a power cut may lose the last
            # update, which only means a finished job is looked at again (the output its job wrote is kept).
            self._db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._db.executescript(_SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise HatstreamError(f"cannot open the watch ledger {path}: {exc}") from None

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def _migrate(self) -> None:
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def get(self, job_id: int) -> Job | None:
        """The job with this id (a current job or history), or None."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None

    def progress(self, job_id: int, frames: int, total: int, fps: float) -> None:
        """Record how far a running job has got (the job's own process calls this, about once a second)."""
        self._db.execute("UPDATE jobs SET progress_frames = ?, progress_total = ?, progress_fps = ?, progress_at = ? "
                         "WHERE id = ? AND state = 'running'", (frames, total, fps, time.time(), job_id))

    def _one(self, job_id: int) -> Job:
        return Job(**dict(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()))

    def _set(self, job_id: int, **values) -> Job:
        columns = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))
        return self._one(job_id)

    def find(self, rel: str, size: int, mtime_ns: int) -> Job | None:
        """The job for this exact version of the file, if there is one."""
        row = self._db.execute("SELECT * FROM jobs WHERE rel = ? AND size = ? AND mtime_ns = ?",
                               (rel, size, mtime_ns)).fetchone()
        return Job(**dict(row)) if row else None

    def add(self, rel: str, size: int, mtime_ns: int) -> Job:
        """Record a new job as queued."""
        cur = self._db.execute("INSERT INTO jobs (rel, size, mtime_ns, state, queued_at) VALUES (?, ?, ?, 'queued', ?)",
                               (rel, size, mtime_ns, time.time()))
        return self._one(cur.lastrowid)

    def start(self, job_id: int, output: str) -> Job:
        """Mark a job running; the attempt is counted now, so a job that crashes the machine still runs out."""
        self._db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, output = ?, started_at = ?, "
                         "finished_at = NULL WHERE id = ?", (output, time.time(), job_id))
        return self._one(job_id)

    def finish(self, job_id: int, frames: int | None, seconds: float | None, note: str | None = None) -> Job:
        """Mark a job done."""
        return self._set(job_id, state="done", frames=frames, seconds=seconds, note=note, finished_at=time.time())

    def fail(self, job_id: int, error: str, quarantine: bool, seconds: float | None = None) -> Job:
        """Mark a job failed (and, when it has used up its attempts, quarantined)."""
        return self._set(job_id, state="failed", last_error=error, quarantined=int(quarantine), seconds=seconds,
                         finished_at=time.time())

    def requeue(self, job_id: int, note: str) -> Job:
        """Put an interrupted job back in the queue without counting the attempt against it."""
        self._db.execute("UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), note = ?, "
                         "finished_at = ? WHERE id = ?", (note, time.time(), job_id))
        return self._one(job_id)

    def recover(self) -> list[Job]:
        """Jobs left `running` by a watcher that died, put back to `queued`; returns them.

        Their attempt stays counted: the watcher cannot tell a power cut from a file that
        crashes the process, and counting it is what stops such a file from looping forever.
        """
        stale = [Job(**dict(r)) for r in self._db.execute("SELECT * FROM jobs WHERE state = 'running'")]
        for job in stale:
            self._set(job.id, state="queued", note="interrupted by a crash; redone")
        return [self._one(job.id) for job in stale]

    def output_owner(self, output: str, rel: str) -> str | None:
        """Another input whose job wrote (or is writing) `output`, if any: two inputs must not share one."""
        row = self._db.execute("SELECT rel FROM jobs WHERE output = ? AND rel != ? AND state IN ('running', 'done') "
                               "LIMIT 1", (output, rel)).fetchone()
        return row["rel"] if row else None

    def latest(self) -> list[Job]:
        """The newest job of every relative path, sorted by path (older versions are history)."""
        rows = self._db.execute("SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY rel) ORDER BY rel")
        return [Job(**dict(r)) for r in rows]
