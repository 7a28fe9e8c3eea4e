"""`run_file`: upscale one video file end to end with the local engine.

The order matters for safety: everything that can be refused (the input, the output path, the
model, every stream against the output container) is checked before the output's temporary
file is created, and the temporary file is renamed onto the output only after the trailer is
written. Any exception, Ctrl-C included, removes it (see `hatstream.atomic`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hatstream.atomic import atomic_output, check_output_path
from hatstream.errors import HatstreamError
from hatstream.media.decode import DecodeStats, Frame, read_frames
from hatstream.media.deinterlace import plan_deinterlace
from hatstream.media.encode import EncodeSettings, container_for
from hatstream.media.probe import encoder_threads, probe
from hatstream.media.writer import VideoWriter, default_output_note, default_output_path, plan_output
from hatstream.pipeline.engine import Progress, run_stages
from hatstream.pipeline.segments import DEFAULT_SEGMENT_SECONDS, SegmentRecipe, plan_segments, upscaler_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything `hatstream run` was asked to do."""

    input: Path
    output: Path | None = None
    model: str | None = None
    scale: int | None = None
    precision: str = "auto"
    backend: str | None = None     # torch | onnxruntime | openvino | auto; None: $HATSTREAM_BACKEND, else auto
    device: str | None = None
    batch: int = 1
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    audio_codec: str = "copy"
    subtitles: str = "copy"
    on_error: str = "fail"
    overwrite: bool = False
    engine: str = "auto"           # local | ray | auto (ray only with an address or more than one GPU)
    address: str | None = None     # Ray cluster to join; None starts an embedded one
    workers: int | None = None     # Ray actors; default one per GPU
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS  # resumable segments for longer inputs; 0 = off
    segment_workers: int | None = None  # segments computed at once in this process (local engine); None: auto
    resume: bool = True            # pick up an interrupted run's finished segments
    compile: bool = False          # torch.compile the model (local engine; static shapes per video)
    temporal: bool = False         # steady the output along the motion (`pipeline.temporal`)
    deinterlace: str = "auto"      # auto | on | off (see hatstream.media.deinterlace)


@dataclass(frozen=True)
class RunResult:
    """What a finished run did, for the summary line."""

    output: Path
    frames: int
    seconds: float
    repaired: int
    dropped: int
    model: str
    encoding: str
    problems: tuple[str, ...] = ()
    resumed: int = 0               # frames taken from segments an interrupted run had finished
    note: str | None = None        # why the run started over instead of resuming
    deinterlaced: str | None = None  # what deinterlacing did, for the summary line
    container_note: str | None = None  # why the output is in another container than the input
    clipped: int | None = None     # source pixels the output's code range could not hold; None: not counted

    @property
    def fps(self) -> float:
        """Frames upscaled per second over the whole run (resumed frames were done before it)."""
        return (self.frames - self.resumed) / self.seconds if self.seconds > 0 else 0.0


# One libx264 encoder's frame threads stop paying off somewhere past this many (each thread adds a
# frame in flight whose motion search waits on the frame before): more cores than this go to a
# second encoder, on the next segment. An assumption from x264's frame threading, not measured
# here (this machine has 2 cores; `hatstream bench` measures the scaling on the machine at hand).
ENCODER_THREADS_EFFICIENT = 16
# Output frames one segment worker holds at once: the engine's queues, x264's lookahead (40 at its
# default preset) and B-frames, one per frame thread (added below).
SEGMENT_WORKER_FRAMES = 48


def auto_segment_workers(model_on_cpu: bool, cores: int, memory: int | None, frame_bytes: int,
                         batch: int = 1) -> int:
    """Segments to compute at once for `--segment-workers auto`: 1 unless the model runs elsewhere
    and the cores left to the encoders (`probe.encoder_threads`) exceed what one encoder uses well.

    A CPU model keeps the cores (two segments at once on 2 cores were slower than one, see
    benchmarks/RESULTS.md). With the model on an accelerator the encoders get all cores but two;
    every `ENCODER_THREADS_EFFICIENT` of them get their own encoder on the next segment. Each
    segment worker holds about `SEGMENT_WORKER_FRAMES` + its threads + 3 x `batch` output frames of
    `frame_bytes`; together they take at most half of `memory` (available bytes; None: unknown, 1).
    """
    if model_on_cpu or memory is None:
        return 1
    # The cores `encoder_threads` gives the encoders (all but two), before its cap on one encoder.
    wanted = max(1, math.ceil((cores - 2) / ENCODER_THREADS_EFFICIENT))
    for n in range(wanted, 1, -1):
        threads = encoder_threads(False, cores, streams=n)
        if n * (SEGMENT_WORKER_FRAMES + threads + 3 * batch) * frame_bytes <= memory // 2:
            return n
    return 1


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _output_frame_bytes(plan) -> int:
    layout = plan.encoding.layout
    sx, sy = layout.chroma_shift
    samples = plan.width * plan.height * (1 + 2 / (1 << (sx + sy)) + (1 if layout.has_alpha else 0))
    return int(samples * layout.dtype.itemsize)


def _ray_options(config: RunConfig):
    from hatstream.pipeline.ray_engine import RayOptions
    return RayOptions(address=config.address, workers=config.workers, device=config.device,
                      precision=config.precision, backend=config.backend)


def run_file(config: RunConfig, on_progress: Callable[[Progress], None] | None = None,
             on_start: Callable[[int, bool], None] | None = None) -> RunResult:
    """Upscale `config.input` into `config.output` (default `<stem>.x<scale><ext>` beside it).

    `on_start(total, exact)` is called once the frame count (or its estimate) is known and the
    work begins; `on_progress` after every frame written. Raises HatstreamError for anything
    the user can fix; nothing is left at the output path unless the run completes.
    """
    if config.batch < 1:
        raise HatstreamError("--batch must be at least 1")
    started = time.perf_counter()
    info = probe(config.input)
    deint = plan_deinterlace(info, config.deinterlace)
    # torch takes seconds to import; bad input has been refused by now without it.
    from hatstream.inference import load_model
    from hatstream.pipeline.stage import ClipCounter, FrameFormat, temporal_filter, upscale_planes

    if config.output is not None:
        container_for(config.output)  # an unusable extension is refused before the model loads
    engine = config.engine
    if engine == "auto":
        import torch
        # Several GPUs mean one actor each, unless --device pins the run to one device (or the CPU).
        many_gpus = torch.cuda.device_count() > 1 and config.device in (None, "auto", "cuda")
        engine = "ray" if config.address or many_gpus else "local"
    on_ray = engine == "ray"
    # On Ray the driver's copy only plans the output and ships its weights; actors build their own.
    model = load_model(config.model, device="cpu" if on_ray else config.device,
                       precision="fp32" if on_ray else config.precision, scale=config.scale,
                       compile=config.compile and not on_ray, backend="torch" if on_ray else config.backend)
    output = Path(config.output) if config.output is not None else default_output_path(config.input, model.scale)
    container_note = default_output_note(info, output) if config.output is None else None
    if container_note:
        log.info("%s", container_note)
    check_output_path(output, [Path(config.input)], config.overwrite)
    plan = plan_output(info, output, model.scale, config.encode, config.audio_codec, config.subtitles)
    # The encoder gets the cores the model leaves free: here all but a few when the model runs
    # elsewhere (a GPU, or Ray actors on other machines; segment actors size their own).
    import torch
    model_on_cpu = (model.device.type == "cpu" if not on_ray else
                    config.address is None and (config.device == "cpu" or not torch.cuda.is_available()))
    plan = dataclasses.replace(plan, encoding=dataclasses.replace(plan.encoding,
                                                                  threads=encoder_threads(model_on_cpu)))
    log.info("%s -> %s: %s, model %s", info.path.name, output, plan.describe(), model.info.name)
    # Inputs longer than one segment run in keyframe-aligned segments, resumable, computed in this
    # process or, on the nodes of a Ray cluster (--address), by its actors. Concealing damage needs
    # the frame before, which may lie in another segment.
    segmented = (not on_ray or config.address is not None) and config.on_error == "fail"
    segments = plan_segments(info, config.segment_seconds) if segmented else ()
    if len(segments) > 1:
        from hatstream.pipeline.resume import InProcess, Parallel, run_resumable, run_settings

        recipe = SegmentRecipe(info, plan, config.batch, config.temporal, config.deinterlace)
        if on_ray:
            from hatstream.pipeline.ray_engine import RaySegments
            executor = RaySegments(model, _ray_options(config))
            # The driver's model is a CPU fp32 copy; the precision asked for is what the actors use.
            settings = run_settings(config.model, model, recipe, config.segment_seconds, ray_precision=config.precision)
        else:
            clipped = ClipCounter()
            # Several segments at once, each with its own encoder, where one encoder cannot keep up.
            workers = config.segment_workers
            if workers is None:
                workers = auto_segment_workers(model_on_cpu, os.cpu_count() or 1, available_memory(),
                                               _output_frame_bytes(plan), config.batch)
            workers = min(workers, len(segments))
            if workers > 1:  # the encoders share the cores the model leaves free
                threads = encoder_threads(model_on_cpu, streams=workers)
                recipe = dataclasses.replace(recipe, plan=dataclasses.replace(
                    plan, encoding=dataclasses.replace(plan.encoding, threads=threads)))
            log.info("%d segments, %d computed at once%s", len(segments), workers,
                     " (--segment-workers auto)" if config.segment_workers is None else "")
            upscale = upscaler_for(recipe, model, clipped)
            executor = Parallel(upscale, workers) if workers > 1 else InProcess(upscale)
            settings = run_settings(config.model, model, recipe, config.segment_seconds)
        if on_start is not None:
            on_start(info.frames, info.frames_exact)
        done = run_resumable(recipe, segments, executor, output, settings, config.resume, info.frames,
                             info.frames_exact, on_progress, overwrite=config.overwrite)
        # The segments computed now (resumed ones were counted by the run that made them).
        return RunResult(output=output, frames=done.frames, seconds=time.perf_counter() - started, repaired=0,
                         dropped=0, model=model.info.name, resumed=done.resumed, note=done.note,
                         encoding=f"{plan.encoding.codec} {plan.encoding.layout.pix_fmt}",
                         deinterlaced=deint.describe() if deint else None, container_note=container_note,
                         clipped=executor.clipped if on_ray else clipped.total)

    src = FrameFormat(info.layout, info.colour)
    dst = FrameFormat(plan.encoding.layout, plan.encoding.colour)
    temporal = temporal_filter(dst, model.scale) if config.temporal else None
    stats = DecodeStats()
    clipped = ClipCounter()
    with atomic_output(output, config.overwrite) as tmp:
        writer = VideoWriter(tmp, info, plan)
        try:
            if on_start is not None:
                on_start(info.frames, info.frames_exact)

            def write(frame: Frame) -> None:
                writer.write(frame.planes, frame.pts)

            decoded = read_frames(info, config.on_error, stats, config.deinterlace)
            common = dict(batch=config.batch, total=info.frames, exact=info.frames_exact, on_progress=on_progress)
            if on_ray:
                from hatstream.pipeline.ray_engine import run_ray
                frames = run_ray(decoded, model, src, dst, write, _ray_options(config), temporal=temporal,
                                 clipped=clipped, **common)
            else:
                frames = run_stages(decoded, lambda batch: upscale_planes(batch, model, src, dst, temporal=temporal,
                                                                        clipped=clipped),
                                    write, **common)
            if frames != stats.frames:  # every decoded frame must have been written; never drop one
                raise RuntimeError(f"{stats.frames} frames decoded but {frames} written")
            writer.finish()
        finally:
            writer.close()
    return RunResult(output=output, frames=frames, seconds=time.perf_counter() - started,
                     repaired=stats.repaired, dropped=stats.dropped, model=model.info.name,
                     encoding=f"{plan.encoding.codec} {plan.encoding.layout.pix_fmt}",
                     problems=tuple(stats.problems), deinterlaced=deint.describe() if deint else None,
                     container_note=container_note, clipped=clipped.total)
