"""The local engine: decoder thread -> bounded queue -> batched upscale -> bounded queue -> encoder thread.

    decode thread ──frames──▶ [queue, 2×batch] ──▶ model (calling thread) ──▶ [queue, 2×batch] ──▶ encode thread

Both queues are bounded, so memory stays flat whatever the video's length: a fast decoder
blocks on a full queue instead of filling RAM, and nothing is written to disk. The model runs
in the calling thread (the main thread from the CLI), so Ctrl-C and SIGTERM land where it can
stop the other two.

Shutdown: any exception in any stage sets a shared `stop` event. Every blocking queue
operation waits in short slices and checks that event, so the other threads leave within a
fraction of a second; the first exception is then re-raised in the calling thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from hatstream.media.decode import Frame

log = logging.getLogger(__name__)

_END = object()   # end-of-stream marker on a queue
_POLL = 0.1       # seconds between checks of the stop event while blocked


@dataclass(frozen=True)
class Progress:
    """Where a run stands: frames written, the expected total (estimated when not `exact`), seconds."""

    frames: int
    total: int
    exact: bool
    elapsed: float

    @property
    def fps(self) -> float:
        """Frames written per second so far."""
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class StageTimes:
    """Seconds a run's stages spent working, summed over its frames (not the time spent waiting on
    their queues): the decoder producing frames, the model, the encoder writing them.

    Filled by `run_stages` when it is given one; the stages overlap, so the sums can exceed the
    wall time, and the largest tells which stage limits the run. Each field is written by one
    thread only.
    """

    decode: float = 0.0
    model: float = 0.0
    encode: float = 0.0
    frames: int = 0

    def as_dict(self) -> dict:
        """The sums as a plain dict (for logs, JSON and Ray)."""
        return {"decode": self.decode, "model": self.model, "encode": self.encode, "frames": self.frames}


def timed_frames(frames: Iterable[Frame], times: StageTimes) -> Iterator[Frame]:
    """`frames`, adding the time each one took to produce to `times.decode`."""
    it = iter(frames)
    while True:
        start = time.perf_counter()
        frame = next(it, _END)
        times.decode += time.perf_counter() - start
        if frame is _END:
            return
        yield frame


def _frames_timed(frames, upscale, write, times: StageTimes):
    """The three stages of `run_stages`, each adding its working time to `times`."""
    def timed_upscale(batch):
        start = time.perf_counter()
        out = upscale(batch)
        times.model += time.perf_counter() - start
        return out

    def timed_write(frame):
        start = time.perf_counter()
        write(frame)
        times.encode += time.perf_counter() - start
        times.frames += 1

    return timed_frames(frames, times), timed_upscale, timed_write


class _Stopped(Exception):
    """Raised inside a stage when another stage has failed; never leaves the engine."""


class _Stages:
    """The shared state of one run: the stop event and the first error."""

    def __init__(self):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue

    def thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def body():
            try:
                target()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                self.fail(exc)
        t = threading.Thread(target=body, name=f"hatstream-{name}", daemon=True)
        t.start()
        return t


def batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Lists of up to `size` consecutive frames; a change of frame size starts a new list, since a
    batch becomes one tensor. Both engines batch through this."""
    group: list[Frame] = []
    for frame in frames:
        if group and frame.planes[0].shape != group[0].planes[0].shape:
            yield group
            group = []
        group.append(frame)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _drain(stages: _Stages, q: queue.Queue) -> Iterator[Frame]:
    """The items of `q` up to the end marker (stops early when another stage fails)."""
    while (item := stages.get(q)) is not _END:
        yield item


def run_stages(frames: Iterable[Frame], upscale: Callable[[Sequence[tuple]], list[tuple]],
               write: Callable[[Frame], None], batch: int = 1, total: int = 0, exact: bool = False,
               on_progress: Callable[[Progress], None] | None = None, depth: int | None = None,
               times: StageTimes | None = None) -> int:
    """Stream `frames` through `upscale` (in batches of up to `batch`) into `write`; returns frames written.

    `upscale` takes a list of plane tuples and returns the upscaled ones in the same order.
    `write` receives each upscaled Frame (same index and pts, new planes) from the encoder
    thread, in order. `on_progress` is called from the encoder thread after every frame.
    Queues hold up to `depth` items each (default 2 x batch). `times`, when given, gets the
    seconds each stage spent working (`StageTimes`); without it nothing is timed.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if times is not None:
        frames, upscale, write = _frames_timed(frames, upscale, write, times)
    depth = depth or 2 * batch
    stages = _Stages()
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    upscaled: queue.Queue = queue.Queue(maxsize=depth)
    written = 0
    started = time.perf_counter()

    def decode_loop():
        for frame in frames:
            stages.put(decoded, frame)
        stages.put(decoded, _END)

    def encode_loop():
        nonlocal written
        while (item := stages.get(upscaled)) is not _END:
            write(item)
            written += 1
            if on_progress is not None:
                on_progress(Progress(written, max(total, written), exact, time.perf_counter() - started))

    threads = [stages.thread("decode", decode_loop), stages.thread("encode", encode_loop)]
    try:
        try:
            for group in batches(_drain(stages, decoded), batch):
                outputs = upscale([f.planes for f in group])
                if len(outputs) != len(group):
                    raise RuntimeError(f"upscale returned {len(outputs)} frames for {len(group)}")
                for frame, planes in zip(group, outputs):
                    stages.put(upscaled, Frame(frame.index, frame.pts, tuple(planes), frame.repaired))
            stages.put(upscaled, _END)
        except _Stopped:
            pass
        # Wait for the encoder to drain; a failing stage sets `stop` and ends the wait early.
        for t in threads:
            while t.is_alive():
                t.join(timeout=_POLL)
    except BaseException as exc:
        stages.fail(exc)
        raise
    finally:
        stages.stop.set()
        for t in threads:
            # The encode thread shares the output container with the caller, which closes it
            # next: it must have stopped first (it checks `stop` between frames). The decode
            # thread owns nothing the caller touches, so it gets a bounded wait.
            t.join(timeout=None if t.name == "hatstream-encode" else 10)
            if t.is_alive():
                log.warning("the %s thread did not stop within 10 s", t.name)
    if stages.error is not None:
        raise stages.error
    return written
