"""Quality and temporal stability of a model on a video clip: bicubic, per-frame and --temporal on.

Each frame of the clip is cropped to a multiple of the scale, downscaled by MATLAB-compatible
bicubic (rounded to uint8) and upscaled back; the results are compared with the original frames
on the BT.601 Y channel with `scale` pixels cropped from each border, as `hatstream eval` does
for images. Beside PSNR-Y and SSIM-Y (per frame, averaged) it reports:

  flicker  mean |e_t - W(e_(t-1))|, e = output - original, W = DIS flow on the originals,
           over pixels whose flow passes the forward-backward check: error that changes from
           frame to frame where the picture does not (lower is steadier)
  plain    mean |e_t - e_(t-1)| over all pixels, no motion compensation
  warp     mean |O_t - W(O_(t-1))| of the output alone (Lai et al. 2018)

The temporal row runs the model's output Y through the same `TemporalFilter` that
`hatstream run --temporal on` applies to the output's luma plane.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from hatstream.commands.common import add_model_arguments, positive_int
from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `hatstream eval-video`."""
    p.add_argument("clip", type=Path, help="a video file; its frames are the ground truth")
    add_model_arguments(p, model="built-in name (hat-tiny-x2, bicubic, ...) or checkpoint path; "
                                 "default: bundled for --scale")
    p.add_argument("--frames", type=positive_int, default=40, help="consecutive frames to score (default: 40)")
    p.add_argument("--start", type=int, default=0, help="index of the first frame to score (default: 0)")
    p.add_argument("--json", metavar="PATH", help="also write the scores, per frame too, as JSON")


@dataclass(frozen=True)
class ClipScore:
    """One way of upscaling a clip, scored: means over frames (PSNR, SSIM) and frame pairs (the rest)."""

    name: str
    psnr: float
    ssim: float
    flicker: float
    plain: float
    warp: float
    psnr_frames: tuple[float, ...]
    flicker_frames: tuple[float, ...]


def read_clip(path: Path, start: int, count: int):
    """`count` consecutive frames from frame `start` as uint8 RGB arrays (decoded in order, no seeking)."""
    import av

    if not Path(path).is_file():
        raise HatstreamError(f"{path}: no such file")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise HatstreamError(f"{path} has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                if i >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    except av.error.FFmpegError as exc:
        raise HatstreamError(f"cannot read video {path}: {exc}") from None
    if len(frames) < 2:
        raise HatstreamError(f"{path}: {len(frames)} frame(s) from frame {start}; flicker needs at least two")
    return frames


def score_clip(frames, scale: int, upscale) -> list[ClipScore]:
    """Bicubic, the model per frame, and the model with the temporal filter, on uint8 RGB `frames`.

    `upscale` is an `evaluate.UpscaleFn` (an `Upscaler`, for one).
    """
    import numpy as np

    from hatstream.metrics.flicker import error_flicker, flow_pair, plain_flicker, warping_error
    from hatstream.metrics.quality import psnr, rgb_to_y, ssim
    from hatstream.pipeline.temporal import TemporalFilter
    from hatstream.train.evaluate import bicubic_upscale, degrade, model_upscale

    hr, outputs = [], {"bicubic": [], "model": []}
    for rgb in frames:
        h, lr = degrade(rgb, scale)
        hr.append(rgb_to_y(h))
        outputs["bicubic"].append(rgb_to_y(bicubic_upscale(lr, scale)))
        outputs["model"].append(rgb_to_y(model_upscale(upscale, lr)))
    steady = TemporalFilter(scale, 255)
    outputs["model --temporal on"] = [steady([y])[0] for y in outputs["model"]]
    pairs = [flow_pair(hr[t], hr[t - 1]) for t in range(1, len(hr))]
    scores = []
    for name, ys in outputs.items():
        p = [psnr(y, g, scale) for y, g in zip(ys, hr)]
        f = error_flicker(ys, hr, scale, pairs)
        scores.append(ClipScore(name, float(np.mean(p)), float(np.mean([ssim(y, g, scale) for y, g in zip(ys, hr)])),
                                float(np.nanmean(f)), float(np.mean(plain_flicker(ys, hr, scale))),
                                float(np.nanmean(warping_error(ys, scale, pairs))), tuple(p), tuple(f)))
    return scores


def format_table(title: str, scores: list[ClipScore]) -> str:
    """The table `hatstream eval-video` prints, one row per way of upscaling."""
    width = max(len("output"), *(len(s.name) for s in scores))
    head = f"{'output':<{width}}  {'PSNR-Y':>7} {'SSIM-Y':>7}  {'flicker':>7} {'plain':>7} {'warp':>7}"
    lines = [title, head, "-" * len(head)]
    for s in scores:
        lines.append(f"{s.name:<{width}}  {s.psnr:>7.3f} {s.ssim:>7.4f}  {s.flicker:>7.3f} {s.plain:>7.3f} "
                     f"{s.warp:>7.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score the clip, print the table (and optionally write JSON)."""
    if args.start < 0:
        raise HatstreamError("--start must be 0 or more")
    frames = read_clip(args.clip, args.start, args.frames)
    from hatstream.inference import load_model

    upscaler = load_model(args.model, device=args.device, precision=args.precision, scale=args.scale,
                          compile=args.compile)
    scale = upscaler.scale
    if min(frames[0].shape[:2]) < scale * 12:
        h, w = frames[0].shape[:2]
        raise HatstreamError(f"{args.clip} is too small to score at x{scale} ({w}x{h})")
    scores = score_clip(frames, scale, upscaler)
    title = (f"{args.clip.name}, frames {args.start}-{args.start + len(frames) - 1}: {upscaler.info.name} x{scale} "
             f"({upscaler.dtype}, {upscaler.device}); Y channel, crop border {scale}")
    print(format_table(title, scores))
    if args.json:
        out = {"clip": str(args.clip), "start": args.start, "frames": len(frames), "model": args.model or "default",
               "name": upscaler.info.name, "scale": scale, "scores": [asdict(s) for s in scores]}
        Path(args.json).write_text(json.dumps(out, indent=1))
    sys.stdout.flush()
    return 0
