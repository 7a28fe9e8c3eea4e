"""What keeping super-whites costs in `stage.upscale_plane_tensors`, on the CPU, per frame.

A 640x360 limited-range yuv420p frame with a few super-white pixels (Y = 250) goes through the
stage with the bicubic model at x4 (2560x1440 out). Three timings, best of --repeat each:

- `none`: the same frame without super-whites (the residual is skipped);
- `old`: the earlier path: the RGB residual upscaled bicubically at the output size, three
  channels, added to the model's output before the conversion to planes;
- `new`: the residual converted to the planes' components at the input size and upscaled per
  output plane (one luma-sized plane and two chroma-sized ones), plus the clip count.

    .venv/bin/python benchmarks/bench_superwhite.py --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatstream.media.colour import planes_to_rgb, planes_to_tensors, rgb_to_planes  # noqa: E402
from hatstream.media.formats import ColourSpec, PlaneLayout  # noqa: E402
from hatstream.pipeline.stage import ClipCounter, FrameFormat, upscale_plane_tensors  # noqa: E402


def _old(planes, model, fmt):
    rgb = planes_to_rgb(planes, fmt.layout, fmt.colour)
    clipped = rgb.clamp(0.0, 1.0)
    excess = rgb.sub_(clipped)
    excess = excess if bool(excess.abs().amax() > 1e-4) else None
    up = model(clipped)
    if excess is not None:
        up = up.to(torch.float32) + F.interpolate(excess, size=up.shape[-2:], mode="bicubic", align_corners=False)
    return rgb_to_planes(up, fmt.layout, fmt.colour)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layout = PlaneLayout.from_pix_fmt("yuv420p")
    fmt = FrameFormat(layout, ColourSpec("bt709", False))
    rng = np.random.default_rng(0)
    y = rng.integers(16, 236, (360, 640), dtype=np.uint8)
    u = rng.integers(100, 156, (180, 320), dtype=np.uint8)
    v = rng.integers(100, 156, (180, 320), dtype=np.uint8)
    hot = y.copy()
    hot[100:110, 200:260] = 250  # a small specular highlight above reference white
    # Nearest-neighbour stands in for the model, so that the cost around it is what is timed.
    model = lambda x: F.interpolate(x, scale_factor=4, mode="nearest")  # noqa: E731
    cases = {
        "none": lambda: upscale_plane_tensors(planes_to_tensors([(y, u, v)]), model, fmt, fmt, torch.device("cpu")),
        "old": lambda: _old(planes_to_tensors([(hot, u, v)]), model, fmt),
        "new": lambda: upscale_plane_tensors(planes_to_tensors([(hot, u, v)]), model, fmt, fmt,
                                             torch.device("cpu"), ClipCounter()),
    }
    with torch.inference_mode():
        for name, fn in cases.items():
            fn()
            best = min(_timed(fn) for _ in range(args.repeat))
            print(f"{name:5s} {best * 1000:8.1f} ms/frame")
        out_old = _old(planes_to_tensors([(hot, u, v)]), model, fmt)
        out_new = upscale_plane_tensors(planes_to_tensors([(hot, u, v)]), model, fmt, fmt, torch.device("cpu"))
        for i, (a, b) in enumerate(zip(out_old, out_new)):
            diff = (a.to(torch.int32) - b.to(torch.int32)).abs()
            print(f"plane {i}: max |old - new| {int(diff.max())} code values, {float((diff > 0).float().mean()):.4%} differ")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
