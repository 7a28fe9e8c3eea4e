"""Resumable runs: segments in a work folder beside the output, recorded in a durable manifest.

    <output folder>/.<output name>.hatstream-work/
        manifest.json      fingerprints, the segment plan, and the finished segments
        seg-00000.nut      one file per finished segment (seg-00001.nut.part while being written)
        lock               held (flock) by the run using the folder

Durability: a segment file is fsynced and renamed into place before the manifest records it,
and the manifest is replaced atomically (written beside, fsynced, renamed, folder fsynced). A
crash at any moment (kill -9, power loss) therefore leaves a manifest that lists only complete
segments; whatever it does not list is redone. On resume each listed segment is checked again
(size, SHA-256, packet count), so a file damaged since is redone too.

The manifest is trusted only for the same input and the same settings: the input's size,
mtime and a hash of its head and tail, and everything that changes the encoded video (model
and weights, precision, encoder and its options, pixel format, size, segment length). Choices
about carried streams (audio codec, subtitles) are not part of it: they are applied only when
the segments are assembled, so changing them never costs the upscaled video.

Nothing appears at the output path until the assembly is complete (`hatstream.atomic`), and
the work folder is removed once the output is in place.

One runner (`run_resumable`) serves every engine, as one queue and one record of finished
segments drained by an interchangeable executor: `InProcess` here (`Parallel`: several segments at
once, for an encoder that cannot keep up), `ray_engine.RaySegments` on
Ray actors. Only where a segment is computed differs; planning, the manifest, the check of
what comes back and the assembly are the same, so a farm run resumes like a local one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from hatstream.atomic import atomic_output, file_sha256, partial_files, write_durably
from hatstream.errors import HatstreamError
from hatstream.media.deinterlace import plan_deinterlace
from hatstream.pipeline.engine import Progress
from hatstream.pipeline.segments import (EncodedSegment, Segment, SegmentRecipe, SegmentResult, assemble,
                                         count_packets, encode_segment, segment_path)

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_EDGE = 1 << 20  # bytes hashed at each end of the input


@dataclass(frozen=True)
class InputFingerprint:
    """Enough to notice a replaced or edited input without reading all of it."""

    size: int
    mtime_ns: int
    head_sha256: str
    tail_sha256: str

    @classmethod
    def of(cls, path: Path) -> "InputFingerprint":
        """Fingerprint `path`: size, mtime and SHA-256 of its first and last MiB."""
        st = os.stat(path)
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(_EDGE)).hexdigest()
            f.seek(max(0, st.st_size - _EDGE))
            tail = hashlib.sha256(f.read(_EDGE)).hexdigest()
        return cls(st.st_size, st.st_mtime_ns, head, tail)

    def difference(self, other: "InputFingerprint") -> str | None:
        """Why `other` is not the same input (None when it is)."""
        if self.size != other.size:
            return f"the input changed size ({other.size} -> {self.size} bytes)"
        if (self.head_sha256, self.tail_sha256) != (other.head_sha256, other.tail_sha256):
            return "the input's content changed"
        if self.mtime_ns != other.mtime_ns:
            return "the input was modified (its mtime changed)"
        return None


@dataclass(frozen=True)
class Manifest:
    """What the work folder holds: fingerprints, the segment plan, and the finished segments."""

    input: InputFingerprint
    settings: tuple[tuple[str, str], ...]   # (name, JSON value), sorted
    segments: tuple[Segment, ...]
    done: tuple[EncodedSegment, ...] = ()
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        """The manifest as JSON text (segment paths are stored by name, relative to the folder)."""
        data = dataclasses.asdict(self)
        data["done"] = [dict(d, path=Path(d["path"]).name) for d in data["done"]]
        return json.dumps(data, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str, folder: Path) -> "Manifest":
        """Parse `to_json`'s output; ValueError/KeyError/TypeError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(d, dict) for d in data.get("done", ())):
            raise ValueError("not a manifest")
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')}")
        return cls(input=InputFingerprint(**data["input"]),
                   settings=tuple(tuple(item) for item in data["settings"]),
                   segments=tuple(Segment(**s) for s in data["segments"]),
                   done=tuple(EncodedSegment(**dict(d, path=_segment_file(folder, d))) for d in data["done"]))

    def frames_done(self) -> int:
        """Frames in the finished segments."""
        return sum(d.frames for d in self.done)


def _segment_file(folder: Path, done: dict) -> Path:
    """The file of a finished segment named in a manifest, which must be the one `segment_path` gives.

    The manifest is data on disk that anyone may have edited, and a damaged segment's file is
    deleted: a name such as `../x` or `/x` would make that delete reach outside the folder.
    """
    index, name = done["index"], done["path"]
    if type(index) is not int or index < 0:
        raise ValueError(f"segment index {index!r}")
    expected = segment_path(folder, index)
    if name != expected.name:
        raise ValueError(f"segment {index} is recorded as {name!r}, not {expected.name!r}")
    return expected


def settings_fingerprint(**settings: Any) -> tuple[tuple[str, str], ...]:
    """The settings as sorted (name, canonical JSON) pairs, for the manifest and for comparing."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in settings.items()))


def model_identity(name_or_path: str | None, upscaler) -> dict[str, Any]:
    """What identifies the model's output: its description, compute dtype, and the weights' hash.

    The weights file is hashed whole, a built-in's as much as a checkpoint's: the bundled
    weights change between releases and within one, so a name or a version number could join
    segments of two different models. The name is resolved as `load_model` resolves it (a
    built-in name wins over a file of that name). The device is left out: resuming a CPU run
    on a GPU is allowed.
    """
    from hatstream.models.registry import BUILTINS, WEIGHTS_DIR, default_model_name

    info = upscaler.info
    ident: dict[str, Any] = {"name": info.name, "arch": info.arch, "scale": info.scale,
                             "hyperparameters": dict(info.hyperparameters), "dtype": str(upscaler.dtype)}
    name = str(name_or_path) if name_or_path is not None else "default"
    if name == "default":
        name = default_model_name(info.scale)
    if name in BUILTINS:
        weights = BUILTINS[name].weights
        ident["builtin"] = name
        ident["weights_sha256"] = file_sha256(WEIGHTS_DIR / weights) if weights else None
    else:
        ident["weights_sha256"] = file_sha256(Path(name).expanduser())
    return ident


def work_dir(output: Path) -> Path:
    """The work folder of an output: `.<output name>.hatstream-work` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}.hatstream-work")


def _make_folder(folder: Path) -> None:
    # Everything in the folder is deleted when a run starts over: never follow a link elsewhere.
    if not folder.is_symlink():
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
    if folder.is_symlink() or not folder.is_dir():
        raise HatstreamError(f"{folder} is not a plain folder; remove it and run again")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Make the folder if need be and hold its lock, so that two runs never write the same segments.

    A run done with the folder removes it, lock file included, while still holding the lock. A
    run that opened the lock file just before that would then hold the lock of a deleted file in
    a deleted folder; so once locked, the file must still be the folder's, or all is done again.
    """
    for _ in range(10):
        _make_folder(folder)
        try:
            f = open(folder / "lock", "a")
        except FileNotFoundError:  # removed between the mkdir and the open
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HatstreamError(f"another hatstream run is working in {folder}") from None
            try:
                now = os.stat(folder / "lock")
            except FileNotFoundError:
                continue
            held = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                continue
            yield
            return
    raise HatstreamError(f"{folder} keeps being removed while this run opens it")


def remove_work_folder(output: Path) -> bool:
    """Remove the work folder of `output` (a watch job that failed for good, an input that is gone), under its
    lock; False when there is none or another run is using it."""
    folder = work_dir(output)
    if folder.is_symlink():
        folder.unlink()  # only the link: what it points at is not ours
        return True
    if not folder.is_dir():
        return False
    try:
        with _locked(folder):
            shutil.rmtree(folder)
    except HatstreamError as exc:
        log.info("%s is kept: %s", folder, exc)
        return False
    return True


@dataclass(frozen=True)
class ResumeOutcome:
    """What a segmented run did: total frames, those taken from an earlier run, those upscaled now, and
    why it started over (None when it did not)."""

    frames: int
    resumed: int
    processed: int
    segments: int
    note: str | None = None


class WorkFolder:
    """A work folder and its manifest, loaded, checked against this run, and updated as segments finish."""

    def __init__(self, output: Path, fresh: Manifest, resume: bool = True):
        self.folder = work_dir(output)
        self.manifest = fresh
        self.note: str | None = None
        self._lock = _locked(self.folder)
        self._lock.__enter__()
        try:
            self._open(output, fresh, resume)
        except BaseException:
            self.close()
            raise

    def _open(self, output: Path, fresh: Manifest, resume: bool) -> None:
        old = self._load()
        reason = None if old is None else "--no-resume" if not resume else self._mismatch(old, fresh)
        if old is None or reason is not None:
            if reason is not None:
                self.note = f"started over: {reason}"
                log.warning("%s: starting over (%s)", output.name, reason)
            self._clear()
        else:
            good = tuple(d for d in old.done if self._intact(d))
            self.manifest = dataclasses.replace(fresh, done=good)
            if good:
                log.info("%s: resuming; %d of %d segments (%d frames) already done", output.name, len(good),
                         len(fresh.segments), self.manifest.frames_done())
        self._save()

    def close(self) -> None:
        """Release the lock (the folder stays for a later run)."""
        self._lock.__exit__(None, None, None)

    def remove(self) -> None:
        """Remove the folder, then release the lock: a run that comes next finds no folder, or its own."""
        try:
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self.close()

    def _load(self) -> Manifest | None:
        path = self.folder / "manifest.json"
        if not path.exists():
            return None
        try:
            return Manifest.from_json(path.read_text(encoding="utf-8"), self.folder)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the manifest in %s is unreadable (%s); starting over", self.folder, exc)
            return None

    @staticmethod
    def _mismatch(old: Manifest, new: Manifest) -> str | None:
        """Why `old`'s segments cannot be used for `new` (None when they can)."""
        reason = new.input.difference(old.input)
        if reason:
            return reason
        before, after = dict(old.settings), dict(new.settings)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            return "the settings changed (" + ", ".join(
                f"{k}: {before.get(k, 'unset')} -> {after.get(k, 'unset')}" for k in changed) + ")"
        if old.segments != new.segments:
            return "the segment plan changed"
        return None

    def _intact(self, done: EncodedSegment) -> bool:
        """Whether a recorded segment's file is still exactly what was recorded."""
        problem = None
        if not done.path.is_file():
            problem = "its file is missing"
        elif done.path.stat().st_size != done.size:
            problem = f"its size is {done.path.stat().st_size}, not {done.size}"
        elif file_sha256(done.path) != done.sha256:
            problem = "its checksum does not match"
        elif (packets := count_packets(done.path)) != done.frames:
            problem = f"it holds {packets} frames, not {done.frames}"
        if problem:
            log.warning("segment %d is damaged (%s); it will be redone", done.index, problem)
            done.path.unlink(missing_ok=True)
            return False
        return True

    def _clear(self) -> None:
        for entry in self.folder.iterdir():
            if entry.name == "lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()  # a symlink goes, never what it points at

    def _save(self) -> None:
        write_durably(self.folder / "manifest.json", self.manifest.to_json())

    def record(self, segment: EncodedSegment) -> None:
        """Add a finished (already fsynced) segment to the manifest, durably."""
        self.manifest = dataclasses.replace(self.manifest, done=(*self.manifest.done, segment))
        self._save()


class SegmentExecutor(Protocol):
    """Where segments are computed: this process (`InProcess`), or Ray actors (`ray_engine.RaySegments`).

    `encode` computes `segments` (those the work folder lacks, in order) and yields a
    `SegmentResult` for each as it finishes, in any order. An executor may yield a segment twice
    (a retried task whose first try finished after all); the runner keeps the first. It may write
    into `folder` only at `segment_path(folder, index)` and only complete files, or send bytes
    instead. `on_progress(frames)` may report frames written of the segment being computed.
    The runner closes the iterator when it stops early, so an executor releases what it holds in
    a `finally` (or a `with`) around its loop.
    """

    def encode(self, recipe: SegmentRecipe, segments: Sequence[Segment], folder: Path,
               on_progress: Callable[[int], None]) -> Iterator[SegmentResult]: ...


class InProcess:
    """The executor that computes each segment here, one after another, with `upscale`."""

    def __init__(self, upscale: Callable[[list[tuple]], list[tuple]]):
        self.upscale = upscale

    def encode(self, recipe: SegmentRecipe, segments: Sequence[Segment], folder: Path,
               on_progress: Callable[[int], None]) -> Iterator[SegmentResult]:
        """Encode each segment straight into its file in `folder` (see `SegmentExecutor`)."""
        for segment in segments:
            yield SegmentResult(encode_segment(recipe, segment, self.upscale, segment_path(folder, segment.index),
                                               lambda p: on_progress(p.frames)))


class Parallel:
    """The executor that computes up to `workers` consecutive segments at once, in threads of this process.

    For a run where one encoder cannot keep up with the model (a GPU box without a hardware
    encoder): each segment has its own decoder and encoder, so several encoders share the
    cores. Memory is bounded by `workers`: a segment is started only when one finishes. The
    model is shared; `upscale` must be safe to call from several threads at once (a torch
    model in inference mode is). Results come back as they finish; the runner records them in
    any order and assembles them in order, so the output is the serial one's.
    """

    def __init__(self, upscale: Callable[[list[tuple]], list[tuple]], workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.upscale = upscale
        self.workers = workers

    def encode(self, recipe: SegmentRecipe, segments: Sequence[Segment], folder: Path,
               on_progress: Callable[[int], None]) -> Iterator[SegmentResult]:
        """Encode the segments into their files in `folder`, `workers` at a time (see `SegmentExecutor`)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        todo = iter(segments)
        running: set = set()
        # Frames of several segments at once have no single "segment being computed": progress
        # is reported as each segment finishes (by the runner).
        with ThreadPoolExecutor(self.workers, thread_name_prefix="segment") as pool:
            try:
                while True:
                    while len(running) < self.workers and (segment := next(todo, None)) is not None:
                        running.add(pool.submit(encode_segment, recipe, segment, self.upscale,
                                                segment_path(folder, segment.index)))
                    if not running:
                        return
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in sorted(finished, key=lambda f: f.result().index):
                        yield SegmentResult(future.result())
            finally:
                for future in running:  # stopped early: start nothing more; the pool waits for the rest
                    future.cancel()


def _fingerprint(path: Path) -> InputFingerprint:
    try:
        return InputFingerprint.of(path)
    except OSError as exc:
        raise HatstreamError(f"cannot read {Path(path).name}: {exc.strerror or exc}") from None


def run_resumable(recipe: SegmentRecipe, segments: tuple[Segment, ...], executor: SegmentExecutor,
                  output: Path, settings: tuple[tuple[str, str], ...], resume: bool = True, total: int = 0,
                  exact: bool = False, on_progress: Callable[[Progress], None] | None = None,
                  overwrite: bool = True) -> ResumeOutcome:
    """Have `executor` encode the segments the work folder lacks, assemble them all onto `output`, remove
    the folder.

    The one segment runner: the work folder, the manifest, the check of segments that come
    from elsewhere and the assembly are the same wherever segments are computed; only the
    executor differs. Each finished segment is recorded durably as it arrives, so a run killed
    at any point resumes with it. The output's temporary file exists only while the segments
    are assembled (a kill before that leaves nothing beside the output but the work folder).
    On any failure the folder is kept, for the next run to resume.
    """
    fresh = Manifest(_fingerprint(recipe.info.path), settings, segments)
    work = WorkFolder(output, fresh, resume)
    try:
        for stale in partial_files(output):  # a run killed while assembling; we hold the lock
            stale.unlink(missing_ok=True)
        resumed = work.manifest.frames_done()
        recorded = [resumed]  # frames in finished segments, resumed or not
        processed = 0
        finished = {d.index: d for d in work.manifest.done}
        todo = [s for s in segments if s.index not in finished]
        started = time.perf_counter()

        def progress(frames: int) -> None:
            if on_progress is not None:
                now = recorded[0] + frames
                on_progress(Progress(now, max(total, now), exact, time.perf_counter() - started))

        if todo:
            with contextlib.closing(iter(executor.encode(recipe, todo, work.folder, progress))) as results:
                for result in results:
                    done = _accept(work.folder, result, finished, {s.index for s in todo})
                    if done is None:
                        continue
                    work.record(done)
                    finished[done.index] = done
                    recorded[0] += done.frames
                    processed += done.frames
                    progress(0)
        missing = [s.index for s in segments if s.index not in finished]
        if missing:  # an executor that stopped early: never assemble with a gap
            raise RuntimeError(f"segments {missing} were never computed")
        with atomic_output(output, overwrite) as tmp:
            frames = assemble(recipe, [finished[s.index] for s in segments], tmp)
            if frames != resumed + processed:  # every frame exactly once: none lost, none twice
                raise RuntimeError(f"{resumed} frames resumed and {processed} encoded, but {frames} assembled")
    except BaseException:
        work.close()
        raise
    work.remove()
    return ResumeOutcome(frames, resumed, processed, len(segments), work.note)


def _accept(folder: Path, result: SegmentResult, finished: dict[int, EncodedSegment],
            wanted: set[int]) -> EncodedSegment | None:
    """The finished segment of `result`, its file in place in `folder`; None for a late duplicate."""
    encoded = result.segment
    if encoded.index in finished or encoded.index not in wanted:
        # At-least-once delivery (a task retried after its first try had in fact finished): the
        # first copy is already recorded, and the two are the same segment of the same plan.
        log.info("segment %d came back a second time; the later copy is dropped", encoded.index)
        return None
    path = segment_path(folder, encoded.index)
    if result.data is None:
        if Path(encoded.path) != path:
            raise RuntimeError(f"segment {encoded.index} was written to {encoded.path}, not {path}")
        return encoded
    if len(result.data) != encoded.size or hashlib.sha256(result.data).hexdigest() != encoded.sha256:
        raise HatstreamError(f"segment {encoded.index} arrived damaged from its worker")
    write_durably(path, result.data, suffix=".part")
    return dataclasses.replace(encoded, path=path)


def run_settings(model_name: str | None, upscaler, recipe: SegmentRecipe, segment_seconds: float, **extra: Any
                 ) -> tuple[tuple[str, str], ...]:
    """The settings fingerprint of a run: everything that changes the encoded video of a segment
    (`extra`: what only one engine knows of, e.g. the precision Ray actors compute in)."""
    enc, plan = recipe.plan.encoding, recipe.plan
    deint = plan_deinterlace(recipe.info, recipe.deinterlace)
    return settings_fingerprint(model=model_identity(model_name, upscaler), codec=enc.codec, options=enc.options,
                                pix_fmt=enc.layout.pix_fmt, colour=[enc.colour.matrix, enc.colour.full_range],
                                colour_tags=enc.colour_tags, size=[plan.width, plan.height],
                                video_stream=recipe.info.stream_index, segment_seconds=segment_seconds,
                                # Only when on, so the work folders of runs without it still resume.
                                **({"temporal": "on"} if recipe.temporal else {}),
                                # Likewise only when frames are deinterlaced (the filter and its options).
                                **({"deinterlace": deint.args} if deint else {}), **extra)
