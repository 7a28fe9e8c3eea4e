"""The Ray engine: the upscale stage spread over Ray actors that each hold the model.

    decode thread: decoder ──batches──▶ driver loop ──submit──▶ worker actors (one per GPU, or CPU actors)
                                          │   ▲                    device lane: upload → convert+model → download
                                          │   └──results, any order, at least once──┘
                                          ▼
                             ordered collector ──frames in order──▶ encode thread (the same writer as locally)

The threads, queues and shutdown are the local engine's own (`engine.run_stages`): the driver
loop runs in its decode thread, in place of the decoder, and pulls from the decoder itself.

- **Weights** go into the object store once (`ModelPayload`); an actor builds its model from
  them, so a worker node needs no model file, only hatstream itself.
- **Frames** travel as the decoder's compact uint8/uint16 planes, both ways. Colour conversion
  happens on the worker, next to the model, exactly as `stage.upscale_planes` does it locally.
- **Order and memory**: results are keyed by frame number and put back in order by
  `OrderedCollector`. The driver hands out a batch only while frames in flight plus frames
  waiting for an earlier one stay within the window; otherwise it stops pulling frames from the
  decoder, and decoding pauses.
- **Faults**: actors restart (`max_restarts`) and rebuild the model from the object store. The
  batches a dead or hung actor held are re-run on the least-loaded other actor (or its restarted
  self). Ray delivers at least once, so a frame that arrives twice is dropped by the collector.
  A batch that fails `max_attempts` times fails the run with the last error; a batch that takes
  longer than `batch_timeout` counts as failed and its actor is restarted, so nothing hangs. An
  error of the input itself (missing, damaged, unsupported) fails at once: no retry can fix it.
- **Segment mode** (`RaySegments`, for clusters of several machines): the executor of the one
  segment runner (`resume.run_resumable`). The same actors take whole keyframe-aligned segments,
  as the segment's video packets remuxed in memory by the driver (`segments.segment_payload`), run
  `segments.encode_segment` on their node and send back the encoded file: compressed bytes cross
  the network both ways, never frames, and no worker opens the input. The runner records them
  in its work folder (so farm runs resume) and joins them in order without re-encoding
  (`segments.assemble`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import av
import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from hatstream.errors import HatstreamError
from hatstream.inference import Upscaler, resolve_device
from hatstream.inference.precision import resolve_precision
from hatstream.media.colour import planes_to_tensors, tensors_to_planes
from hatstream.media.decode import Frame
from hatstream.media.probe import encoder_threads
from hatstream.models.registry import build_from_state_dict, load_builtin
from hatstream.models.spec import ModelInfo
from hatstream.pipeline.engine import Progress, StageTimes, batches, run_stages
from hatstream.pipeline.collector import OrderedCollector
from hatstream.pipeline.stage import ClipCounter, FrameFormat, Planes, upscale_plane_tensors
from hatstream.raylocal import keep_loopback, start_local_ray

log = logging.getLogger(__name__)

WORKER_NAME = "hatstream-worker-{}"   # actor names, in the driver's own (anonymous) namespace
HEARTBEAT = "heartbeat"               # the actors' concurrency group that answers progress probes
SEGMENTS_PREFIX = ".hatstream-segments-"
_POLL = 0.05                          # seconds the driver waits for a result before looking again


@dataclass(frozen=True)
class RayOptions:
    """How to reach Ray and how to run the workers.

    `address`: None starts an embedded single-machine Ray (no dashboard, node address 127.0.0.1);
    'auto', 'HOST:PORT' or 'ray://HOST:10001' joins a running cluster. `device`: 'cuda' (one
    GPU per actor) or 'cpu'; default CUDA when the cluster has GPUs. `workers`: actors to start;
    default one per GPU, or one on the CPU.
    """

    address: str | None = None
    workers: int | None = None
    device: str | None = None
    precision: str = "auto"
    backend: str | None = None    # the actors' inference backend (None: $HATSTREAM_BACKEND, else auto)
    in_flight: int = 2            # batches queued on each actor, so it never waits for the driver
    window: int | None = None     # frames in flight + waiting for order; default 2 x in_flight x workers x batch
    max_attempts: int = 3         # tries per batch before the run fails
    max_restarts: int = 3         # restarts per actor
    batch_timeout: float = 600.0  # seconds from submission after which a batch counts as failed
    stall_timeout: float = 600.0  # segment mode: seconds a segment may go without a new frame
    start_timeout: float = 600.0  # seconds for all actors to start (GPU nodes may be scaling up) and load


# ---- the model, shipped once ------------------------------------------------------------------

@dataclass(frozen=True)
class ModelPayload:
    """What an actor needs to rebuild the driver's model: its description and, for networks, the
    weights as one object in the object store (None for weightless built-ins such as bicubic)."""

    info: dict     # ModelInfo's fields; ModelInfo itself holds a mappingproxy, which does not pickle
    weights: Any   # ray.ObjectRef of the CPU fp32 state dict, or None

    @classmethod
    def ship(cls, upscaler: Upscaler) -> "ModelPayload":
        """Put `upscaler`'s weights into the object store (call on the driver, with Ray running)."""
        info = {f.name: getattr(upscaler.info, f.name) for f in fields(upscaler.info)}
        info["hyperparameters"] = dict(info["hyperparameters"])
        if not any(True for _ in upscaler.model.parameters()):
            return cls(info, None)
        # `.contiguous()`: the upscaler keeps conv weights channels-last; ship the plain layout.
        state = {k: v.detach().cpu().contiguous() for k, v in upscaler.model.state_dict().items()}
        return cls(info, ray.put(state))

    def build(self, device: torch.device, precision: str, backend: str | None = None) -> Upscaler:
        """Rebuild the model on `device` in `precision` (resolved for that device), run by `backend`."""
        info = ModelInfo(**self.info)
        if self.weights is None:
            model, _ = load_builtin(info.name, info.scale)
        else:
            model, _ = build_from_state_dict(ray.get(self.weights), info.source)
        return Upscaler(model, info, device, resolve_precision(precision, device, info), backend=backend)


# ---- on the worker ----------------------------------------------------------------------------

class DeviceLane:
    """Upload, compute and download one batch of planes; overlapped on CUDA, plain on the CPU.

    On CUDA the planes are stacked straight into pinned host memory and copied on an upload
    stream; the compute stream waits for that copy's event, and the result is copied back on a
    download stream into pinned memory. An actor with two batches in flight (two threads) thus
    moves one batch while the other computes. On the CPU each step is the plain tensor view or
    copy that `stage.upscale_planes` makes, in the calling thread. `busy` and `frames` sum the
    seconds spent in `run` and the frames it took (with two threads their times overlap).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.busy = 0.0
        self.frames = 0
        if self.cuda:
            self.upload_stream, self.compute_stream, self.download_stream = (
                torch.cuda.Stream(device) for _ in range(3))

    def run(self, frames: Sequence[Planes], compute: Callable[[list[torch.Tensor]], list[torch.Tensor]]
            ) -> list[Planes]:
        """Per-plane (B, h, w) tensors of `frames` through `compute`, back as per-frame planes."""
        start = time.perf_counter()
        try:
            return self._run(frames, compute)
        finally:
            self.busy += time.perf_counter() - start
            self.frames += len(frames)

    def _run(self, frames: Sequence[Planes], compute: Callable[[list[torch.Tensor]], list[torch.Tensor]]
             ) -> list[Planes]:
        if not self.cuda:
            return tensors_to_planes(compute(planes_to_tensors(list(frames))))
        tensors, uploaded = self._upload(frames)
        planes, computed = self._compute(tensors, uploaded, compute)
        return self._download(planes, computed)

    def _event(self, stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def _upload(self, frames: Sequence[Planes]):
        host = []
        for i in range(len(frames[0])):
            arrays = [f[i] for f in frames]
            pinned = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.from_numpy(arrays[0]).dtype,
                                 pin_memory=True)
            np.stack(arrays, out=pinned.numpy())
            host.append(pinned)
        with torch.cuda.stream(self.upload_stream):
            tensors = [h.to(self.device, non_blocking=True) for h in host]
        return tensors, self._event(self.upload_stream)

    def _compute(self, tensors, uploaded, compute):
        self.compute_stream.wait_event(uploaded)
        with torch.cuda.stream(self.compute_stream):
            for t in tensors:
                t.record_stream(self.compute_stream)   # allocated on the upload stream
            planes = compute(tensors)
        return planes, self._event(self.compute_stream)

    def _download(self, planes, computed) -> list[Planes]:
        self.download_stream.wait_event(computed)
        host = []
        with torch.cuda.stream(self.download_stream):
            for p in planes:
                p.record_stream(self.download_stream)
                h = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
                h.copy_(p, non_blocking=True)
                host.append(h)
        self._event(self.download_stream).synchronize()
        # Copies: the pinned blocks go back to torch's cache when `host` is dropped.
        return [tuple(h[i].numpy().copy() for h in host) for i in range(host[0].shape[0])]


def _is_cuda_fault(exc: BaseException) -> bool:
    """A CUDA error that leaves the context unusable (not an out-of-memory, which tiling handles)."""
    accelerator = getattr(torch, "AcceleratorError", ())
    return isinstance(exc, accelerator) or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


class UpscaleWorker:
    """A Ray actor's body: holds the model on its device and upscales batches of planes."""

    def __init__(self, payload: ModelPayload, device: str, precision: str, src: FrameFormat, dst: FrameFormat,
                 backend: str | None = None):
        self.device = resolve_device(device)
        self.upscaler = payload.build(self.device, precision, backend)
        self.lane = DeviceLane(self.device)
        self.src, self.dst = src, dst
        self._progress = (-1, 0)  # (segment index, frames written), for `heartbeat`
        self._segment_times = StageTimes()  # decode and encode of the segments run here
        self._started = time.perf_counter()

    def describe(self) -> dict:
        """Where this actor runs: pid, node, device, compute dtype (also a readiness probe)."""
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device),
                "dtype": str(self.upscaler.dtype).removeprefix("torch.")}

    @ray.method(concurrency_group=HEARTBEAT)
    def stage_times(self) -> dict:
        """Seconds this actor spent in each stage since it started: `model` (the device lane, both
        modes), `decode` and `encode` (segments only), `alive`, and the frames upscaled."""
        segments = self._segment_times
        return {"model": self.lane.busy, "decode": segments.decode, "encode": segments.encode,
                "frames": self.lane.frames, "alive": time.perf_counter() - self._started}

    def upscale(self, frames: list[Planes]) -> tuple[list[Planes], int]:
        """Upscale a batch of same-sized frames' planes: one planes tuple per frame, in order, and the
        source pixels the output's code range clipped (`stage.ClipCounter`), for the driver to sum.

        The count is read after the lane has waited for the batch's download, so it costs no extra wait."""
        counter = ClipCounter()
        planes = self._upscale(frames, counter)
        return planes, counter.total

    def _upscale(self, frames: list[Planes], clipped: ClipCounter) -> list[Planes]:
        try:
            return self.lane.run(frames, lambda tensors: self._convert_and_upscale(tensors, clipped))
        except BaseException as exc:
            if self.device.type == "cuda" and _is_cuda_fault(exc):
                # A retry would reach this same broken context; exit so Ray starts a fresh process.
                log.error("CUDA fault, restarting this worker: %s", exc)
                os._exit(1)
            raise

    def encode_segment(self, recipe, segment, payload) -> tuple[Any, bytes, int]:
        """Decode, upscale and encode one segment of `recipe`'s input from its `payload` (the segment's video
        packets, `segments.segment_payload`); the encoded file comes back as bytes, with the pixels the
        output's range clipped in it. The input path is never opened here: the node need not see it."""
        from hatstream.pipeline.segments import encode_segment, segment_path

        self._progress = (segment.index, 0)
        # The driver's machine is not this one: the encoder's threads follow this node's cores,
        # shared with the other GPU actors it holds.
        threads = encoder_threads(self.device.type == "cpu", streams=self._node_gpus())
        recipe = replace(recipe, plan=replace(recipe.plan, encoding=replace(recipe.plan.encoding, threads=threads)))

        def progress(p: Progress) -> None:
            self._progress = (segment.index, p.frames)  # one tuple: `heartbeat` reads it from its thread

        clipped = ClipCounter()
        try:
            with tempfile.TemporaryDirectory(prefix="hatstream-segment-") as folder:
                encoded = encode_segment(recipe, segment, lambda frames: self._upscale(frames, clipped),
                                         segment_path(Path(folder), segment.index), progress, source=payload,
                                         times=self._segment_times)
                return encoded, encoded.path.read_bytes(), clipped.total
        finally:
            self._progress = (-1, 0)  # no segment in hand: `heartbeat` says so until the next one starts

    @staticmethod
    def _node_gpus() -> int:
        node = ray.get_runtime_context().get_node_id()
        return next((int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["NodeID"] == node), 1) or 1

    @ray.method(concurrency_group=HEARTBEAT)
    def heartbeat(self) -> tuple[int, int]:
        """(segment index, frames written so far) of the segment being encoded, (-1, 0) between
        segments; answered from its own thread while `encode_segment` runs, so the driver can tell slow
        work from a hung actor."""
        return self._progress

    def _convert_and_upscale(self, tensors: list[torch.Tensor], clipped: ClipCounter) -> list[torch.Tensor]:
        # The lane has already put the planes on the device.
        return upscale_plane_tensors(tensors, self.upscaler, self.src, self.dst, self.device, clipped)


# ---- on the driver ----------------------------------------------------------------------------

@dataclass
class _Task:
    """One unit of work for an actor: a batch of frames, or a whole segment, and its tries so far."""

    key: int              # the sequence number of a batch's first frame, or a segment's index
    args: tuple           # the arguments of the actor method
    size: int             # frames it holds, counted against the window
    label: str            # for messages: "frames 8-11", "segment 3"
    context: Any = None   # what the driver needs with the result (a batch's Frames)
    attempts: int = 0
    worker: int = -1
    submitted: float = 0.0
    progressed: float = 0.0   # when it was submitted, or last seen making progress (segments)
    frames: int = 0           # frames its actor reported written so far (segments)
    probe: Any = None         # a heartbeat request in flight
    probed: float = 0.0


def _batch_task(first: int, frames: list[Frame]) -> _Task:
    return _Task(first, ([f.planes for f in frames],), len(frames), f"frames {first}-{first + len(frames) - 1}",
                frames)


# Errors of the input or the setup: another try reads the same file with the same code and fails
# the same way. Anything else (an actor or node lost, out of memory, a timeout) may pass on retry.
_DETERMINISTIC = (HatstreamError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                  av.error.InvalidDataError)


def _deterministic(exc: BaseException) -> BaseException | None:
    """The worker's own exception when `exc` is one that no retry can fix, else None."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(exc, RayTaskError) and isinstance(cause, _DETERMINISTIC) else None


def _reason(exc: BaseException) -> str:
    """One line for an error from Ray: the worker's own exception where there is one."""
    cause = getattr(exc, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


class WorkerPool:
    """Hands tasks to actors, least-loaded first, and gets their results back, re-running failures.

    Each task calls the actors' `method` with its `args`. Every task is tried at most
    `max_attempts` times; a retry prefers another actor than the one that failed, and actors that
    keep failing (dead for good) sink to the end of the choice. An error of the input itself
    (`_DETERMINISTIC`) fails at once. A task counts as failed after `batch_timeout` seconds; with
    `heartbeat`, only after that long without progress (the actors' `heartbeat` method).
    """

    def __init__(self, actors: Sequence, in_flight: int = 2, max_attempts: int = 3, batch_timeout: float = 600.0,
                 method: str = "upscale", heartbeat: bool = False):
        self.actors = list(actors)
        self.method = method
        self.heartbeat = heartbeat
        self.probe_every = min(5.0, batch_timeout / 4)
        self.capacity = in_flight * len(self.actors)
        self.max_attempts = max_attempts
        self.batch_timeout = batch_timeout
        self.load = [0] * len(self.actors)
        self.failures = [0] * len(self.actors)
        self.retries = 0
        self.transfer = 0.0   # seconds the driver spent handing arguments over and taking results back
        self._tasks: dict[Any, _Task] = {}

    @property
    def busy(self) -> bool:
        """True while any batch is out."""
        return bool(self._tasks)

    @property
    def frames_in_flight(self) -> int:
        """Frames handed out and not yet returned."""
        return sum(task.size for task in self._tasks.values())

    def has_room(self) -> bool:
        """True when another batch can be handed out without queueing more than `in_flight` per actor."""
        return len(self._tasks) < self.capacity

    def submit(self, task: _Task, avoid: int = -1) -> None:
        """Hand `task` to the least-loaded actor, away from `avoid` and from actors that keep failing."""
        i = min(range(len(self.actors)), key=lambda k: (k == avoid, self.failures[k], self.load[k]))
        task.attempts += 1
        task.worker = i
        task.submitted = task.progressed = task.probed = time.monotonic()
        task.frames, task.probe = 0, None
        start = time.perf_counter()   # large arguments are serialised and put in the object store here
        ref = getattr(self.actors[i], self.method).remote(*task.args)
        self.transfer += time.perf_counter() - start
        self._tasks[ref] = task
        self.load[i] += 1

    def poll(self, timeout: float) -> list[tuple[_Task, Any]]:
        """Finished tasks with their results, waiting up to `timeout` s for the first one."""
        if not self._tasks:
            return []
        ready, _ = ray.wait(list(self._tasks), num_returns=1, timeout=timeout)
        if ready:  # take whatever else is already done in the same round
            ready, _ = ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=0)
        done = []
        for ref in ready:
            task = self._take(ref)
            start = time.perf_counter()
            try:
                done.append((task, ray.get(ref)))
            except RayError as exc:
                self._retry(task, exc)
            finally:
                self.transfer += time.perf_counter() - start
        self._expire()
        return done

    def _take(self, ref) -> _Task:
        task = self._tasks.pop(ref)
        self.load[task.worker] -= 1
        return task

    def _retry(self, task: _Task, exc: BaseException) -> None:
        self.failures[task.worker] += 1
        if (cause := _deterministic(exc)) is not None:
            text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise HatstreamError(f"{task.label}: {text}") from None
        if task.attempts >= self.max_attempts:
            raise HatstreamError(f"{task.label} failed {task.attempts} times on the Ray workers; "
                                 f"last error: {_reason(exc)}")
        log.warning("%s failed on worker %d (%s); running it again", task.label, task.worker, _reason(exc))
        self.retries += 1
        self.submit(task, avoid=task.worker)

    def _beat(self, task: _Task, now: float) -> None:
        """Ask the task's actor how far it has got (at most every `probe_every` s), without waiting."""
        if task.probe is None:
            if now - task.probed >= self.probe_every:
                task.probe, task.probed = self.actors[task.worker].heartbeat.remote(), now
            return
        ready, _ = ray.wait([task.probe], timeout=0)
        if not ready:
            return
        try:
            key, frames = ray.get(task.probe)
        except RayError:  # the actor is gone: the task's own result says so
            key, frames = None, 0
        task.probe = None
        if key == task.key and frames > task.frames:
            task.frames, task.progressed = frames, now

    def _expire(self) -> None:
        now = time.monotonic()
        for ref, task in list(self._tasks.items()):
            if self.heartbeat:
                self._beat(task, now)
            if now - task.progressed > self.batch_timeout:
                # A hung actor would hold its batches forever: restart it (its other batches then
                # fail and are re-run too) and count this one as a failed try.
                self._take(ref)
                ray.kill(self.actors[task.worker], no_restart=False)
                what = "without progress" if self.heartbeat else "without a result"
                self._retry(task, TimeoutError(f"{self.batch_timeout:g} s {what}"))


def _ordered_results(frames: Iterable[Frame], pool: WorkerPool, batch: int, window: int,
                     clipped: ClipCounter | None = None) -> Iterator[Frame]:
    """The driver loop: hand out batches while the window has room; yield upscaled frames in order.

    Frames are pulled from `frames` (the decoder) only while frames in flight plus frames waiting
    for an earlier one stay under `window`, so decoding pauses when the workers fall behind. Each
    batch's clipped-pixel count goes into `clipped` once: a batch that comes back twice is not
    counted again (its frames are duplicates).
    """
    collector: OrderedCollector[Frame] = OrderedCollector()
    groups = batches(frames, batch)
    decoded_all = False
    seq = 0                       # sequence number of the next frame handed out
    while True:
        while not decoded_all and pool.has_room() and pool.frames_in_flight + len(collector) < window:
            group = next(groups, None)
            if group is None:
                decoded_all = True
            else:
                pool.submit(_batch_task(seq, group))
                seq += len(group)
        for task, (outputs, clip_count) in pool.poll(timeout=_POLL):
            if len(outputs) != task.size:
                raise RuntimeError(f"{task.label}: {len(outputs)} frames came back from the Ray worker")
            new = [collector.add(task.key + k, Frame(frame.index, frame.pts, tuple(planes), frame.repaired))
                   for k, (frame, planes) in enumerate(zip(task.context, outputs))]
            if clipped is not None and clip_count and any(new):
                clipped.add(torch.tensor(clip_count))
        yield from collector.ready()
        if decoded_all and not pool.busy:
            if len(collector):  # cannot happen unless a batch was lost: never write a gap
                raise RuntimeError(f"frame {collector.next} never came back from the Ray workers")
            if collector.duplicates or pool.retries:
                log.info("Ray engine: %d batch(es) re-run, %d duplicate frame(s) dropped",
                         pool.retries, collector.duplicates)
            return


def _stream(frames: Iterable[Frame], pool: WorkerPool, write: Callable[[Frame], None], batch: int, window: int,
            total: int, exact: bool, on_progress: Callable[[Progress], None] | None, temporal=None,
            clipped: ClipCounter | None = None) -> int:
    """The local engine's threads and shutdown around the driver loop, which takes the decoder's place.

    `run_stages` runs `_ordered_results` in its decode thread and `write` in its encode thread; its
    model step has nothing left to do. An error or Ctrl-C anywhere stops the run as it does locally;
    the driver loop sees the stop when it next hands over a frame (within one batch's time).
    A `temporal` filter runs in that step, on the driver: batches go to whichever actor is
    free, so only the driver sees every frame in order.
    """
    step = (lambda planes: list(planes)) if temporal is None else (lambda planes: [temporal(p) for p in planes])
    return run_stages(_ordered_results(frames, pool, batch, window, clipped), step, write,
                      batch=1, total=total, exact=exact, on_progress=on_progress)


def _connect(options: RayOptions) -> bool:
    """Join the cluster at `options.address`, or start an embedded Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    common = {"configure_logging": False, "log_to_driver": False}
    if options.address is not None:
        host = options.address.removeprefix("ray://").rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):
            # A cluster on loopback (tests, a one-machine farm): its nodes know themselves as
            # 127.0.0.1, and a driver that took the interface address would find no node of its own
            # (Ray swaps even an explicit 127.0.0.1 for it unless its cluster switch is off).
            keep_loopback()
            common["_node_ip_address"] = "127.0.0.1"
        ray.init(address=options.address, **common)
        return True
    # Logical CPUs are scheduling tokens: make room for every actor even on a small machine.
    start_local_ray(max(os.cpu_count() or 1, (options.workers or 1) + 1), **common)
    return True


def _plan(options: RayOptions) -> tuple[str, int]:
    """The device and number of actors: as asked, else one actor per GPU of the cluster, else one CPU actor.

    With `--address` and no `--device`, CUDA only if the cluster has a GPU node up now.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = options.device or ("cuda" if gpus else "cpu")
    if device not in ("cpu", "cuda"):
        raise HatstreamError(f"--device {device}: the Ray engine runs its workers on 'cuda' or 'cpu'")
    count = options.workers or (gpus if device == "cuda" else 1)
    # An autoscaling cluster may have no GPU node up yet: `--workers N` waits for them (start_timeout).
    can_grow = options.address is not None and options.workers is not None
    if device == "cuda" and gpus < max(count, 1) and not can_grow:
        raise HatstreamError(f"{count or 1} GPU worker(s) asked for, but the Ray cluster has {gpus} GPU(s)")
    return device, count


def _start_workers(payload: ModelPayload, options: RayOptions, device: str, count: int,
                   src: FrameFormat, dst: FrameFormat) -> list:
    """Start `count` actors and wait until each has built its model; clear errors, never a hang."""
    cuda = device == "cuda"
    remote = ray.remote(concurrency_groups={HEARTBEAT: 1})(UpscaleWorker)
    actors = [remote.options(name=WORKER_NAME.format(i), num_cpus=1, num_gpus=1 if cuda else 0,
                             max_restarts=options.max_restarts, max_task_retries=0,
                             # Across nodes: more decode/encode CPUs and network, less lost with a node.
                             scheduling_strategy="SPREAD",
                             # Two threads on a GPU so one batch moves while the other computes.
                             max_concurrency=2 if cuda else 1)
              .remote(payload, device, options.precision, src, dst, options.backend) for i in range(count)]
    try:
        described = ray.get([a.describe.remote() for a in actors], timeout=options.start_timeout)
    except GetTimeoutError:
        _stop_workers(actors)
        raise HatstreamError(f"the Ray workers did not start within {options.start_timeout:g} s; "
                             f"the cluster has {ray.cluster_resources()}") from None
    except RayError as exc:
        _stop_workers(actors)
        raise HatstreamError(f"a Ray worker could not load the model: {_reason(exc)}") from None
    for i, d in enumerate(described):
        log.info("Ray worker %d: pid %d on %s, %s %s", i, d["pid"], d["node"], d["device"], d["dtype"])
    return actors


def _stop_workers(actors: Sequence) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except RayError:  # already gone
            pass


@contextlib.contextmanager
def _workers(options: RayOptions, model: Upscaler, src: FrameFormat, dst: FrameFormat) -> Iterator[list]:
    """Ray connected (or started), the model shipped and the actors ready; all undone on leaving."""
    started_ray = _connect(options)
    try:
        device, count = _plan(options)
        actors = _start_workers(ModelPayload.ship(model), options, device, count, src, dst)
        try:
            yield actors
        finally:
            _stop_workers(actors)
    finally:
        if started_ray:
            ray.shutdown()


def _stage_times(actors: Sequence, pool: WorkerPool, timeout: float = 10.0) -> dict:
    """Where the time went: each actor's `UpscaleWorker.stage_times` (an actor that does not answer
    within `timeout` s is left out) and the driver's `transfer` seconds (`WorkerPool.transfer`)."""
    refs = [actor.stage_times.remote() for actor in actors]
    answers = []
    for ref in refs:
        try:
            answers.append(ray.get(ref, timeout=timeout))
        except RayError:  # a timeout is a RayError too
            continue
    return {"actors": answers, "transfer": pool.transfer}


def run_ray(frames: Iterable[Frame], model: Upscaler, src: FrameFormat, dst: FrameFormat,
            write: Callable[[Frame], None], options: RayOptions = RayOptions(), batch: int = 1,
            total: int = 0, exact: bool = False, on_progress: Callable[[Progress], None] | None = None,
            temporal=None, clipped: ClipCounter | None = None, stats: dict | None = None) -> int:
    """Stream `frames` through Ray actors running `model` into `write`, in order; returns frames written.

    The same contract as `engine.run_stages` with `stage.upscale_planes`: `write` gets every
    frame once, in order, with its index and pts and upscaled planes for `dst`, from one thread.
    `model` is the driver's copy (on the CPU); each actor rebuilds it on its own device. Ray is
    started (and shut down afterwards) here unless the caller has already initialised it. The pixels
    the output's range clipped (counted on the actors) are added to `clipped`. `stats`, when given,
    is filled at the end with where the time went (`_stage_times`).
    """
    with _workers(options, model, src, dst) as actors:
        pool = WorkerPool(actors, options.in_flight, options.max_attempts, options.batch_timeout)
        window = max(options.window or 2 * pool.capacity * batch, batch)
        written = _stream(frames, pool, write, batch, window, total, exact, on_progress, temporal, clipped)
        if stats is not None:
            stats.update(_stage_times(actors, pool))
        return written


def _remove_stale_segment_folders(folder: Path) -> None:
    """Remove the segment folders that killed Ray runs of earlier versions (SIGKILL, power cut) left in
    `folder`; live runs hold the lock inside theirs. Segment runs now use the resumable work folder."""
    for stale in folder.glob(SEGMENTS_PREFIX + "*"):
        # A folder made in the last minute may belong to a run that does not hold its lock yet.
        if stale.is_symlink() or not stale.is_dir() or not _older_than(stale, 60.0):
            continue
        try:
            with open(stale / "lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(stale)
            log.info("removed %s, left by a run that was killed", stale)
        except (BlockingIOError, FileNotFoundError):
            continue


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


class RaySegments:
    """The Ray executor of the segment runner (`resume.run_resumable`): whole segments on the actors.

    The driver stream-copies each segment's video packets into a small NUT file in memory
    (`segments.segment_payload`) and puts it into the object store; an actor decodes,
    upscales and encodes it on its own node and sends back the encoded file. Compressed bytes
    cross the network both ways, never frames, and no node but the driver's opens the input,
    so no shared storage is needed. The runner checks what comes back against its SHA-256 and
    records it in the work folder like any other segment, so a farm run resumes as a local one
    does.

    Memory stays bounded whatever the video's length: a segment is remuxed only when an actor
    is free for it, so at most one payload per actor is in flight, and it is freed once its
    result is in. A lost node costs at most the segment its actor held, which is re-run
    elsewhere from the same payload; one that comes back twice is kept once (by the runner). A
    segment may take an hour on a CPU, so it fails for time only after `options.stall_timeout`
    s without a new frame (actors report progress), and one that fails on its input (damaged)
    fails the run at once.

    `stats`, when given, is filled once all segments are back with where the time went
    (`_stage_times`) and the driver's own `remux` and `put` seconds.
    """

    def __init__(self, model: Upscaler, options: RayOptions = RayOptions(), stats: dict | None = None):
        self.model = model
        self.options = options
        self.stats = stats
        self._clipped: dict[int, int] = {}  # segment index -> pixels its actor counted as clipped

    @property
    def clipped(self) -> int:
        """Pixels the output's range clipped in the segments computed by this executor (each counted once)."""
        return sum(self._clipped.values())

    def encode(self, recipe, segments: Sequence, folder: Path, on_progress: Callable[[int], None]) -> Iterator:
        """Run `segments` on the actors; yield each `SegmentResult` as it comes back (any order)."""
        from hatstream.pipeline.segments import SegmentResult, segment_payload

        _remove_stale_segment_folders(Path(folder).parent)
        src = FrameFormat(recipe.info.layout, recipe.info.colour)
        dst = FrameFormat(recipe.plan.encoding.layout, recipe.plan.encoding.colour)
        with _workers(self.options, self.model, src, dst) as actors:
            pool = WorkerPool(actors, 1, self.options.max_attempts, self.options.stall_timeout,
                              method="encode_segment", heartbeat=True)
            todo = list(segments)
            remux = put = 0.0
            while todo or pool.busy:
                while todo and pool.has_room():
                    segment = todo.pop(0)
                    start = time.perf_counter()
                    packets = segment_payload(recipe.info, segment)
                    remuxed = time.perf_counter()
                    # One object per segment, shared by its retries; dropped with the task.
                    payload = ray.put(packets)
                    remux, put = remux + remuxed - start, put + time.perf_counter() - remuxed
                    pool.submit(_Task(segment.index, (recipe, segment, payload), 0, f"segment {segment.index}"))
                    log.debug("segment %d sent to the Ray workers", segment.index)
                for _, (encoded, data, clipped) in pool.poll(timeout=_POLL):
                    # A segment that comes back twice is kept once by the runner: count it once too.
                    self._clipped.setdefault(encoded.index, clipped)
                    yield SegmentResult(encoded, data)
            if self.stats is not None:
                self.stats.update(_stage_times(actors, pool), remux=remux, put=put)
