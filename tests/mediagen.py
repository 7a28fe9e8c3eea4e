"""Making small real media files with PyAV for the `hatstream run` tests, and reading them back.

Everything here writes genuine containers through FFmpeg (no mocks): video in any pixel format
and codec, constant or variable frame rate, audio tracks in several codecs with language and
title tags, SubRip subtitles, chapters, rotation, colour tags and container metadata.
`dump_packets` gives a FATE-style per-stream list of packet timing and bytes for comparisons.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# swscale must run single-threaded: FFmpeg 8.1's threaded path (av 18.1.0) returns slightly
# different rows from run to run, which would make colour checks flaky.
SWS_THREADS = 1


@dataclass(frozen=True)
class Audio:
    """One audio track to add."""

    codec: str = "aac"
    rate: int = 48000
    layout: str = "stereo"
    language: str | None = None
    title: str | None = None
    tone: float = 440.0


@dataclass(frozen=True)
class Clip:
    """What `make_video` writes. `pts` (in `time_base` units) makes the video variable-rate."""

    frames: int = 12
    width: int = 64
    height: int = 48
    codec: str = "ffv1"
    pix_fmt: str = "yuv420p"
    rate: Fraction = Fraction(25)
    time_base: Fraction | None = None
    pts: tuple[int, ...] | None = None
    audio: tuple[Audio, ...] = ()
    subtitles: tuple[tuple[int, int, str], ...] = ()   # (start ms, end ms, text)
    subtitle_language: str = "eng"
    chapters: tuple[tuple[int, int, str], ...] = ()    # (start ms, end ms, title)
    rotation: int | None = None
    colour_tags: tuple[int, int, int, int] | None = None  # colorspace, range, primaries, trc
    metadata: dict = field(default_factory=dict)
    video_metadata: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    image: object = None  # callable(i, width, height) -> HxWx3 uint8 RGB, or None for moving noise
    planes: object = None  # callable(i) -> tuple of plane arrays in `pix_fmt` (bypasses `image`)


def moving_pattern(i: int, width: int, height: int) -> np.ndarray:
    """A smooth gradient that moves with `i`, plus a little fixed noise (codecs can't cheat)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 24, (height, width, 3))
    img = np.stack([(x * 4 + i * 9) % 256, (y * 5 + i * 3) % 256, ((x + y) * 2 + i * 5) % 256], axis=-1)
    return np.clip(img * 0.85 + noise, 0, 255).astype(np.uint8)


def _frame_from_planes(planes, pix_fmt: str, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, arr in zip(frame.planes, planes):
        row = plane.line_size // arr.itemsize
        np.frombuffer(plane, dtype=arr.dtype, count=row * arr.shape[0]).reshape(arr.shape[0], row)[:, :arr.shape[1]] = arr
    return frame


def _video_frame(clip: Clip, i: int) -> av.VideoFrame:
    if clip.planes is not None:
        frame = _frame_from_planes(clip.planes(i), clip.pix_fmt, clip.width, clip.height)
        if clip.colour_tags is not None:
            frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = clip.colour_tags
        return frame
    draw = clip.image or moving_pattern
    rgb = draw(i, clip.width, clip.height)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    if clip.colour_tags is not None:
        from av.video.reformatter import ColorRange, Colorspace
        colorspace, color_range = clip.colour_tags[:2]
        frame = frame.reformat(format=clip.pix_fmt, dst_colorspace=Colorspace(colorspace),
                               dst_color_range=ColorRange(color_range), threads=SWS_THREADS)
        frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = clip.colour_tags
    else:
        frame = frame.reformat(format=clip.pix_fmt, threads=SWS_THREADS)
    return frame


def _write_srt(path: Path, cues) -> Path:
    def ts(ms: int) -> str:
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    text = "".join(f"{n}\n{ts(a)} --> {ts(b)}\n{t}\n\n" for n, (a, b, t) in enumerate(cues, 1))
    path.write_text(text, encoding="utf-8")
    return path


def make_video(path: Path, clip: Clip = Clip()) -> Path:
    """Write `clip` to `path` (the container follows the extension); returns the path."""
    path = Path(path)
    tb = clip.time_base or (1 / Fraction(clip.rate))
    pts = list(clip.pts) if clip.pts is not None else [round(i / Fraction(clip.rate) / tb) for i in range(clip.frames)]
    srt_in = None
    with av.open(str(path), "w") as out:
        v = out.add_stream(clip.codec, rate=clip.rate)
        v.width, v.height, v.pix_fmt = clip.width, clip.height, clip.pix_fmt
        v.codec_context.time_base = tb
        v.time_base = tb
        v.options = dict(clip.options)
        if clip.colour_tags is not None:
            cc = v.codec_context
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = clip.colour_tags
        if clip.rotation is not None:
            v.set_display_rotation(clip.rotation)
        for k, val in clip.video_metadata.items():
            v.metadata[k] = val
        audio_streams = []
        for a in clip.audio:
            s = out.add_stream(a.codec, rate=a.rate)
            s.layout = a.layout
            if a.language:
                s.metadata["language"] = a.language
            if a.title:
                s.metadata["title"] = a.title
            audio_streams.append((s, a))
        sub_stream = None
        if clip.subtitles:
            srt = _write_srt(path.with_suffix(".srt"), clip.subtitles)
            srt_in = av.open(str(srt))
            sub_stream = out.add_stream_from_template(srt_in.streams[0])
            sub_stream.metadata["language"] = clip.subtitle_language
            sub_stream.metadata["title"] = "Test subtitles"
        for k, val in clip.metadata.items():
            out.metadata[k] = val
        if clip.chapters:
            out.set_chapters([{"id": n, "start": a, "end": b, "time_base": Fraction(1, 1000),
                               "metadata": {"title": t}} for n, (a, b, t) in enumerate(clip.chapters, 1)])
        for i, p in enumerate(pts):
            frame = _video_frame(clip, i)
            frame.pts = p
            out.mux(v.encode(frame))
        out.mux(v.encode())
        seconds = float((pts[-1] + (pts[1] - pts[0] if len(pts) > 1 else 1)) * tb)
        for s, a in audio_streams:
            _write_tone(out, s, a, seconds)
        if sub_stream is not None:
            for packet in srt_in.demux(srt_in.streams[0]):
                if packet.size:
                    packet.stream = sub_stream
                    out.mux(packet)
    if srt_in is not None:
        srt_in.close()
        path.with_suffix(".srt").unlink()
    return path


def _write_tone(out, stream, spec: Audio, seconds: float) -> None:
    total = int(seconds * spec.rate)
    channels = 2 if spec.layout == "stereo" else 1
    t = np.arange(total) / spec.rate
    wave = (0.3 * np.sin(2 * np.pi * spec.tone * t)).astype(np.float32)
    resampler = av.AudioResampler(format=stream.codec_context.format or "fltp", layout=spec.layout, rate=spec.rate,
                                  frame_size=stream.codec_context.frame_size or 1024)
    for start in range(0, total, 1024):
        chunk = np.tile(wave[start:start + 1024], (channels, 1))
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=spec.layout)
        frame.sample_rate = spec.rate
        frame.pts = start
        frame.time_base = Fraction(1, spec.rate)
        for f in resampler.resample(frame):
            out.mux(stream.encode(f))
    for f in resampler.resample(None):
        out.mux(stream.encode(f))
    out.mux(stream.encode())


def make_audio_only(path: Path, codec: str = "aac") -> Path:
    """A file with one audio track and no video."""
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=48000)
        s.layout = "stereo"
        _write_tone(out, s, Audio(codec), 0.5)
    return Path(path)


def read_planes(path: Path) -> list[tuple[np.ndarray, ...]]:
    """Every frame of the first video stream as a tuple of its planes (numpy, padding removed)."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            dtype = np.uint16 if max(comp.bits for comp in f.format.components) > 8 else np.uint8
            planes = []
            for plane in f.planes:
                row = plane.line_size // np.dtype(dtype).itemsize
                arr = np.frombuffer(plane, dtype=dtype, count=row * plane.height).reshape(plane.height, row)
                planes.append(arr[:, :plane.width].copy())
            out.append(tuple(planes))
    return out


def dump_packets(path: Path, kind: str | None = None) -> dict[int, list[tuple]]:
    """Per stream index: [(pts, dts, duration, time_base, bytes)] of every non-empty packet."""
    result: dict[int, list[tuple]] = {}
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if kind is None or s.type == kind]
        for p in c.demux(streams):
            if p.size:
                result.setdefault(p.stream.index, []).append((p.pts, p.dts, p.duration, p.time_base, bytes(p)))
    return result


def frame_times(path: Path) -> list[Fraction]:
    """Presentation times (exact rationals) of every decoded frame of the main video stream."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [Fraction(f.pts) * Fraction(v.time_base) for f in c.decode(v)]


def video_stream_info(path: Path) -> dict:
    """Codec, size, pixel format, frame count, rotation and colour tags of the first video stream."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        f = frames[0]
        return {"codec": v.codec_context.name, "width": v.width, "height": v.height,
                "pix_fmt": f.format.name, "frames": len(frames), "rotation": f.rotation,
                "colour_tags": (int(f.colorspace), int(f.color_range), int(f.color_primaries), int(f.color_trc))}


def run_cli(*args, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m hatstream run ARGS...` as a subprocess; returns the completed process."""
    env = _env()
    return subprocess.run([sys.executable, "-m", "hatstream", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def popen_cli(*args) -> subprocess.Popen:
    """Start `python -m hatstream run ARGS...` without waiting (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "hatstream", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=_default_sigint)


def _default_sigint() -> None:
    # A test runner started as a background job (`cmd &` in a script) has SIGINT ignored, and a
    # child inherits that, so Python would install no Ctrl-C handler and the interrupt test would
    # see the run finish. Give the child the default disposition a terminal user's process has.
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env() -> dict:
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Two cores, shared with other test runs: keep torch from oversubscribing them.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
