"""`hatstream watch` end to end: real files, real watcher subprocesses, the real SQLite ledger.

Jobs use `--model bicubic` with FFV1 output and tiny clips; where a job must be caught half-way,
the clip is long enough (800 small frames) to keep the job running for a few seconds, and the
test waits on the ledger and the temporary output file instead of sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, run_cli
from mediagen import Clip, make_video, video_stream_info

FAST = ("--poll", "0.1", "--settle", "0.3")
LONG = Clip(frames=800, width=32, height=24)


def _preset(tmp: Path) -> Path:
    path = tmp / "test-preset.toml"
    path.write_text('model = "bicubic"\ncontainer = "mkv"\n[encode]\ncodec = "ffv1"\n')
    return path


def _jobs(out: Path) -> list[tuple]:
    """Every ledger row as (rel, state, attempts, quarantined), oldest first; [] before the ledger exists."""
    path = out / ".hatstream" / "ledger.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=10) as db:
        try:
            return db.execute("SELECT rel, state, attempts, quarantined FROM jobs ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # the watcher is still creating the table
            return []


def _watch_once(inp: Path, out: Path, preset: Path, *extra: str) -> subprocess.CompletedProcess:
    result = run_cli("watch", inp, "-o", out, "--preset", preset, "--once", *FAST, *extra, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _start_watcher(inp: Path, out: Path, preset: Path, log: Path, *extra: str) -> subprocess.Popen:
    """A long-running watcher in its own process group (so a test can kill it and its jobs together)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "hatstream", "watch", inp, "-o", out, "--preset", preset, *FAST,
                             *extra], stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=ROOT,
                            start_new_session=True)


def _wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".part" in p.name]


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _watcher_mid_job(tmp: Path) -> tuple[Path, Path, Path, Path, subprocess.Popen]:
    """A watcher on one long clip, returned once its job is running and writing its temporary output.

    Returns (IN_DIR, OUT_DIR, preset, log file, watcher process).
    """
    inp, out, log = tmp / "in", tmp / "out", tmp / "watch.log"
    inp.mkdir()
    make_video(inp / "long.mkv", LONG)
    preset = _preset(tmp)
    proc = _start_watcher(inp, out, preset, log)
    try:
        _wait_for(lambda: proc.poll() is not None or (_jobs(out) == [("long.mkv", "running", 1, 0)]
                                                      and _partials(out)), what="the job to start writing")
        assert proc.poll() is None, log.read_text()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return inp, out, preset, log, proc


def test_file_written_slowly_is_taken_only_once_it_holds_still(tmp_path):
    inp, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "watch.log"
    inp.mkdir()
    data = make_video(tmp_path / "src.mkv", Clip(frames=10)).read_bytes()
    proc = _start_watcher(inp, out, _preset(tmp_path), log, "--settle", "1.5")
    try:
        _wait_for(lambda: (out / ".hatstream" / "ledger.sqlite").exists(), what="the watcher to start")
        target = inp / "slow.mkv"
        chunks = 6
        for i in range(chunks):  # appended over ~3 s, each pause shorter than --settle
            with open(target, "ab") as f:
                f.write(data[i * len(data) // chunks:(i + 1) * len(data) // chunks])
            assert _jobs(out) == [], "taken while still being written"
            time.sleep(0.5)
        _wait_for(lambda: _jobs(out) == [("slow.mkv", "done", 1, 0)], what="the job to finish")
    finally:
        assert _stop(proc) == 0, log.read_text()
    info = video_stream_info(out / "slow.mkv")
    assert (info["frames"], info["width"], info["height"]) == (10, 128, 96)
    assert "state=done path=slow.mkv" in log.read_text()


def test_poison_file_is_quarantined_while_good_files_get_done(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    make_video(inp / "good.mkv", Clip(frames=6))
    make_video(inp / "sub" / "good2.mkv", Clip(frames=6))
    (inp / "poison.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    preset = _preset(tmp_path)
    args = ("--max-attempts", "2", "--retry-delay", "0", "--jobs", "2")

    first = _watch_once(inp, out, preset, *args)
    assert sorted(_jobs(out)) == [("good.mkv", "done", 1, 0), ("poison.mp4", "failed", 1, 0),
                                  ("sub/good2.mkv", "done", 1, 0)], first.stderr
    assert not (out / "failed").exists()  # one failure is not yet a quarantine

    second = _watch_once(inp, out, preset, *args)
    assert sorted(_jobs(out))[1] == ("poison.mp4", "failed", 2, 1)
    assert "state=quarantined path=poison.mp4" in second.stderr
    error = (out / "failed" / "poison.mp4.error.txt").read_text()
    assert "after 2 attempt(s)" in error and "poison.mp4" in error and "not a video file" in error

    third = _watch_once(inp, out, preset, *args)  # quarantined stays quarantined, done stays done
    assert "job=" not in third.stderr
    assert len(_jobs(out)) == 3
    assert video_stream_info(out / "sub" / "good2.mkv")["frames"] == 6
    status = run_cli("watch", "--status", out)
    assert status.returncode == 0, status.stderr
    assert "quarantined" in status.stdout and "not a video file" in status.stdout
    assert "3 file(s): 2 done, 1 quarantined" in status.stdout


def test_sigkill_mid_job_then_restart_finishes_it_once(tmp_path):
    inp, out, preset, _, proc = _watcher_mid_job(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the watcher and its job die together, as in a power cut
    proc.wait(timeout=30)
    assert _jobs(out) == [("long.mkv", "running", 1, 0)]
    assert _partials(out), "expected the killed job's temporary file to be left behind"
    assert not (out / "long.mkv").exists()

    restart = _watch_once(inp, out, preset)
    assert _jobs(out) == [("long.mkv", "done", 2, 0)], restart.stderr  # redone, one row, no duplicate
    assert _partials(out) == []
    assert sorted(p.name for p in out.iterdir()) == [".hatstream", "long.mkv"]
    assert video_stream_info(out / "long.mkv")["frames"] == LONG.frames


def test_sigterm_mid_job_leaves_nothing_and_requeues(tmp_path):
    inp, out, preset, log, proc = _watcher_mid_job(tmp_path)
    assert _stop(proc, signal.SIGTERM) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert "state=queued path=long.mkv attempt=0" in text  # requeued without using up an attempt
    assert _jobs(out) == [("long.mkv", "queued", 0, 0)]
    assert _partials(out) == [] and not (out / "long.mkv").exists()

    restart = _watch_once(inp, out, preset)
    assert _jobs(out) == [("long.mkv", "done", 1, 0)], restart.stderr
    assert video_stream_info(out / "long.mkv")["frames"] == LONG.frames


def test_ignores_escapes_and_out_dir_and_a_second_run_does_nothing(tmp_path):
    inp, outside = tmp_path / "in", tmp_path / "outside"
    out = inp / "out"  # OUT_DIR inside IN_DIR: the watcher must not take its own outputs
    (inp / "sub").mkdir(parents=True)
    outside.mkdir()
    make_video(inp / "a.mkv", Clip(frames=6))
    make_video(inp / "sub" / "b.mkv", Clip(frames=6))
    (inp / "sub" / "hatstream.toml").write_text("scale = 4\n")  # folder override
    make_video(outside / "secret.mkv", Clip(frames=6))
    (inp / "escape.mkv").symlink_to(outside / "secret.mkv")
    (inp / "escape-dir").symlink_to(outside, target_is_directory=True)
    make_video(inp / ".hidden.mkv", Clip(frames=6))
    (inp / "download.mkv.part").write_bytes((inp / "a.mkv").read_bytes())
    out.mkdir()
    make_video(out / "already-here.mkv", Clip(frames=6))
    preset = _preset(tmp_path)

    first = _watch_once(inp, out, preset)
    assert sorted(_jobs(out)) == [("a.mkv", "done", 1, 0), ("sub/b.mkv", "done", 1, 0)], first.stderr
    assert (video_stream_info(out / "a.mkv")["width"], video_stream_info(out / "sub" / "b.mkv")["width"]) == (128, 256)
    outputs = {p: p.stat().st_mtime_ns for p in out.rglob("*.mkv")}

    second = _watch_once(inp, out, preset)
    assert "job=" not in second.stderr, second.stderr
    assert len(_jobs(out)) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mkv")} == outputs

    make_video(inp / "a.mkv", Clip(frames=8))  # a changed file is a new job, and its output is replaced
    third = _watch_once(inp, out, preset)
    assert [r for r in _jobs(out) if r[0] == "a.mkv"] == [("a.mkv", "done", 1, 0)] * 2, third.stderr
    assert video_stream_info(out / "a.mkv")["frames"] == 8


def test_preset_values_are_checked_against_the_runs_own_lists():
    # The watcher's presets accept exactly what `hatstream run` accepts, read from the same lists.
    import pytest

    from hatstream.errors import HatstreamError
    from hatstream.inference.precision import PRECISIONS
    from hatstream.media.decode import ON_ERROR
    from hatstream.watch.presets import Preset, apply

    for name in PRECISIONS:
        assert apply(Preset(), {"precision": name}, "p.toml").precision == name
    for mode in ON_ERROR:
        assert apply(Preset(), {"on_error": mode}, "p.toml").on_error == mode
    with pytest.raises(HatstreamError, match=", ".join(PRECISIONS)):
        apply(Preset(), {"precision": "fp64"}, "p.toml")
    with pytest.raises(HatstreamError, match=", ".join(ON_ERROR)):
        apply(Preset(), {"on_error": "skip"}, "p.toml")


def test_inside_is_one_rule_for_strings_and_paths():
    from hatstream.watch.scanner import inside

    for make in (str, Path):
        assert inside(make("/srv/in"), make("/srv/in")) and inside(make("/srv/in/a/b.mkv"), make("/srv/in"))
        assert not inside(make("/srv/input/b.mkv"), make("/srv/in"))  # a name prefix is not a parent
        assert not inside(make("/srv"), make("/srv/in"))
    assert inside("/srv/in/x", Path("/srv/in")) and inside("/anything", "/")
