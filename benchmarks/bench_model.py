"""HAT forward speed against the reference implementation, on the same weights, in one process.

The reference is spandrel's HAT (it reproduces the official code bit for bit), loaded by
`reference.py`. Both run a released layout (HAT-S x4 by default; `layouts.py`), filled with
deterministic random weights (no released weights are needed), on 64x64 and 128x128 inputs by
default. Reports seconds per forward (best of --repeat, after --warmup calls), frames per second,
the speed-up over the reference, and our output's PSNR against the reference's fp32 output.

    .venv/bin/python benchmarks/bench_model.py [--sizes 64 128] [--arch HAT-S_SRx4] [--json]
    python3 benchmarks/bench_model.py --device cuda --sizes 960x540 --precisions fp32 bf16 fp16 \\
        --reference bf16 --repeat 5 --json-out hat-s.json           # the GPU targets of issue 7

--reference picks the precision the reference is timed in: fp32; bf16 (the module cast with
.to(bfloat16), which spandrel >= 0.4.2 supports); autocast-bf16 (fp32 module under autocast); or
none (no reference: spandrel not needed, no speed-up or PSNR). The PSNR is always against the
reference in fp32, run once untimed.

hatstream's upscaler makes glibc keep freed memory (`hatstream/inference/heap.py`). That setting is
process-wide and would speed up the reference too, so it is off here by default and the speed-up
is our code's alone; --keep-freed-memory turns it on for both (what a hatstream process does).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from layouts import RELEASED, released_config  # noqa: E402

from hatstream.inference import Upscaler  # noqa: E402
from hatstream.inference.precision import cpu_has_native_bf16  # noqa: E402
from hatstream.models.registry import build_from_state_dict  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REFERENCE_MODES = ("fp32", "bf16", "autocast-bf16", "none")


def parse_size(text: str) -> int | tuple[int, int]:
    """'64' (a 64x64 square, reported as 64) or 'WxH' such as '960x540' (reported as '960x540')."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
            return (w, h)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is neither N nor WxH") from None


def width_height(size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a parsed size."""
    return (size, size) if isinstance(size, int) else size


def size_label(size: int | tuple[int, int]) -> int | str:
    """How a size appears in the output: N for squares given as N (as before), else 'WxH'."""
    return size if isinstance(size, int) else f"{size[0]}x{size[1]}"


def sync(device: torch.device) -> None:
    """Wait for the device: CUDA runs kernels asynchronously, so a timer read without this
    measures only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeat: int, device: torch.device = torch.device("cpu"), warmup: int = 1) -> float:
    """Fastest wall time of `repeat` calls, after `warmup` untimed calls, synchronising the device
    before and after each timed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (both clamped), computed in fp32."""
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()


def dtype_name(dt: torch.dtype) -> str:
    """'float32', 'bfloat16', 'float16': the key suffix the rows have always used."""
    return str(dt).replace("torch.", "")


def default_precisions(device: torch.device) -> list[str]:
    """fp32, plus bf16 where it runs natively (any GPU here; AMX/AVX512-BF16 CPUs)."""
    return ["fp32", "bf16"] if device.type == "cuda" or cpu_has_native_bf16() else ["fp32"]


def build_reference(cfg: dict, device: torch.device):
    """The reference module (fp32, eval) and its deterministically perturbed state dict.

    Every weight gets the same noise, so that no parameter is left at a trivial init value."""
    from reference import reference_hat_class

    torch.manual_seed(0)
    ref = reference_hat_class()(**cfg).eval().to(device)
    state = perturbed(ref.state_dict())
    ref.load_state_dict(state)
    return ref, state


def perturbed(state: dict) -> dict:
    """`state` with fixed noise (seed 0) added to every weight; the index buffers are kept."""
    g = torch.Generator().manual_seed(0)
    return {k: v if "index" in k else v + 0.02 * torch.randn(v.shape, generator=g).to(v.device)
            for k, v in state.items()}


def own_state(cfg: dict) -> dict:
    """Without a reference: the same kind of perturbed random weights, from hatstream's own HAT."""
    from hatstream.models.hat import HAT

    torch.manual_seed(0)
    return perturbed(HAT(**cfg).state_dict())


def reference_runner(ref, mode: str, device: torch.device):
    """A callable x -> reference output in the timed precision `mode` (see --reference)."""
    if mode == "fp32":
        return lambda x: ref(x)
    if mode == "bf16":
        import copy

        ref_bf16 = copy.deepcopy(ref).to(torch.bfloat16)
        return lambda x: ref_bf16(x.to(torch.bfloat16))
    if mode == "autocast-bf16":
        def run(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return ref(x)
        return run
    raise ValueError(mode)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print one line per size (and JSON on request)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="HAT-S_SRx4", choices=list(RELEASED))
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[64, 128], metavar="N|WxH",
                   help="input sizes: N for NxN, or WxH such as 960x540 (default: 64 128)")
    p.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=None,
                   help="our precisions (default: fp32, plus bf16 on a GPU or a CPU with native bf16)")
    p.add_argument("--reference", choices=REFERENCE_MODES, default="fp32",
                   help="precision the reference is timed in, or none (default: fp32)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (fps counts images)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--strict-attention", action="store_true",
                   help="fail instead of silently taking SDPA's slow math kernel (HATSTREAM_STRICT_ATTENTION)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="let glibc keep freed memory, for the reference as well (default: allocator untouched)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if args.strict_attention:
        os.environ["HATSTREAM_STRICT_ATTENTION"] = "1"  # read by each Upscaler when it is built
    if not args.keep_freed_memory:
        os.environ["HATSTREAM_KEEP_FREED_MEMORY"] = "0"  # read by the first Upscaler
    cfg = released_config(args.arch)

    if args.reference == "none":
        ref, state = None, own_state(cfg)
        run_ref = None
    else:
        ref, state = build_reference(cfg, dev)
        run_ref = reference_runner(ref, args.reference, dev)
    names = args.precisions or default_precisions(dev)
    ours = {DTYPES[n]: Upscaler(*build_from_state_dict({k: v.cpu() for k, v in state.items()}, args.arch),
                                dev, DTYPES[n])
            for n in names}

    g = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        w, h = width_height(size)
        x = torch.rand(args.batch, 3, h, w, generator=g).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        row = {"size": size_label(size)}
        y_ref = None
        if ref is not None:
            with torch.inference_mode():
                y_ref = ref(x)  # fp32: the PSNR baseline, whatever precision is timed
                t_ref = best_of(lambda: run_ref(x), args.repeat, dev, args.warmup)
            label = args.reference.replace("-", "_")
            row[f"reference_{label}_s"] = t_ref
            row[f"reference_{label}_fps"] = args.batch / t_ref
        for dt, up in ours.items():
            name = dtype_name(dt)
            t = best_of(lambda: up(x), args.repeat, dev, args.warmup)
            row[f"ours_{name}_s"] = t
            row[f"ours_{name}_fps"] = args.batch / t
            if y_ref is not None:
                row[f"speedup_{name}"] = t_ref / t
                row[f"psnr_{name}_db"] = psnr(up(x), y_ref)
        if dev.type == "cuda":
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        del x, y_ref
    meta = {"arch": args.arch, "device": str(dev), "torch": torch.__version__, "cpu": platform.processor(),
            "threads": torch.get_num_threads(), "native_bf16_cpu": cpu_has_native_bf16(),
            "reference": args.reference, "batch": args.batch, "repeat": args.repeat, "warmup": args.warmup,
            "strict_attention": args.strict_attention, "keep_freed_memory": args.keep_freed_memory}
    if dev.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(dev)
        meta["cuda"] = torch.version.cuda
    if ref is not None:
        with contextlib.suppress(Exception):  # the version is a note; a stubbed import has none
            meta["spandrel"] = importlib.metadata.version("spandrel")
    result = {"meta": meta, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
