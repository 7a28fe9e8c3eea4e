"""`hatstream run` on bad input, damaged input, unsafe paths and interruptions.

Every failure must be one line `hatstream: error: ...`, exit status 2 (130 for an interrupt),
and leave nothing behind: no output, no temporary file.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from mediagen import Audio, Clip, frame_times, make_audio_only, make_video, popen_cli, run_cli


def _assert_clean_failure(proc, tmp_path, expected_files, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hatstream: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected_files)


def test_missing_input(tmp_path):
    _assert_clean_failure(run_cli(tmp_path / "nope.mp4", "--model", "bicubic"), tmp_path, [], "does not exist")


def test_empty_input(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _assert_clean_failure(run_cli(tmp_path / "empty.mp4", "--model", "bicubic"), tmp_path, ["empty.mp4"], "empty")


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mkv").write_text("these are not the frames you are looking for\n" * 20)
    _assert_clean_failure(run_cli(tmp_path / "notes.mkv", "--model", "bicubic"), tmp_path, ["notes.mkv"],
                          "not a video")


def test_audio_only(tmp_path):
    make_audio_only(tmp_path / "song.m4a")
    _assert_clean_failure(run_cli(tmp_path / "song.m4a", "--model", "bicubic"), tmp_path, ["song.m4a"],
                          "no video stream", "audio")


def test_folder_as_input(tmp_path):
    (tmp_path / "d.mp4").mkdir()
    _assert_clean_failure(run_cli(tmp_path / "d.mp4", "--model", "bicubic"), tmp_path, ["d.mp4"], "folder")


@pytest.mark.parametrize("name, clip", [
    ("cut.mp4", Clip(frames=20, codec="libx264")),          # index (moov) at the end: gone
    ("cut.mkv", Clip(frames=60, audio=(Audio("aac"),))),     # clusters missing after the cut
])
def test_truncated_input(tmp_path, name, clip):
    full = make_video(tmp_path / ("full" + name[3:]), clip)
    data = full.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    full.unlink()
    _assert_clean_failure(run_cli(tmp_path / name, "--model", "bicubic", "--codec", "ffv1"), tmp_path, [name],
                          "truncated")


def test_playlist_disguised_as_video_is_refused(tmp_path):
    # An HLS playlist that would make FFmpeg read a local file (or the network) into the video.
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    (tmp_path / "evil.mp4").write_text(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nfile://{secret}\n"
                                       "#EXT-X-ENDLIST\n")
    _assert_clean_failure(run_cli(tmp_path / "evil.mp4", "--model", "bicubic"), tmp_path,
                          ["evil.mp4", "secret.txt"], "not a video")


def _damaged_clip(tmp_path, codec):
    """A 20-frame clip (25 fps) whose frame 10 (t = 0.400 s) has garbage in its middle."""
    import av
    clip = Clip(frames=20, codec=codec, pix_fmt="yuvj420p" if codec == "mjpeg" else "yuv420p")
    src = make_video(tmp_path / "good.mkv", clip)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[10]
    start = pos + size // 3
    for k in range(start, min(start + 200, pos + size - 4)):
        data[k] ^= 0x5A
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    return src, bad


@pytest.mark.parametrize("codec", ["mjpeg", "mpeg4"])
def test_damaged_packet_fails_naming_the_timestamp(tmp_path, codec):
    src, bad = _damaged_clip(tmp_path, codec)
    _assert_clean_failure(run_cli(bad, "--model", "bicubic", "--codec", "ffv1"), tmp_path,
                          ["good.mkv", "bad.mkv"], "0.400s", "--on-error conceal")


@pytest.mark.parametrize("codec", ["mjpeg", "mpeg4"])
def test_damaged_packet_concealed_and_counted(tmp_path, codec):
    src, bad = _damaged_clip(tmp_path, codec)
    proc = run_cli(bad, "--model", "bicubic", "--codec", "ffv1", "--on-error", "conceal", "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.splitlines()[-1])
    assert done["frames"] == 20 and done["repaired"] == 1 and done["dropped"] == 0
    assert any("0.400s" in p for p in done["problems"])
    assert frame_times(tmp_path / "bad.x2.mkv") == frame_times(src)


def test_refuses_to_overwrite_without_flag(tmp_path):
    src = make_video(tmp_path / "c.mkv", Clip(frames=4))
    out = tmp_path / "c.x2.mkv"
    out.write_bytes(b"precious")
    _assert_clean_failure(run_cli(src, "--model", "bicubic", "--codec", "ffv1"), tmp_path, ["c.mkv", "c.x2.mkv"],
                          "--overwrite")
    assert out.read_bytes() == b"precious"
    proc = run_cli(src, "--model", "bicubic", "--codec", "ffv1", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() != b"precious"


def test_refuses_to_write_over_the_input(tmp_path):
    src = make_video(tmp_path / "c.mkv", Clip(frames=4))
    before = src.read_bytes()
    _assert_clean_failure(run_cli(src, "-o", src, "--model", "bicubic", "--overwrite"), tmp_path, ["c.mkv"],
                          "input")
    assert src.read_bytes() == before


def test_unknown_output_container(tmp_path):
    src = make_video(tmp_path / "c.mkv", Clip(frames=4))
    _assert_clean_failure(run_cli(src, "-o", tmp_path / "c.avi", "--model", "bicubic"), tmp_path, ["c.mkv"],
                          ".mkv")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run_leaves_nothing(tmp_path, sig):
    src = make_video(tmp_path / "long.mkv", Clip(frames=1500, width=32, height=24))
    proc = popen_cli(src, "--model", "bicubic", "--codec", "ffv1", "--json")
    try:
        seen = 0
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # wait until frames are being written
            if json.loads(line).get("event") == "progress":
                seen += 1
                break
            assert time.monotonic() < deadline
        assert seen, proc.stderr.read()
        assert any(p.name.endswith(".part.mkv") for p in tmp_path.iterdir())  # mid-run: the temp file exists
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mkv"]
