"""Fault injection: hostile inputs and hostile state, the real run, and nothing lost, kept wrong or touched
outside its folder.

Each test builds the hostile thing for real (a cut file, a tampered manifest, a ledger row, a replaced
input), runs the real CLI or library entry point on it, and checks the outcome on disk.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import pytest
from mediagen import Audio, Clip, make_video, run_cli

SEGMENTED = ("--model", "bicubic", "--codec", "ffv1", "--segment-seconds", "0.5")
LONG = Clip(frames=80, rate=Fraction(10), codec="libx264", options={"g": "5", "bf": "2"}, audio=(Audio(),))


def _error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("hatstream: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


def _faststart(src, dst):
    """Remux `src` into an MP4 whose index (moov) comes first, so that a cut copy still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


# ---- truncated inputs on the segmented path ---------------------------------------------------------

@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    mkv = make_video(folder / "long.mkv", LONG)
    # Mostly audio: in the cut MP4 the demuxer meets an audio sample past the end long before the
    # last video sample that is still there.
    heavy = make_video(folder / "heavy.mkv", Clip(frames=160, width=32, height=24, rate=Fraction(2),
                                                  codec="libx264", options={"g": "10", "bf": "2"}, audio=(Audio(),)))
    return {"mkv": mkv, "mp4": _faststart(mkv, folder / "long.mp4"),
            "audio-heavy.mp4": _faststart(heavy, folder / "heavy.mp4")}


@pytest.mark.parametrize("shape,keep", [("mkv", 0.5), ("mkv", 0.75), ("mp4", 0.6), ("audio-heavy.mp4", 0.3)])
def test_truncated_input_fails_segmented_as_in_one_pass(long_clips, tmp_path, shape, keep):
    data = long_clips[shape].read_bytes()
    src = tmp_path / f"cut.{long_clips[shape].suffix[1:]}"
    src.write_bytes(data[: int(len(data) * keep)])
    one_pass = _error(run_cli(src, "-o", tmp_path / "one.mkv", *SEGMENTED[:4], "--segment-seconds", "0"))
    segmented = _error(run_cli(src, "-o", tmp_path / "seg.mkv", *SEGMENTED))
    assert "truncated" in one_pass
    assert segmented == one_pass
    # No output, no work folder, no temporary file: only the input is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_a_cut_inside_a_video_packet_is_called_truncated_too(long_clips, tmp_path):
    # Where a cut lands depends on the encoder's bytes (x264's differ between CPUs), so this cuts
    # in the middle of a known video packet: the demuxer then returns it short, flagged corrupt,
    # and the decoder fails on it. That is the end of a cut file, not damage inside one.
    mp4 = long_clips["mp4"]
    with av.open(str(mp4)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    victim = packets[len(packets) * 2 // 3]
    src = tmp_path / "cut.mp4"
    src.write_bytes(mp4.read_bytes()[: victim.pos + victim.size // 2])
    one_pass = _error(run_cli(src, "-o", tmp_path / "one.mkv", *SEGMENTED[:4], "--segment-seconds", "0"))
    assert "truncated" in one_pass and "damaged" not in one_pass
    assert _error(run_cli(src, "-o", tmp_path / "seg.mkv", *SEGMENTED)) == one_pass


# ---- a tampered manifest ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["parent", "absolute", "other-name"])
def test_tampered_manifest_never_reaches_outside_its_folder(tmp_path, how):
    from test_resume import CLIP, FRAMES, _kill_after, _work

    src = make_video(tmp_path / "clip.mkv", CLIP)
    out = tmp_path / "out.mkv"
    manifest = _kill_after(src, out, 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("not a segment")
    inside = _work(out) / "keep.txt"
    inside.write_text("not a segment either")
    name = {"parent": "../victim.txt", "absolute": str(victim), "other-name": "keep.txt"}[how]
    manifest["done"][0]["path"] = name
    (_work(out) / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli(src, "-o", out, *SEGMENTED, "--json")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "not a segment"
    assert "manifest" in proc.stderr and "starting over" in proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    assert done["frames"] == FRAMES and done["resumed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "out.mkv", "victim.txt"]


def test_work_folder_that_is_a_symlink_is_refused(tmp_path):
    from test_resume import CLIP

    src = make_video(tmp_path / "clip.mkv", CLIP)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    out = tmp_path / "out" / "out.mkv"
    out.parent.mkdir()
    (out.parent / f".{out.name}.hatstream-work").symlink_to(elsewhere)
    line = _error(run_cli(src, "-o", out, *SEGMENTED))
    assert "not a plain folder" in line
    assert [p.name for p in elsewhere.iterdir()] == ["precious.txt"] and not out.exists()


# ---- built-in models are fingerprinted by their weights ---------------------------------------------

def test_builtin_model_identity_follows_its_weights(tmp_path, monkeypatch):
    import shutil

    from hatstream.inference import load_model
    from hatstream.models import registry
    from hatstream.pipeline.resume import model_identity

    upscaler = load_model("hat-tiny-x2", device="cpu", precision="fp32")
    before = model_identity("hat-tiny-x2", upscaler)
    assert model_identity(None, upscaler) == before  # 'default' at x2 is the same model
    # The same release with other bundled weights (they changed five times under 0.1.0).
    other = tmp_path / "weights"
    shutil.copytree(registry.WEIGHTS_DIR, other)
    blob = bytearray((other / "hat-tiny-x2.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # the last byte of the last tensor
    (other / "hat-tiny-x2.safetensors").write_bytes(bytes(blob))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", other)
    assert model_identity("hat-tiny-x2", upscaler) != before
    # A file that happens to be called like a built-in is not what load_model loads.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bicubic").write_bytes(b"x")
    bicubic = load_model("bicubic", device="cpu", precision="fp32")
    assert model_identity("bicubic", bicubic)["builtin"] == "bicubic"


# ---- the watch service ------------------------------------------------------------------------------

def _preset(tmp):
    path = tmp / "test-preset.toml"
    path.write_text('model = "bicubic"\ncontainer = "mkv"\n[encode]\ncodec = "ffv1"\n')
    return path


def _watch_once(inp, out, *extra):
    from conftest import run_cli as run_hatstream

    proc = run_hatstream("watch", inp, "-o", out, "--preset", _preset(inp.parent), "--once", "--poll", "0.1",
                         "--settle", "0.3", *extra, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def _rows(out):
    import sqlite3

    with sqlite3.connect(out / ".hatstream" / "ledger.sqlite") as db:
        return db.execute("SELECT rel, state, attempts, quarantined, output FROM jobs ORDER BY id").fetchall()


def test_job_left_running_past_max_attempts_is_quarantined_not_run(tmp_path):
    from hatstream.watch.ledger import Ledger

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    src = make_video(inp / "poison.mkv", Clip(frames=5))
    st = src.stat()
    # A file that took the watcher down five times: each crash left its job 'running'.
    ledger = Ledger(out)
    job = ledger.add("poison.mkv", st.st_size, st.st_mtime_ns)
    for _ in range(5):
        ledger.start(job.id, str(out / "poison.mkv"))
    ledger.close()
    proc = _watch_once(inp, out, "--max-attempts", "3")
    assert "attempt=6/3" not in proc.stderr and "state=running" not in proc.stderr
    assert _rows(out) == [("poison.mkv", "failed", 5, 1, str(out / "poison.mkv"))]
    assert not (out / "poison.mkv").exists()
    assert "never finished" in (out / "failed" / "poison.mkv.error.txt").read_text()


def _frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_input_replaced_by_an_older_file_is_redone(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    make_video(inp / "a.mkv", Clip(frames=10))
    _watch_once(inp, out)
    assert _frames(out / "a.mkv") == 10
    # Another video arrives under the same name, keeping its own (older) mtime, as `cp -p` does.
    make_video(tmp_path / "b.mkv", Clip(frames=6, width=32, height=24))
    os.utime(tmp_path / "b.mkv", ns=(10**18, 10**18))
    os.replace(tmp_path / "b.mkv", inp / "a.mkv")
    _watch_once(inp, out)
    assert _frames(out / "a.mkv") == 6
    assert [r[:4] for r in _rows(out)] == [("a.mkv", "done", 1, 0), ("a.mkv", "done", 1, 0)]


def test_output_an_attempt_left_in_place_is_kept(tmp_path):
    from hatstream.watch.ledger import Ledger

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    src = make_video(inp / "a.mkv", Clip(frames=10))
    st = src.stat()
    # The job was cut off after its output was renamed into place, before the ledger said 'done'.
    ledger = Ledger(out)
    job = ledger.add("a.mkv", st.st_size, st.st_mtime_ns)
    ledger.start(job.id, str(out / "a.mkv"))
    ledger.close()
    make_video(out / "a.mkv", Clip(frames=3, width=128, height=96))
    proc = _watch_once(inp, out)
    assert "kept the existing output" in proc.stderr
    assert _frames(out / "a.mkv") == 3 and _rows(out)[0][:2] == ("a.mkv", "done")


# ---- writers take the file protocol -----------------------------------------------------------------

@pytest.mark.parametrize("seconds", ["0", "0.5"])
def test_output_name_with_a_colon_is_a_file(tmp_path, seconds):
    from test_resume import CLIP, FRAMES

    src = make_video(tmp_path / "clip.mkv", CLIP)
    proc = run_cli(src, "-o", "x:y.mkv", *SEGMENTED[:4], "--segment-seconds", seconds, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _frames(tmp_path / "x:y.mkv") == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "x:y.mkv"]


# ---- a folder's hatstream.toml and the model it names -----------------------------------------------

def test_folder_file_may_name_only_checkpoints_under_the_watched_folder(tmp_path):
    import shutil

    from hatstream.models.registry import WEIGHTS_DIR

    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "evil").mkdir(parents=True)
    (inp / "good" / "models").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "ckpt.safetensors"
    outside.parent.mkdir()
    shutil.copy(WEIGHTS_DIR / "hat-tiny-x2.safetensors", outside)
    shutil.copy(WEIGHTS_DIR / "hat-tiny-x2.safetensors", inp / "good" / "models" / "ckpt.safetensors")
    (inp / "evil" / "hatstream.toml").write_text(f'model = "{outside}"\nscale = 2\n')
    (inp / "good" / "hatstream.toml").write_text('model = "models/ckpt.safetensors"\nscale = 2\n')
    make_video(inp / "evil" / "a.mkv", Clip(frames=3, width=32, height=24))
    make_video(inp / "good" / "a.mkv", Clip(frames=3, width=32, height=24))
    _watch_once(inp, out, "--max-attempts", "1")
    states = {r[0]: r[1:4] for r in _rows(out)}
    assert states == {"evil/a.mkv": ("failed", 1, 1), "good/a.mkv": ("done", 1, 0)}
    assert not (out / "evil" / "a.mkv").exists() and _frames(out / "good" / "a.mkv") == 3
    error = (out / "failed" / "evil" / "a.mkv.error.txt").read_text()
    assert "model must be a built-in" in error and str(outside) in error


# ---- work folders do not leak -----------------------------------------------------------------------

def _work_folder(output, *names):
    folder = output.with_name(f".{output.name}.hatstream-work")
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"segment")
    return folder


def test_work_folders_of_finished_jobs_go_and_ledger_paths_stay_confined(tmp_path):
    from hatstream.watch.ledger import Ledger

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    src = make_video(inp / "poison.mkv", Clip(frames=5))
    live = make_video(inp / "live.mkv", Clip(frames=5))
    ledger = Ledger(out)
    # A poison file, cut off by crashes until it has no attempts left, had finished two segments.
    st = src.stat()
    poison = ledger.add("poison.mkv", st.st_size, st.st_mtime_ns)
    for _ in range(3):
        ledger.start(poison.id, str(out / "poison.mkv"))
    poison_work = _work_folder(out / "poison.mkv", "seg-00000.nut", "seg-00001.nut")
    # An input deleted after a failed attempt.
    gone = ledger.add("gone.mkv", 1000, 1)
    ledger.fail(ledger.start(gone.id, str(out / "sub" / "gone.mkv")).id, "boom", quarantine=False)
    gone_work = _work_folder(out / "sub" / "gone.mkv", "seg-00000.nut")
    # A failed job whose input is still there keeps its folder for the retry.
    st = live.stat()
    retry = ledger.add("live.mkv", st.st_size, st.st_mtime_ns)
    ledger.fail(ledger.start(retry.id, str(out / "live.mkv")).id, "boom", quarantine=False)
    live_work = _work_folder(out / "live.mkv", "seg-00000.nut")
    # Tampered rows: an output outside OUT_DIR and a path that climbs out of it.
    victim = tmp_path / "victim"
    victim_work = _work_folder(victim / "x.mkv", "seg-00000.nut")
    (victim / ".x.abcd1234.part.mkv").write_bytes(b"x")
    evil = ledger.add("../../evil.mkv", 1, 1)
    ledger.fail(ledger.start(evil.id, str(victim / "x.mkv")).id, "boom", quarantine=True)
    evil2 = ledger.add("evil2.mkv", 1, 1)
    ledger.start(evil2.id, str(victim / "x.mkv"))  # left running: recovered on start
    ledger.close()
    _watch_once(inp, out, "--retry-delay", "3600")
    assert not poison_work.exists() and not gone_work.exists()
    assert sorted(p.name for p in live_work.iterdir()) == ["seg-00000.nut"]
    assert sorted(p.name for p in victim.iterdir()) == [".x.abcd1234.part.mkv", ".x.mkv.hatstream-work"]
    assert sorted(p.name for p in victim_work.iterdir()) == ["seg-00000.nut"]
    assert not list(tmp_path.glob("**/evil.mkv.error.txt"))


def test_work_folder_in_use_is_not_removed(tmp_path):
    import fcntl

    from hatstream.pipeline.resume import remove_work_folder

    output = tmp_path / "out.mkv"
    folder = _work_folder(output, "seg-00000.nut")
    with open(folder / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_work_folder(output) is False
        assert (folder / "seg-00000.nut").exists()
    assert remove_work_folder(output) is True and not folder.exists()


# ---- images with the same name ----------------------------------------------------------------------

def test_images_with_one_name_are_refused_before_any_work(tmp_path):
    import cv2
    import numpy as np
    from conftest import run_cli as run_hatstream

    for folder, value in (("a", 10), ("b", 200)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.full((8, 8, 3), value, np.uint8))
    out = tmp_path / "out"
    proc = run_hatstream("image", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o", out,
                         "--model", "bicubic", "--overwrite")
    line = _error(proc)
    assert "would both be written to" in line and str(out / "x.png") in line
    assert not out.exists()
