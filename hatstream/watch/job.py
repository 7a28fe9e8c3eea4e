"""One watch job in its own process: `python -m hatstream.watch.job CONFIG_JSON`.

Each job runs `run_file` in a child process, for three reasons:
- a file that crashes FFmpeg (a decoder segfault) costs one failed attempt, not the watcher;
- stopping a job is a signal to the child, which takes `run_file`'s own clean-up path
  (KeyboardInterrupt in the thread that runs the model; the temporary output is removed);
- memory from one job (model, decoder pools) is returned to the system when it ends.
The price is importing torch once per job, a few seconds, small against upscaling a video.

The child prints one JSON line on stdout: the result, or `{"error": ...}` for a HatstreamError
(exit status 2). Interrupted, it exits 130; anything else is a bug with a traceback on stderr.

Given the OUT_DIR and its job id (`... CONFIG_JSON OUT_DIR JOB_ID`), the child also writes its
progress into the ledger about once a second, and, once done, a small before/after thumbnail
to `OUT_DIR/.hatstream/thumbs/<id>.png`. The status page reads both; neither can fail the job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hatstream.pipeline.options import EncodeSettings
from hatstream.pipeline.run import RunConfig

INTERRUPTED = 130
_PARENT_ENV = "HATSTREAM_WATCH_PARENT"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def config_to_json(config: RunConfig) -> str:
    """A RunConfig as JSON (paths as strings), for the child's command line."""
    return json.dumps(dataclasses.asdict(config), default=str)


def config_from_json(text: str) -> RunConfig:
    """The inverse of `config_to_json`."""
    data = json.loads(text)
    data["input"] = Path(data["input"])
    data["output"] = Path(data["output"]) if data["output"] is not None else None
    data["encode"] = EncodeSettings(**data["encode"])
    return RunConfig(**data)


@dataclass(frozen=True)
class Outcome:
    """How a job process ended: 'done', 'failed' or 'interrupted', with the error or the result."""

    kind: str
    error: str | None = None
    frames: int | None = None
    seconds: float | None = None


class JobProcess:
    """A running job child. Output goes to temporary files, so a chatty child never blocks on a pipe.

    With `report=(out_dir, job_id)` the child records its progress and thumbnail for that ledger row.
    """

    def __init__(self, config: RunConfig, report: tuple[Path, int] | None = None):
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ, **{_PARENT_ENV: str(os.getpid())})
        # The child must import this same hatstream, wherever the watcher was started from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        report_args = [str(report[0]), str(report[1])] if report is not None else []
        self.proc = subprocess.Popen([sys.executable, "-m", "hatstream.watch.job", config_to_json(config),
                                      *report_args],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=env)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def stop(self) -> None:
        """Ask the job to stop cleanly (SIGTERM: the child removes its partial output and exits 130)."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        """Stop the job at once; the caller must clean up its partial output."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def poll(self) -> Outcome | None:
        """The outcome once the child has exited, else None."""
        rc = self.proc.poll()
        if rc is None:
            return None
        stdout = self._read(self._out)
        stderr = self._read(self._err)
        result = {}
        for line in reversed(stdout.splitlines()):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
        if rc == 0 and "frames" in result:
            return Outcome("done", frames=result["frames"], seconds=result["seconds"])
        if rc in (INTERRUPTED, -signal.SIGTERM, -signal.SIGINT):
            return Outcome("interrupted", error="stopped by a signal")
        if "error" in result:
            return Outcome("failed", error=result["error"])
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        if rc < 0:
            return Outcome("failed", error=f"the job process died of {signal.Signals(-rc).name}. {last}".strip())
        return Outcome("failed", error=last or f"the job process exited with status {rc}")

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        text = f.read().decode("utf-8", "replace")
        f.close()
        return text


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the watcher dies (Linux), so a killed watcher leaves no orphan job
    that could race the job's rerun after a restart."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    parent = os.environ.get(_PARENT_ENV)
    if parent and os.getppid() != int(parent):  # the watcher died before prctl took effect
        raise KeyboardInterrupt


THUMBS_DIR = "thumbs"
_REPORT_EVERY = 1.0  # seconds between progress updates in the ledger


def thumbnail_path(out_dir: Path, job_id: int) -> Path:
    """Where the before/after thumbnail of job `job_id` is kept."""
    from hatstream.watch.ledger import STATE_DIR

    return Path(out_dir) / STATE_DIR / THUMBS_DIR / f"{job_id}.png"


class _Reporter:
    """The job's progress, into the ledger at most once a second. A ledger that cannot be written
    (locked for long, removed) costs only the progress display, never the job."""

    def __init__(self, out_dir: Path, job_id: int):
        self.out_dir, self.job_id = out_dir, job_id
        self.last = 0.0
        self.total = 0
        self.broken = False

    def _write(self, frames: int, total: int, fps: float) -> None:
        import sqlite3

        from hatstream.errors import HatstreamError
        from hatstream.watch.ledger import Ledger

        if self.broken:
            return
        try:
            # A connection per write: updates come from the encoder thread, and a sqlite3
            # connection belongs to the thread that made it. Once a second, that costs nothing.
            ledger = Ledger(self.out_dir, create=False)
            try:
                ledger.progress(self.job_id, frames, total, fps)
            finally:
                ledger.close()
        except (sqlite3.Error, HatstreamError) as exc:
            self.broken = True
            logging.getLogger(__name__).warning("cannot record progress in the ledger: %s", exc)

    def start(self, total: int, exact: bool) -> None:  # noqa: ARG002 - run_file's on_start signature
        self.total = total
        self._write(0, total, 0.0)

    def update(self, p) -> None:
        now = time.monotonic()
        if now - self.last >= _REPORT_EVERY:
            self.last = now
            self._write(p.frames, p.total, round(p.fps, 3))

    def finish(self, config: RunConfig, output: Path) -> None:
        """Write the thumbnail of the finished job (a failure is logged, the job stays done)."""
        from hatstream.atomic import atomic_output
        from hatstream.pipeline.preview import thumbnail
        from hatstream.pipeline.preview_render import png_bytes

        try:
            data = png_bytes(thumbnail(config.input, output))
            with atomic_output(thumbnail_path(self.out_dir, self.job_id)) as tmp:
                tmp.write_bytes(data)
        except Exception as exc:  # noqa: BLE001 - a thumbnail is decoration
            logging.getLogger(__name__).warning("no thumbnail for %s: %s", output, exc)


def main(argv: list[str]) -> int:
    """Run the job described by argv[1]; returns the exit status described in the module docstring."""
    from hatstream.errors import HatstreamError, interrupt_on_sigterm

    interrupt_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="hatstream job: %(levelname)s: %(message)s", stream=sys.stderr)
    from hatstream.pipeline.run import run_file

    try:
        _die_with_parent()
        config = config_from_json(argv[1])
        reporter = _Reporter(Path(argv[2]), int(argv[3])) if len(argv) >= 4 else None
        if reporter is None:
            result = run_file(config)
        else:
            result = run_file(config, on_progress=reporter.update, on_start=reporter.start)
            reporter.finish(config, result.output)
        print(json.dumps({"frames": result.frames, "seconds": round(result.seconds, 3),
                          "output": str(result.output)}), flush=True)
    except HatstreamError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    except KeyboardInterrupt:
        # Also after the output was renamed into place: the rerun then finds that this job wrote it.
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
