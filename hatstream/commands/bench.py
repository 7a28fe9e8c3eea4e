"""Measure each stage's throughput (decode, upload, model, download, encode) on a synthetic clip.

Prints a table and writes the same figures as JSON (--json-out), with the model's achieved
TFLOP/s and, on known GPUs, the fraction of the bf16 peak.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hatstream.commands.common import add_model_arguments, check_output_file, write_json_file
from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--size", default="540p", help="360p, 540p, 720p, 1080p or WxH (input size)")
    p.add_argument("--frames", type=int, default=8, help="timed frames (one more is decoded for warm-up)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--codec", help="video encoder to time (default: run's, libx264 for 8-bit)")
    p.add_argument("--preset", help="encoder speed preset to time (default: run's, the encoder's own)")
    p.add_argument("--json-out", type=Path, default=Path("hatstream-bench.json"), help="where to write JSON")


def run(args: argparse.Namespace) -> int:
    from hatstream.inference import load_model
    from hatstream.media.encode import EncodeSettings
    from hatstream.pipeline.bench import check_bench_size, parse_size, run_bench

    try:
        width, height = parse_size(args.size)
    except ValueError as exc:
        raise HatstreamError(str(exc)) from None
    if args.frames < 1 or args.batch < 1:
        raise HatstreamError("--frames and --batch must be at least 1")
    if args.frames < args.batch:
        raise HatstreamError(f"--frames {args.frames} is less than --batch {args.batch}: no full batch would be "
                             f"timed; pass at least --frames {args.batch}")
    check_output_file(args.json_out, "--json-out")
    upscaler = load_model(args.model, device=args.device, precision=args.precision, scale=args.scale,
                          compile=args.compile, backend=args.backend)
    try:
        check_bench_size(width, height, upscaler.scale)
    except ValueError as exc:
        raise HatstreamError(str(exc)) from None
    result = run_bench(upscaler, width, height, frames=args.frames, batch=args.batch,
                       encode=EncodeSettings(codec=args.codec, preset=args.preset))
    print(f"{result.model} x{result.scale} on {result.device} ({result.dtype}), "
          f"{width}x{height} -> {width * result.scale}x{height * result.scale}, {result.frames} frames"
          + (f" in batches of {args.batch}" if args.batch > 1 else ""))
    for s in result.stages:
        fps = f"{s.fps:10.2f}" if s.fps is not None else f"{'n/a':>10}"
        print(f"  {s.name:<9} {fps} fps  {s.seconds / s.frames * 1000:9.1f} ms/frame")
    scaling = ", ".join(f"{e.threads} thread{'s' if e.threads > 1 else ''} {e.fps:.2f} fps"
                        for e in result.encoder_scaling if e.fps is not None)
    print(f"  encoder: {result.encoder}, {result.encoder_threads} thread(s) as run gives it here ({scaling})")
    _print_limit(result)
    if result.tflops is not None:
        line = f"  model: {result.tflops:.3f} TFLOP/s achieved"
        if result.fraction_of_peak is not None:
            line += f" ({result.fraction_of_peak:.1%} of {result.peak_tflops:.0f} TFLOP/s bf16 peak)"
        print(line)
    write_json_file(args.json_out, result.to_json(), indent=2)
    print(f"wrote {args.json_out}")
    return 0


def _print_limit(result) -> None:
    """Which stage bounds the run and, for the encoder, how many threads would let it keep up."""
    limit, needed = result.limit, result.encoder_threads_needed
    if limit is None:
        return
    model = next(s for s in result.stages if s.name == "model")
    line = f"  limit: {limit.name} at {limit.fps:.2f} fps"
    if needed is not None:
        keeps_up = (f"the encoder would keep up with the model's {model.fps:.2f} fps at about {needed} "
                    f"thread(s) ({result.fps_per_encoder_thread:.2f} fps per thread, the lowest measured)")
        if limit.name == "encode":
            line += f": {keeps_up}"
            if result.segment_workers_needed > 1:
                line += f", as --segment-workers {result.segment_workers_needed}"
            if needed > result.cores:
                line += f"; this machine has {result.cores} cores: a faster --preset, or more machines"
        else:
            line += f"; {keeps_up}"
    print(line)
