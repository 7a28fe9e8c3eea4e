"""HAT forward speed against the reference implementation, on the same weights, in one process.

The reference is spandrel's HAT (it reproduces the official code bit for bit), loaded by
`reference.py`. Both run HAT-S x4 with the released layout, filled with deterministic random
weights (no released weights are needed), on 64x64 and 128x128 inputs. Reports seconds per
forward (best of --repeat), the speed-up, and our output's PSNR against the reference's fp32.

    .venv/bin/python benchmarks/bench_model.py [--sizes 64 128] [--arch HAT-S_SRx4] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import reference_hat_class  # noqa: E402

from hatstream.inference import Upscaler  # noqa: E402
from hatstream.inference.precision import cpu_has_native_bf16  # noqa: E402
from hatstream.models.registry import build_from_state_dict  # noqa: E402

LAYOUTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "hat" / "released_layouts.json"


def best_of(fn, repeat: int) -> float:
    """Fastest wall time of `repeat` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="HAT-S_SRx4")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    cfg = json.loads(LAYOUTS.read_text())[args.arch]["config"]

    torch.manual_seed(0)
    ref = reference_hat_class()(**cfg).eval().to(dev)
    g = torch.Generator().manual_seed(0)
    state = {k: v if "index" in k else v + 0.02 * torch.randn(v.shape, generator=g).to(v.device)
             for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    precisions = [torch.float32]
    if dev.type == "cuda" or cpu_has_native_bf16():
        precisions.append(torch.bfloat16)
    ours = {dt: Upscaler(*build_from_state_dict({k: v.cpu() for k, v in state.items()}, args.arch), dev, dt)
            for dt in precisions}

    rows = []
    for size in args.sizes:
        x = torch.rand(1, 3, size, size, generator=g).to(dev)
        with torch.inference_mode():
            y_ref = ref(x)
            t_ref = best_of(lambda: ref(x), args.repeat)
        row = {"size": size, "reference_fp32_s": t_ref}
        for dt, up in ours.items():
            name = str(dt).replace("torch.", "")
            t = best_of(lambda: up(x), args.repeat)
            row[f"ours_{name}_s"] = t
            row[f"speedup_{name}"] = t_ref / t
            row[f"psnr_{name}_db"] = psnr(up(x), y_ref)
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    meta = {"arch": args.arch, "device": str(dev), "torch": torch.__version__, "cpu": platform.processor(),
            "threads": torch.get_num_threads(), "native_bf16_cpu": cpu_has_native_bf16()}
    if dev.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(dev)
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
