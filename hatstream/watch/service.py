"""The watch loop: scan, let files settle, run each as a job, record every step in the ledger.

Restart semantics (all decided from the ledger, keyed by relative path + size + mtime):
- a `done` job is never redone; a file that changes afterwards is a new job;
- a job left `running` by a crash is redone (its partial output is removed first);
- a `failed` job is retried after `retry_delay` seconds (doubling each time) until it has used
  `max_attempts`, then it is quarantined with `OUT_DIR/failed/<rel>.error.txt` explaining why;
- a job stopped by SIGTERM/SIGINT goes back to `queued` without using up an attempt.
Outputs mirror the input's relative path under OUT_DIR and are written atomically by `run_file`;
an existing output is kept only when the ledger shows that this job wrote it (an attempt cut off
after its output was in place); any other file there is replaced.

Everything runs in the calling thread: jobs are child processes (see `hatstream.watch.job`),
polled every `_TICK` seconds, so there is no locking, and a stop request is just an Event.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hatstream.atomic import atomic_output, partial_files
from hatstream.errors import HatstreamError
from hatstream.watch.job import JobProcess
from hatstream.watch.ledger import STATE_DIR, Job, Ledger
from hatstream.watch.presets import load_preset, settings_for
from hatstream.watch.scanner import Candidate, Settler, inside, scan

log = logging.getLogger(__name__)

_TICK = 0.1               # seconds between checks on running jobs
_MAX_RETRY_DELAY = 3600.0  # the retry back-off stops doubling here
FAILED_DIR = "failed"


@dataclass(frozen=True)
class WatchConfig:
    """What `hatstream watch` was asked to do."""

    in_dir: Path
    out_dir: Path
    preset: str = "default"
    poll: float = 5.0
    settle: float = 5.0
    max_attempts: int = 3
    jobs: int = 1
    once: bool = False
    retry_delay: float = 60.0
    device: str | None = None
    engine: str = "auto"  # as `hatstream run`: jobs can run on a Ray cluster (--address)
    address: str | None = None
    workers: int | None = None
    stop_timeout: float = 60.0  # how long a stopping job may take before it is killed
    model_dirs: tuple[Path, ...] = ()  # where a folder's hatstream.toml may take checkpoints from, besides IN_DIR


@dataclass
class WatchSummary:
    """What one watcher run did, counted by outcome."""

    done: int = 0
    failed: int = 0
    quarantined: int = 0
    interrupted: int = 0


@dataclass
class _Running:
    job: Job
    process: JobProcess
    started: float = field(default_factory=time.monotonic)


def _field(value) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(ch in text for ch in ' "=\n\t') else text


def remove_partials(output: Path) -> None:
    """Remove temporary files that `atomic_output` left beside `output` when its writer was killed outright."""
    for path in partial_files(output):
        path.unlink(missing_ok=True)
        log.info("removed partial output %s", path)


def _relative(rel: str) -> Path | None:
    """`rel` (read from the ledger) as a relative path that stays below its root, else None."""
    path = Path(rel)
    if not rel or path.is_absolute() or ".." in path.parts:
        return None
    return path


class Watcher:
    """One watcher over IN_DIR -> OUT_DIR. `run()` returns when `stop` is set (or, with `once`, when done)."""

    def __init__(self, config: WatchConfig, stop: threading.Event | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        self.in_dir = Path(os.path.realpath(config.in_dir))
        self.out_dir = Path(os.path.realpath(config.out_dir))
        self.summary = WatchSummary()
        self._running: dict[str, _Running] = {}
        self._tried: set[tuple[str, int, int]] = set()  # with --once, one attempt per file per run

    # ---- set-up -------------------------------------------------------------------------------

    def _check_dirs(self) -> None:
        if not self.in_dir.is_dir():
            raise HatstreamError(f"{self.config.in_dir} is not a folder")
        if inside(self.in_dir, self.out_dir):
            # Everything under OUT_DIR is ignored, so this watcher would never see a file.
            raise HatstreamError("IN_DIR must not be OUT_DIR or inside it")
        (self.out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)

    def _lock(self) -> int:
        """Hold an exclusive lock on OUT_DIR for this process's lifetime.

        flock is released by the kernel when the process dies, however it dies, so there is
        never a stale lock to clear on start.
        """
        fd = os.open(self.out_dir / STATE_DIR / "watch.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HatstreamError(f"another watcher is already writing to {self.config.out_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def run(self) -> WatchSummary:
        """Watch until stopped (or, with `once`, until what is ready now is processed)."""
        self._check_dirs()
        self.base = load_preset(self.config.preset)  # a bad preset stops us before any job starts
        lock = self._lock()
        self.ledger = Ledger(self.out_dir)
        try:
            for job in self.ledger.recover():
                if (output := self._output_of(job)) is not None:
                    remove_partials(output)
                self._log(job)
            self._clean_work_folders()
            log.info("watching %s -> %s (preset %s, %d job(s) at a time)", self.in_dir, self.out_dir,
                     self.base.name, self.config.jobs)
            if self.config.once:
                self._run_once()
            else:
                self._run_forever()
        finally:
            self._shutdown()
            self.ledger.close()
            os.close(lock)
        return self.summary

    def _output_of(self, job: Job) -> Path | None:
        """The output path a ledger row names, if it is one this watcher writes (a file under OUT_DIR).

        The ledger is a file on disk like any other: a path in it that leads elsewhere is never
        cleaned up after.
        """
        if not job.output:
            return None
        output = Path(job.output)
        rel = _relative(os.path.relpath(output, self.out_dir)) if output.is_absolute() else None
        if rel is None or not inside(Path(os.path.realpath(output.parent)), self.out_dir):
            log.warning("job %d names the output %s, outside %s; ignored", job.id, output, self.out_dir)
            return None
        return output

    def _drop_work_folder(self, job: Job) -> None:
        """Remove what the job's resumable run kept for a retry that will not come."""
        from hatstream.pipeline.resume import remove_work_folder

        output = self._output_of(job)
        if output is not None and remove_work_folder(output):
            log.info("removed the work folder of %s", output)

    def _clean_work_folders(self) -> None:
        """On start: work folders of jobs that are finished, quarantined, or whose input is gone."""
        for job in self.ledger.latest():
            rel = _relative(job.rel)
            gone = rel is None or not (self.in_dir / rel).exists()
            if job.state == "done" or job.quarantined or gone:
                self._drop_work_folder(job)

    # ---- loops --------------------------------------------------------------------------------

    def _run_forever(self) -> None:
        settler = Settler(self.config.settle)
        waiting: list[Candidate] = []
        next_scan = 0.0
        while not self.stop.is_set():
            freed = self._reap()
            now = time.monotonic()
            if now >= next_scan:
                waiting = self._dispatch(settler.update(scan(self.in_dir, self.out_dir), now))
                next_scan = now + self.config.poll
            elif freed and waiting:
                waiting = self._dispatch(waiting)  # a slot came free: do not wait for the next scan
            delay = _TICK if self._running else next_scan - time.monotonic()
            self.stop.wait(max(0.0, min(delay, self.config.poll)))

    def _run_once(self) -> None:
        """Two scans `settle` seconds apart; what held still between them is processed, then we return."""
        settler = Settler(self.config.settle)
        start = time.monotonic()
        settler.update(scan(self.in_dir, self.out_dir), start)
        if self.config.settle > 0 and self.stop.wait(self.config.settle):
            return
        files = scan(self.in_dir, self.out_dir)
        ready = settler.update(files, max(time.monotonic(), start + self.config.settle))
        for c in sorted({c.rel for c in files} - {c.rel for c in ready}):
            log.info("%s is still changing; left for the next run", c)
        waiting = self._dispatch(ready)
        while not self.stop.is_set() and (waiting or self._running):
            if self._reap():
                waiting = self._dispatch(waiting)
            self.stop.wait(_TICK)

    def _shutdown(self) -> None:
        """Stop running jobs cleanly (they remove their partial output), killing any that take too long."""
        if not self._running:
            return
        log.info("stopping %d running job(s)", len(self._running))
        for r in self._running.values():
            r.process.stop()
        deadline = time.monotonic() + self.config.stop_timeout
        while self._running and time.monotonic() < deadline:
            self._reap()
            time.sleep(_TICK)
        for rel, r in list(self._running.items()):
            r.process.kill()
            if (output := self._output_of(r.job)) is not None:
                remove_partials(output)
            self._log(self.ledger.requeue(r.job.id, "killed while stopping; will be redone"))
            self.summary.interrupted += 1
            del self._running[rel]

    # ---- jobs ---------------------------------------------------------------------------------

    def _retry_delay(self, attempts: int) -> float:
        return min(self.config.retry_delay * 2 ** max(attempts - 1, 0), _MAX_RETRY_DELAY)

    def _dispatch(self, candidates: list[Candidate]) -> list[Candidate]:
        """Start jobs for the ready candidates that need one; returns those waiting for a free slot."""
        waiting = []
        for c in candidates:
            if self.stop.is_set():
                break
            if c.rel in self._running or c.key in self._tried:
                continue
            job = self.ledger.find(*c.key)
            if job is None:
                job = self.ledger.add(*c.key)
                self._log(job)
            elif job.state == "done" or job.quarantined:
                continue
            elif job.state == "failed" and time.time() < job.finished_at + self._retry_delay(job.attempts):
                continue
            if job.attempts >= self.config.max_attempts:
                # Only a job cut off by a crash gets here (a failure is quarantined when it is
                # recorded): a file that takes the watcher or the host down each time it runs
                # must not be run again on every restart.
                self._failed(job, job.last_error or f"the job never finished in {job.attempts} attempt(s): "
                             "the watcher or the machine went down while it ran")
                continue
            if len(self._running) >= self.config.jobs:
                waiting.append(c)
                continue
            if self.config.once:
                self._tried.add(c.key)
            self._start(job, c)
        return waiting

    def _start(self, job: Job, c: Candidate) -> None:
        try:
            settings = settings_for(self.base, self.in_dir, c.rel, self.config.model_dirs)
        except HatstreamError as exc:  # a broken hatstream.toml fails the job, and says so in its error file
            self._failed(self.ledger.start(job.id, None), str(exc))
            return
        rel = Path(c.rel)
        output = self.out_dir / rel.with_suffix(settings.output_suffix(rel.suffix))
        owner = self.ledger.output_owner(str(output), c.rel)
        if owner is not None:
            self._failed(self.ledger.start(job.id, str(output)), f"{output} is already written from {owner}")
            return
        if output.exists() and self._written_by(job, output):
            job = self.ledger.finish(job.id, None, None, note="kept the existing output, which this job wrote")
            self._log(job, output=output)
            self.summary.done += 1
            return
        config = settings.run_config(c.path, output, overwrite=output.exists(), device=self.config.device,
                                     engine=self.config.engine, address=self.config.address,
                                     workers=self.config.workers)
        job = self.ledger.start(job.id, str(output))
        self._running[c.rel] = _Running(job, JobProcess(config, report=(self.out_dir, job.id)))
        self._log(job, output=output, preset=settings.name)

    @staticmethod
    def _written_by(job: Job, output: Path) -> bool:
        """Whether `output` is what an earlier attempt of this very job left (it was cut off after the
        rename, before the ledger heard of it).

        Mtimes alone cannot tell: an input replaced by an older file (`cp -p`, `rsync -a`, `mv`)
        is older than the previous video's output. The ledger can: this job must have started
        writing to `output` before the file there was last changed.
        """
        if job.output != str(output) or job.started_at is None:
            return False
        return output.stat().st_mtime_ns > int(job.started_at * 1e9)

    def _reap(self) -> bool:
        """Record the outcome of every job that has ended; True when any has."""
        ended = False
        for rel, r in list(self._running.items()):
            outcome = r.process.poll()
            if outcome is None:
                continue
            ended = True
            del self._running[rel]
            if outcome.kind == "done":
                self._log(self.ledger.finish(r.job.id, outcome.frames, outcome.seconds),
                          frames=outcome.frames, seconds=outcome.seconds)
                self.summary.done += 1
            elif outcome.kind == "interrupted":
                if (output := self._output_of(r.job)) is not None:
                    remove_partials(output)  # normally gone already; the child removes its own
                self._log(self.ledger.requeue(r.job.id, "interrupted; will be redone"))
                self.summary.interrupted += 1
            else:
                self._failed(r.job, outcome.error, seconds=round(time.monotonic() - r.started, 3))
        return ended

    def _failed(self, job: Job, error: str, seconds: float | None = None) -> None:
        quarantine = job.attempts >= self.config.max_attempts
        job = self.ledger.fail(job.id, error, quarantine, seconds)
        if quarantine:
            self._write_error_file(job)
            self._drop_work_folder(job)
            self.summary.quarantined += 1
        else:
            self.summary.failed += 1
        extra = {} if quarantine else {"retry_in": round(self._retry_delay(job.attempts), 1)}
        self._log(job, error=error, **extra)

    def _write_error_file(self, job: Job) -> None:
        rel = _relative(job.rel)
        if rel is None:
            log.warning("job %d has the path %r, which leads outside %s; no error file", job.id, job.rel, self.in_dir)
            return
        path = self.out_dir / FAILED_DIR / f"{rel}.error.txt"
        text = (f"hatstream watch gave up on {job.rel} after {job.attempts} attempt(s).\n\n"
                f"input:      {self.in_dir / job.rel}\n"
                f"size:       {job.size} bytes\n"
                f"modified:   {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(job.mtime_ns / 1e9))}\n"
                f"failed at:  {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(job.finished_at))}\n"
                f"last error: {job.last_error}\n\n"
                "The file will not be tried again as it is. Replace or touch it to make it a new job.\n")
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def _log(self, job: Job, **extra) -> None:
        """One structured line per job state change."""
        fields = {"job": job.id, "state": job.label, "path": job.rel,
                  "attempt": f"{job.attempts}/{self.config.max_attempts}"}
        if job.note and job.state != "running" and "error" not in extra:
            fields["note"] = job.note
        fields.update((k, v) for k, v in extra.items() if v is not None)
        log.info(" ".join(f"{k}={_field(v)}" for k, v in fields.items()))
