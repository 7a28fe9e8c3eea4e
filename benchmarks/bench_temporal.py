"""`--temporal on`: what it costs per frame, and what it does to quality and error flicker on a clip.

Cost: a 640x360 yuv420p frame through `stage.upscale_planes` with the model (hat-tiny-x2 by
default), then the temporal filter alone on the 1280x720 output planes of consecutive frames.
Reports the best of --repeat for each and the filter's share of the model's time.

Quality: `hatstream eval-video`'s scoring (`score_clip`) on --frames consecutive frames of each
--clip, plus the per-frame and the one-pass-vs-reset-at-a-join numbers; optionally a PNG crop
(--picture) of one frame's moving edge, per-frame against --temporal on.

    .venv/bin/python benchmarks/bench_temporal.py --cost
    .venv/bin/python benchmarks/bench_temporal.py --clip box.mp4 --start 100 --frames 40 --json-out box.json
    .venv/bin/python benchmarks/bench_temporal.py --clip cup.mp4 --start 60 --picture benchmarks/temporal_edge.png \
        --picture-frame 9 --picture-box 230 270 160 120 --picture-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatstream.commands.eval_video import format_table, read_clip, score_clip  # noqa: E402


def _cost(model_name: str, repeat: int, precision: str = "auto", backend: str | None = None) -> dict:
    """Model and filter per frame, alternating frame by frame so both see the same machine load."""
    import torch

    from hatstream.inference import load_model
    from hatstream.media.formats import ColourSpec, PlaneLayout
    from hatstream.pipeline.stage import FrameFormat, temporal_filter, upscale_planes

    # The defaults (precision and backend auto), as `hatstream upscale` runs them on this machine.
    model = load_model(model_name, device="cpu", precision=precision, backend=backend)
    fmt = FrameFormat(PlaneLayout.from_pix_fmt("yuv420p"), ColourSpec("bt709", False))
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:640]
    steady = temporal_filter(fmt, model.scale)
    model_s, filter_s = [], []
    for t in range(repeat + 2):  # a gradient panning 3 px per frame, with fine noise: real work for DIS
        luma = 40 + 0.2 * ((x + 3 * t) % 640) + 60 * np.sin((x + 3 * t) / 17.0) * np.cos(y / 23.0)
        planes = (np.clip(luma + rng.normal(0, 3, luma.shape), 16, 235).astype(np.uint8),
                  np.full((180, 320), 128, np.uint8), np.full((180, 320), 128, np.uint8))
        start = time.perf_counter()
        out = upscale_planes([planes], model, fmt, fmt)[0]
        middle = time.perf_counter()
        steady(out)
        end = time.perf_counter()
        if t >= 2:  # frame 0: warm-up; frame 1: the filter's first with a previous frame
            model_s.append(middle - start)
            filter_s.append(end - middle)
    best_model, best_filter = min(model_s), min(filter_s)
    dtype = getattr(model, "dtype", None)
    return {"model": model.info.name, "precision": str(dtype), "backend": getattr(model, "backend", "torch"),
            "threads": torch.get_num_threads(),
            "model_s": model_s, "filter_s": filter_s, "best_model_s": best_model, "best_filter_s": best_filter,
            "extra": best_filter / best_model,
            "extra_median": float(np.median(np.array(filter_s) / np.array(model_s)))}


def _picture(frames, scale: int, model_name: str, index: int, box: tuple[int, int, int, int], path: Path) -> None:
    """Crop `box` (x, y, w, h in output pixels) of frame `index`: original, per-frame, --temporal on."""
    import cv2

    from hatstream.inference import load_model
    from hatstream.metrics.quality import rgb_to_y
    from hatstream.pipeline.temporal import TemporalFilter
    from hatstream.train.evaluate import degrade, model_upscale

    model = load_model(model_name, device="cpu", precision="fp32")
    steady = TemporalFilter(scale, 255)
    hr = per = tf = None
    for t, rgb in enumerate(frames[:index + 1]):
        h, lr = degrade(rgb, scale)
        y = rgb_to_y(model_upscale(model, lr))
        out = steady([y])[0]
        if t == index:
            hr, per, tf = rgb_to_y(h), y, out
    x0, y0, w, h = box
    tiles = [np.clip(img[y0:y0 + h, x0:x0 + w], 0, 255).astype(np.uint8) for img in (hr, per, tf)]
    tiles = [cv2.resize(t, (w * 3, h * 3), interpolation=cv2.INTER_NEAREST) for t in tiles]
    labelled = []
    for tile, label in zip(tiles, ("original", "per-frame", "--temporal on")):
        tile = cv2.copyMakeBorder(tile, 22, 4, 4, 4, cv2.BORDER_CONSTANT, value=255)
        cv2.putText(tile, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        labelled.append(tile)
    cv2.imwrite(str(path), np.hstack(labelled))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cost", action="store_true", help="time the model and the filter at 640x360")
    p.add_argument("--clip", type=Path, nargs="*", default=[], help="clips to score")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--model", default="hat-tiny-x2")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--precision", default="auto", help="for --cost (default auto, as the CLI)")
    p.add_argument("--backend", help="for --cost (default: $HATSTREAM_BACKEND, else auto, as the CLI)")
    p.add_argument("--picture", type=Path, help="write a PNG crop of a moving edge (first --clip)")
    p.add_argument("--picture-frame", type=int, default=10)
    p.add_argument("--picture-box", type=int, nargs=4, default=(0, 0, 160, 120), metavar=("X", "Y", "W", "H"))
    p.add_argument("--picture-only", action="store_true", help="write the picture without scoring the clips")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    report: dict = {}
    if args.cost:
        report["cost"] = c = _cost(args.model, args.repeat, args.precision, args.backend)
        print(f"{c['model']} 640x360, {c['precision']} ({c['backend']}), {c['threads']} threads: model {c['best_model_s']:.3f} s/frame, "
              f"filter {c['best_filter_s']:.3f} s/frame (+{100 * c['extra']:.1f} % of best, "
              f"median per frame +{100 * c['extra_median']:.1f} %)")
    if args.clip:
        from hatstream.inference import load_model
        model = load_model(args.model, device="cpu", precision="fp32")
    for clip in [] if args.picture_only else args.clip:
        frames = read_clip(clip, args.start, args.frames)
        scores = score_clip(frames, model.scale, model)
        print(format_table(f"{clip.name}, frames {args.start}-{args.start + len(frames) - 1}, {frames[0].shape[1]}x"
                           f"{frames[0].shape[0]}, {model.info.name}", scores))
        report.setdefault("clips", {})[clip.name] = [asdict(s) for s in scores]
    if args.picture and args.clip:
        frames = read_clip(args.clip[0], args.start, args.picture_frame + 1)
        _picture(frames, model.scale, args.model, args.picture_frame, tuple(args.picture_box), args.picture)
        print(f"wrote {args.picture}")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
