"""See what a run would make before starting it: a few frames of INPUT upscaled by the model,
beside the source (nearest neighbour, so its pixels show) and bicubic.

    hatstream preview INPUT [--at T1,T2,...|--count N] [--model M] [--scale N] [--crop WxH] [-o OUT.png|OUT.html]

Frames are found by seeking to the keyframe before each time and decoding to the exact frame, so
a preview of a long film takes seconds. A PNG shows each frame's most detailed crop; an HTML file
(self-contained, no network) has a before/after slider over each whole frame and the settings.
On a CPU it also says how long the model would take over the whole file at the measured speed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from hatstream.commands.common import add_model_arguments, positive_int
from hatstream.errors import HatstreamError

_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)")


def timestamp(text: str) -> float:
    """argparse helper: seconds ('12.5') or a clock time ('1:02:03.5', '02:03')."""
    text = text.strip()
    m = _CLOCK.fullmatch(text)
    try:
        value = (int(m[1] or 0) * 3600 + int(m[2]) * 60 + float(m[3])) if m else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time (seconds, or [H:]MM:SS)") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def timestamps(text: str) -> tuple[float, ...]:
    """argparse type: a comma-separated list of times."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one time")
    return tuple(timestamp(p) for p in parts)


def crop_size(text: str) -> tuple[int, int]:
    """argparse type: WxH in output pixels, e.g. 320x240."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x240")
    return int(m[1]), int(m[2])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `hatstream preview`."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("input", type=Path, help="the video file to preview")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", type=timestamps, metavar="T1,T2,...",
                      help="times to preview, in seconds or [H:]MM:SS from the first frame")
    when.add_argument("--count", type=positive_int, default=3, metavar="N",
                      help="or N frames spread evenly over the video (default: 3)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.png|OUT.html",
                   help="the preview file (default: <stem>.preview.png beside the input)")
    # No --compile: a preview of a few frames does not win back the compile time.
    add_model_arguments(p, compile=False,
                        model="built-in model name or checkpoint path (default: the bundled default)")
    p.add_argument("--codec", help="the video encoder a run would use (decides the output's pixel format)")
    p.add_argument("--pix-fmt", help="the output pixel format a run would use (default: the input's)")
    p.add_argument("--crop", type=crop_size, metavar="WxH",
                   help="size of each panel of the PNG in output pixels (default: 320x240, placed where "
                        "the picture has the most detail)")
    p.add_argument("--deinterlace", default="auto", choices=("auto", "on", "off"),
                   help="deinterlace as `run --deinterlace` does (default auto: when the stream is interlaced)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing preview file")


def run(args: argparse.Namespace) -> int:
    """Make the preview, write it atomically, and print where it is (and, on a CPU, the run's cost)."""
    from hatstream.atomic import atomic_output, check_output_path
    from hatstream.media.encode import EncodeSettings

    output = args.output or args.input.with_name(f"{args.input.stem}.preview.png")
    kind = output.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise HatstreamError(f"cannot write {output.name}: a preview is a .png or an .html file")
    check_output_path(output, [args.input], args.overwrite)

    from hatstream.pipeline.preview import PreviewConfig, format_duration, make_preview
    from hatstream.pipeline.preview_render import page, png_bytes, sheet

    config = PreviewConfig(input=args.input, times=args.at or (), count=args.count, model=args.model,
                           scale=args.scale, precision=args.precision, device=args.device, crop=args.crop,
                           encode=EncodeSettings(codec=args.codec, pix_fmt=args.pix_fmt),
                           deinterlace=args.deinterlace)
    preview = make_preview(config)
    data = png_bytes(sheet(preview)) if kind == ".png" else page(preview).encode("utf-8")
    with atomic_output(output, args.overwrite) as tmp:
        tmp.write_bytes(data)
    times = ", ".join(f"{f.time:.3f}s" for f in preview.frames)
    print(f"hatstream: preview of {len(preview.frames)} frame(s) at {times} with {preview.model} "
          f"x{preview.scale} -> {output}", flush=True)
    if preview.device.startswith("cpu"):
        total = preview.full_run_seconds
        cost = (f"about {format_duration(total)} for its {preview.info.frames}"
                f"{'' if preview.info.frames_exact else ' (estimated)'} frames" if total is not None
                else "unknown (the file declares no frame count)")
        print(f"hatstream: on this CPU the model takes {preview.seconds_per_frame:.2f}s per frame; "
              f"a full run would take {cost}", file=sys.stderr, flush=True)
    return 0
