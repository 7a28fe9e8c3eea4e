"""`python -m hatstream.demo` (what `make demo` runs): upscale a short generated clip end to end.

It pans a 160x90 window across scikit-image's astronaut photo for two seconds at 25 fps, adds a
stereo AAC track (a slow chord, so the copy can be heard to be in sync), writes that to
`demo-out/astronaut.mp4`, runs `hatstream run` on it with the default model, and prints where
the result is. It needs scikit-image (the `data` extra; `make install` pulls it in via `test`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 160, 90, 25, 2
AUDIO_RATE = 48000


def _photo() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("hatstream demo: scikit-image is needed for the sample photo: pip install scikit-image")
    return data.astronaut()  # 512x512 RGB, public domain (NASA)


def _pan_frames(photo: np.ndarray, count: int):
    """Crops moving diagonally across the photo, downscaled 2x with area averaging (a clean 'low-res' source)."""
    h, w = photo.shape[:2]
    cw, ch = WIDTH * 2, HEIGHT * 2
    for i in range(count):
        t = i / max(count - 1, 1)
        x, y = round(t * (w - cw)), round(t * (h - ch) * 0.6)
        crop = photo[y:y + ch, x:x + cw].astype(np.float32)
        small = crop.reshape(HEIGHT, 2, WIDTH, 2, 3).mean(axis=(1, 3))
        yield np.clip(small + 0.5, 0, 255).astype(np.uint8)


def make_clip(path: Path) -> Path:
    """Write the demo clip (H.264 video, AAC audio, BT.709 tags) to `path`."""
    count = FPS * SECONDS
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"crf": "16"}
        video.codec_context.colorspace, video.codec_context.color_range = 1, 1
        video.codec_context.color_primaries, video.codec_context.color_trc = 1, 1
        audio = out.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        audio.metadata["language"] = "eng"
        out.metadata["title"] = "hatstream demo: astronaut pan"
        for i, rgb in enumerate(_pan_frames(_photo(), count)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG", threads=1)
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        _write_chord(out, audio, SECONDS)
    return path


def _write_chord(out, stream, seconds: float) -> None:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    wave = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)).astype(np.float32)
    size = stream.codec_context.frame_size or 1024
    for start in range(0, len(wave), size):
        chunk = wave[start:start + size]
        if len(chunk) < size:
            chunk = np.pad(chunk, (0, size - len(chunk)))
        frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def main(argv: list[str] | None = None) -> int:
    """Build the clip, upscale it with `hatstream run`, and print where both are."""
    parser = argparse.ArgumentParser(prog="python -m hatstream.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for the clip and the result")
    parser.add_argument("--model", default=None, help="model for hatstream run (default: the bundled default)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clip = make_clip(args.out / "astronaut.mp4")
    print(f"demo: made {clip} ({WIDTH}x{HEIGHT}, {SECONDS}s at {FPS} fps, with audio)", flush=True)
    cmd = [sys.executable, "-m", "hatstream", "run", str(clip), "--overwrite"]
    if args.model:
        cmd += ["--model", args.model]
    status = subprocess.call(cmd)
    if status != 0:
        print(f"demo: hatstream run failed (exit {status})", file=sys.stderr)
        return status
    results = sorted(args.out.glob("astronaut.x*.mp4"))
    print(f"demo: done; the upscaled video is {results[-1].resolve() if results else '?'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
