"""Upscale a video file: decode, upscale with the model, re-encode, and carry over audio,
subtitles, chapters, metadata, rotation and colour tags. Frame count and timestamps stay
identical to the input's (with the default --on-error fail; concealment repeats or drops
damaged frames and counts them).

The output is `<stem>.x<scale><ext>` beside the input unless -o is given, and is written to a
temporary file that is renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from hatstream.commands.common import (ON_ERROR_CHOICES, PROGRESS_SECONDS, Throttle, add_engine_arguments,
                                        add_model_arguments, nonnegative_seconds, positive_int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `hatstream run`."""
    p.add_argument("input", type=Path, help="the video file to upscale")
    p.add_argument("-o", "--output", type=Path, help="output file (default: <stem>.x<scale><ext> beside the input)")
    add_model_arguments(p, device=False,  # --device comes with the engine options
                        compile="torch.compile the model: a slow first frame, faster frames after (local engine)")
    p.add_argument("--batch", type=positive_int, default=1, help="frames per model call (default: 1)")
    p.add_argument("--codec", help="video encoder (default: libx264, or libx265 above 10-bit, VP9/AV1 for WebM); "
                                   "ffv1 is lossless")
    p.add_argument("--crf", type=int, help="quality for CRF encoders (default: 18 for libx264)")
    p.add_argument("--preset", help="encoder speed preset, e.g. medium or slow")
    p.add_argument("--pix-fmt", help="output pixel format (default: 4:2:0 at the input's bit depth, which every "
                                     "player plays; lossless codecs keep the input's)")
    p.add_argument("--keep-chroma", action="store_true",
                   help="keep the input's 4:2:2/4:4:4 chroma instead of 4:2:0 (fewer players can play it)")
    p.add_argument("--deinterlace", default="auto", choices=("auto", "on", "off"),
                   help="deinterlace with bwdif before the model: auto (default) when the stream is "
                        "flagged interlaced, on for every frame, or off")
    p.add_argument("--audio-codec", default="copy", metavar="copy|NAME",
                   help="copy audio packet for packet (default), or re-encode it, e.g. aac")
    p.add_argument("--subtitles", default="copy", metavar="copy|drop|NAME",
                   help="copy subtitles (default), drop them, or convert text subtitles, e.g. mov_text")
    p.add_argument("--on-error", default="fail", choices=ON_ERROR_CHOICES, metavar="MODE",
                   help="damaged video, one of %(choices)s: stop naming the timestamp (fail, the default), or "
                        "conceal it and count it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--segment-seconds", type=nonnegative_seconds, default=None, metavar="S",
                   help="inputs longer than this run in keyframe-aligned segments of about S seconds, so an "
                        "interrupted run resumes where it stopped (default: 60; 0 turns segments off)")
    p.add_argument("--segment-workers", type=_segment_workers, default=None, metavar="N|auto",
                   help="local engine: compute N consecutive segments at once, each with its own encoder, "
                        "for when one encoder cannot keep up with the model (default: auto, which is 1 "
                        "unless the model runs on a GPU and leaves more cores than one encoder uses well)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over instead of reusing the segments an interrupted run finished")
    add_engine_arguments(p)
    p.add_argument("--json", action="store_true", help="print progress as JSON lines instead of a bar")
    p.add_argument("--temporal", choices=("on", "off"), default="off",
                   help="carry detail along the motion from the previous frame, against shimmer (default: off)")


def _segment_workers(text: str) -> int | None:
    """argparse type: 'auto' (None: chosen from the machine, `pipeline.run.auto_segment_workers`) or N >= 1."""
    if text == "auto":
        return None
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number of at least 1, not {text!r}") from None


class _JsonProgress:
    """One JSON object per line on stdout, at most every half second, plus the last frame."""

    def __init__(self):
        self.last = 0.0

    def start(self, total: int, exact: bool) -> None:
        self._emit({"event": "start", "total": total, "total_exact": exact})

    def update(self, p) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5 or (p.exact and p.frames == p.total):
            self.last = now
            eta = (p.total - p.frames) / p.fps if p.fps > 0 and p.total >= p.frames else None
            self._emit({"event": "progress", "frames": p.frames, "total": p.total, "total_exact": p.exact,
                        "fps": round(p.fps, 3), "elapsed": round(p.elapsed, 3),
                        "eta": round(eta, 3) if eta is not None else None})

    def close(self) -> None:
        pass

    @staticmethod
    def _emit(obj) -> None:
        print(json.dumps(obj), flush=True)


class _BarProgress:
    """A tqdm bar on stderr: frames, fps and ETA (the total is an estimate for MKV/WebM).

    Where stderr is not a terminal, a plain line at most every PROGRESS_SECONDS instead.
    """

    def __init__(self):
        self.bar = None
        self.due = Throttle(PROGRESS_SECONDS)

    def start(self, total: int, exact: bool) -> None:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI, subprocess callers),
        # where carriage-return redraws would only be noise before the summary or error line.
        self.bar = tqdm(total=total or None, unit="frame", desc="upscaling" if exact else "upscaling (~total)",
                        dynamic_ncols=True, file=sys.stderr, disable=None)

    def update(self, p) -> None:
        if self.bar.disable:
            if self.due():
                total = f"{p.total}" if p.exact else f"~{p.total}"
                print(f"hatstream: upscaling: frame {p.frames}/{total}, {p.fps:.2f} fps, {p.elapsed:.0f}s elapsed",
                      file=sys.stderr, flush=True)
            return
        if p.frames > (self.bar.total or 0) and self.bar.total:
            self.bar.total = p.frames  # the estimate was short; never show more than 100%
        self.bar.update(p.frames - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Run the upscale and print the summary line."""
    from hatstream.media.encode import EncodeSettings
    from hatstream.pipeline.run import RunConfig, run_file

    config = RunConfig(
        input=args.input, output=args.output, model=args.model, scale=args.scale, precision=args.precision,
        backend=args.backend, device=args.device, batch=args.batch,
        encode=EncodeSettings(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
                              keep_chroma=args.keep_chroma),
        audio_codec=args.audio_codec, subtitles=args.subtitles, on_error=args.on_error, overwrite=args.overwrite,
        engine=args.engine, address=args.address, workers=args.workers, resume=not args.no_resume,
        compile=args.compile, temporal=args.temporal == "on", deinterlace=args.deinterlace,
        segment_workers=args.segment_workers,
    )
    if args.segment_seconds is not None:
        config = dataclasses.replace(config, segment_seconds=args.segment_seconds)
    progress = _JsonProgress() if args.json else _BarProgress()
    try:
        result = run_file(config, on_progress=progress.update, on_start=progress.start)
    finally:
        progress.close()
    repaired = f", {result.repaired} damaged frame(s) concealed" if result.repaired else ""
    dropped = f", {result.dropped} frame(s) lost" if result.dropped else ""
    resumed = f", {result.resumed} more resumed from an interrupted run" if result.resumed else ""
    deinterlaced = f", {result.deinterlaced}" if result.deinterlaced else ""
    clipped = f", {result.clipped} pixel(s) clipped to the output's range" if result.clipped else ""
    if args.json:
        print(json.dumps({"event": "done", "output": str(result.output), "frames": result.frames,
                          "seconds": round(result.seconds, 3), "fps": round(result.fps, 3),
                          "repaired": result.repaired, "dropped": result.dropped, "model": result.model,
                          "encoding": result.encoding, "problems": list(result.problems),
                          "resumed": result.resumed, "note": result.note, "deinterlaced": result.deinterlaced,
                          "container_note": result.container_note, "clipped": result.clipped}), flush=True)
    else:
        if result.note:
            print(f"hatstream: {result.note}", file=sys.stderr, flush=True)
        if result.container_note:
            print(f"hatstream: {result.container_note}", file=sys.stderr, flush=True)
        print(f"hatstream: {result.frames - result.resumed} frames in {result.seconds:.1f}s ({result.fps:.2f} fps)"
              f"{resumed}{repaired}{dropped}{deinterlaced}{clipped} -> {result.output}", flush=True)
    return 0
