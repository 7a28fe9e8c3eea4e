"""Upscale PNG and JPEG images (8- or 16-bit; alpha is kept and upscaled bicubically).

One input and an output file name, or any number of inputs (files or folders) and an output folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hatstream.commands.common import add_model_arguments, stderr_is_terminal
from hatstream.errors import HatstreamError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (one input) or folder")
    add_model_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def plan_outputs(inputs: list[Path], output: Path) -> list[tuple[Path, Path]]:
    """Pair each input image with its output path; folders map to folders, names are kept."""
    from hatstream.imageio import IMAGE_EXTENSIONS

    pairs: list[tuple[Path, Path]] = []
    single_file = len(inputs) == 1 and inputs[0].is_file() and output.suffix.lower() in IMAGE_EXTENSIONS
    for src in inputs:
        if src.is_dir():
            files = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            pairs += [(f, output / src.name / f.relative_to(src)) if len(inputs) > 1 else (f, output / f.relative_to(src))
                      for f in files]
        elif src.is_file():
            pairs.append((src, output if single_file else output / src.name))
        else:
            raise HatstreamError(f"input {src} does not exist")
    if not pairs:
        raise HatstreamError("no PNG or JPEG images found in the inputs")
    # Two inputs with one name (a/x.png, b/x.png) would map to one output, and the second would
    # silently replace the first: refuse before any work.
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise HatstreamError(f"{seen[key]} and {src} would both be written to {dst}; "
                                 "upscale them into separate output folders")
        seen[key] = src
    return pairs


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from hatstream.atomic import check_output_path
    from hatstream.imageio import read_image, write_image
    from hatstream.inference import load_model

    pairs = plan_outputs(args.inputs, args.output)
    all_inputs = [src for src, _ in pairs]
    for _, dst in pairs:
        check_output_path(dst, all_inputs, overwrite=args.overwrite)
    upscaler = load_model(args.model, device=args.device, precision=args.precision, scale=args.scale,
                          compile=args.compile, backend=args.backend)
    log.info("model: %s", upscaler)
    s = upscaler.scale
    # Off a terminal the bar would be carriage-return noise; the line per image says as much.
    for src, dst in tqdm(pairs, unit="img", disable=len(pairs) < 2 or not stderr_is_terminal()):
        img = read_image(src)
        x = torch.from_numpy(img.rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
        rgb = upscaler(x)[0].permute(1, 2, 0).cpu().numpy()
        alpha = None
        if img.alpha is not None:
            import cv2

            h, w = img.alpha.shape
            alpha = cv2.resize(img.alpha, (w * s, h * s), interpolation=cv2.INTER_CUBIC)
        write_image(dst, rgb, alpha, img.bit_depth, img.grey, overwrite=args.overwrite, metadata=img.metadata)
        print(f"{src} -> {dst} ({img.rgb.shape[1]}x{img.rgb.shape[0]} -> {rgb.shape[1]}x{rgb.shape[0]})")
    return 0
