"""PSNR/SSIM of a model against bicubic on a folder of HR images, as SR papers measure them.

Each HR image is cropped to a multiple of the scale and downscaled by MATLAB-compatible bicubic
(rounded to uint8); the model and OpenCV bicubic upscale that LR input; PSNR and SSIM are taken on
the BT.601 Y channel with `scale` pixels cropped from each border.
"""

from __future__ import annotations

import argparse
import sys

from hatstream.commands.common import add_model_arguments, check_output_file, write_json_file
from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `hatstream eval`."""
    add_model_arguments(p, model="built-in name (hat-tiny-x2, bicubic, ...) or checkpoint path; "
                                 "default: bundled for --scale")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders or files of HR images")
    p.add_argument("--json", metavar="PATH", help="also write the scores at full precision as JSON")


def format_table(title: str, rows: list, mean) -> str:
    """The table `hatstream eval` prints: per image and mean, bicubic and model side by side."""
    width = max([len("image")] + [len(r.name) for r in rows])
    head = f"{'image':<{width}}  {'bicubic PSNR':>12} {'SSIM':>7}  {'model PSNR':>10} {'SSIM':>7}  {'gain dB':>7}"
    lines = [title, head, "-" * len(head)]
    for r in rows + ["-", mean]:
        if r == "-":
            lines.append("-" * len(head))
            continue
        lines.append(f"{r.name:<{width}}  {r.bicubic_psnr:>12.3f} {r.bicubic_ssim:>7.4f}  {r.psnr:>10.3f} "
                     f"{r.ssim:>7.4f}  {r.psnr - r.bicubic_psnr:>+7.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score every image, print the table (and optionally write JSON)."""
    from dataclasses import asdict

    from hatstream.inference import load_model
    from hatstream.train.data import VIDEO_EXTS, list_sources, read_image
    from hatstream.train.evaluate import mean_score, score_image

    if args.json:
        check_output_file(args.json, "--json")
    upscaler = load_model(args.model, device=args.device, precision=args.precision, scale=args.scale,
                          compile=args.compile, backend=args.backend)
    scale = upscaler.scale
    files = [f for f in list_sources(args.data) if f.suffix.lower() not in VIDEO_EXTS]
    if not files:
        raise HatstreamError(f"no images found in {' '.join(args.data)}")
    rows = []
    for f in files:
        img = read_image(f)
        if min(img.shape[:2]) < scale * 12:
            raise HatstreamError(f"{f} is too small to score at x{scale} ({img.shape[1]}x{img.shape[0]})")
        rows.append(score_image(f.name, img, scale, upscaler))
    mean = mean_score(rows)
    title = f"{upscaler.info.name} x{scale} ({upscaler.dtype}, {upscaler.device}); Y channel, crop border {scale}"
    print(format_table(title, rows, mean))
    if args.json:
        out = {"model": str(args.model or "default"), "name": upscaler.info.name, "scale": scale,
               "images": [asdict(r) for r in rows], "mean": asdict(mean)}
        write_json_file(args.json, out)
    sys.stdout.flush()
    return 0
