"""The one write-then-rename helper (`hatstream.atomic`) that segments, manifests and outputs share."""

from __future__ import annotations

import hashlib

import pytest

from hatstream.atomic import atomic_output, durable_replace, file_sha256, write_durably


def test_write_durably_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "manifest.json"
    write_durably(target, "one")
    write_durably(target, b"two")
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    with pytest.raises(TypeError):
        write_durably(target, 3)  # fails while writing: the old content stays, no temporary is left
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_durable_replace_and_atomic_output_publish_the_same_bytes(tmp_path):
    data = bytes(range(256)) * 5000
    part = tmp_path / "seg.nut.part"
    part.write_bytes(data)
    durable_replace(part, tmp_path / "seg.nut")
    assert not part.exists() and file_sha256(tmp_path / "seg.nut") == hashlib.sha256(data).hexdigest()
    with atomic_output(tmp_path / "out.mkv", overwrite=False) as tmp:
        tmp.write_bytes(data)
    assert (tmp_path / "out.mkv").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv", "seg.nut"]


def test_atomic_output_makes_missing_folders_and_takes_them_back_on_failure(tmp_path):
    out = tmp_path / "a" / "b" / "out.mkv"
    with pytest.raises(KeyboardInterrupt), atomic_output(out) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("someone else's")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        raise RuntimeError("cut")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]  # only b/ was ours
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole"


def test_a_killed_writers_temporary_file_goes_once_stale_and_a_live_ones_stays(tmp_path):
    import os
    import time

    from hatstream.atomic import STALE_SECONDS, partial_files

    out = tmp_path / "clip.x2.mp4"
    killed, live = tmp_path / ".clip.x2.a1b2c3d4.part.mp4", tmp_path / ".clip.x2.e5f6g7h8.part.mp4"
    for path in (killed, live):
        path.write_bytes(b"half")
    os.utime(killed, (time.time() - STALE_SECONDS - 60,) * 2)
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert partial_files(out) == [live] and out.read_bytes() == b"whole"
