"""The local engine (hatstream.pipeline.engine): order, batching, bounded queues, failures, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hatstream.media.decode import Frame
from hatstream.pipeline.engine import run_stages


def _frames(n, shape=(4, 6), log=None):
    for i in range(n):
        if log is not None:
            log.append(i)
        yield Frame(i, i * 10, (np.full(shape, i % 256, np.uint8),))


def _double(batch):
    return [tuple(np.repeat(np.repeat(p, 2, 0), 2, 1) for p in planes) for planes in batch]


def test_order_and_batches():
    sizes, written = [], []

    def upscale(batch):
        sizes.append(len(batch))
        return _double(batch)

    n = run_stages(_frames(11), upscale, written.append, batch=4)
    assert n == 11 and [f.index for f in written] == list(range(11)) and [f.pts for f in written] == \
        [i * 10 for i in range(11)]
    assert sizes == [4, 4, 3]
    assert all(f.planes[0].shape == (8, 12) and f.planes[0][0, 0] == f.index for f in written)


def test_a_size_change_ends_a_batch():
    def frames():
        yield from _frames(3)
        yield Frame(3, 30, (np.zeros((6, 6), np.uint8),))
    sizes = []
    run_stages(frames(), lambda b: sizes.append(len(b)) or _double(b), lambda f: None, batch=8)
    assert sizes == [3, 1]


def test_decoder_never_runs_far_ahead():
    produced = []
    gate = threading.Event()

    def slow_write(frame):
        gate.wait(5)

    def watch():
        time.sleep(0.5)
        ahead.append(len(produced))
        gate.set()

    ahead = []
    threading.Thread(target=watch).start()
    run_stages(_frames(200, log=produced), _double, slow_write, batch=2, depth=3)
    # Blocked writer: at most depth (decoded queue) + batch (in the model) + depth (upscaled queue)
    # + one in each thread's hands can exist; never the whole video.
    assert ahead[0] <= 3 + 2 + 3 + 3


@pytest.mark.parametrize("where", ["decode", "upscale", "write"])
def test_an_error_in_any_stage_stops_the_run_and_is_raised(where):
    def frames():
        for f in _frames(50):
            if where == "decode" and f.index == 7:
                raise ValueError("boom in decode")
            yield f

    def upscale(batch):
        if where == "upscale":
            raise ValueError("boom in upscale")
        return _double(batch)

    def write(frame):
        if where == "write" and frame.index == 3:
            raise ValueError("boom in write")

    before = threading.active_count()
    with pytest.raises(ValueError, match=f"boom in {where}"):
        run_stages(frames(), upscale, write, batch=2)
    time.sleep(0.3)
    assert threading.active_count() == before  # the decode and encode threads are gone


def test_interrupt_in_the_model_thread_stops_the_others():
    def upscale(batch):
        if batch[0][0][0, 0] >= 4:
            raise KeyboardInterrupt
        return _double(batch)

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        run_stages(_frames(1000), upscale, lambda f: None, batch=2)
    time.sleep(0.3)
    assert threading.active_count() == before


def test_progress_reports_every_frame():
    seen = []
    run_stages(_frames(5), _double, lambda f: None, batch=2, total=5, exact=True, on_progress=seen.append)
    assert [p.frames for p in seen] == [1, 2, 3, 4, 5] and all(p.total == 5 for p in seen)
