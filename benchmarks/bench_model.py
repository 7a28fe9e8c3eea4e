"""HAT forward speed against the reference implementation, on the same weights, in one process.

The reference is spandrel's HAT (it reproduces the official code bit for bit), loaded by
`reference.py`. Both run a released layout (HAT-S x4 by default; `layouts.py`), filled with
deterministic random weights (no released weights are needed), on 64x64 and 128x128 inputs by
default. Reports seconds per forward (best and median of --repeat, after --warmup calls), frames
per second, the speed-up over the reference, and our output's PSNR against the reference's fp32 output.

    .venv/bin/python benchmarks/bench_model.py [--sizes 64 128] [--arch HAT-S_SRx4] [--json]
    python3 benchmarks/bench_model.py --device cuda --sizes 960x540 --precisions fp32 bf16 fp16 \\
        --reference bf16 --repeat 5 --json-out hat-s.json           # the GPU targets of issue 7

--reference picks the precision the reference is timed in: fp32; bf16 (the module cast with
.to(bfloat16), which spandrel >= 0.4.2 supports); autocast-bf16 (fp32 module under autocast); or
none (no reference: spandrel not needed, no speed-up or PSNR). The PSNR is always against the
reference in fp32, run once untimed.

--backends adds the exported graph run by ONNX Runtime and/or OpenVINO beside our torch path, in
each precision the runtime runs here (fp32; OpenVINO also bf16 with fp32 trunk on a native-bf16 CPU;
--precisions limits both), on the same weights, through the Upscaler's `backend=` (hatstream/inference/backends.py):
one export per size, cached in the user's graph cache, with as many threads as torch; the warm-up
turn takes the export (its time is reported as `<backend>_first_call_s`). `speedup_default` and
`psnr_default_db` repeat the row of the backend that hatstream picks by default (`default_backend`).
--model hat-tiny-x2 (or any built-in) benchmarks a bundled model's own weights instead of a layout.

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
import re
import statistics
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
SHORT_NAMES = {dt: n for n, dt in DTYPES.items()}
REFERENCE_MODES = ("fp32", "bf16", "autocast-bf16", "none")
BACKENDS = ("torch", "onnxruntime", "openvino")


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


def alternating_times(runners: dict, x: torch.Tensor, repeat: int, device: torch.device,
                      warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall times of each runner on `x`, the runners taking turns `repeat` times (after `warmup`
    untimed turns), so that a busy spell on a shared machine does not favour one.
    Returns (timed seconds per runner, seconds of each runner's first call)."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    first: dict[str, float] = {}
    for i in range(warmup + repeat):
        for key, fn in runners.items():
            sync(device)
            t = time.perf_counter()
            fn(x)
            sync(device)
            first.setdefault(key, time.perf_counter() - t)
            if i >= warmup:
                times[key].append(time.perf_counter() - t)
    return times, first


def best_of_alternating(runners: dict, x: torch.Tensor, repeat: int, device: torch.device,
                        warmup: int = 1) -> dict[str, float]:
    """Fastest wall time of each runner on `x`, timed in turns (`alternating_times`)."""
    return {k: min(v) for k, v in alternating_times(runners, x, repeat, device, warmup)[0].items()}


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


def installed_backends(device: torch.device) -> list[str]:
    """torch, plus the graph runtimes installed here (they run on the CPU only)."""
    from hatstream.inference.backends import backend_installed

    if device.type != "cpu":
        return ["torch"]
    return ["torch"] + [b for b in BACKENDS[1:] if backend_installed(b)]


def backend_runner(backend: str, state: dict, source: str, dtype: torch.dtype = torch.float32):
    """hatstream's Upscaler on the CPU with `backend` running the network in `dtype` (the graph is
    exported, or read from the graph cache, on its first call)."""
    return Upscaler(*build_from_state_dict({k: v.cpu() for k, v in state.items()}, source),
                    torch.device("cpu"), dtype, backend=backend)


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
    p.add_argument("--model", help="a built-in model (hat-tiny-x2, ...): its own weights instead of --arch's layout")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                   help="torch (our eager path) and/or the exported graph in onnxruntime / openvino "
                        "(default: every one installed)")
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
    source = args.model or args.arch
    if args.model:
        from hatstream.inference import load_network

        builtin, info = load_network(args.model)
        cfg = dict(info.hyperparameters)
        builtin_state = builtin.state_dict()
    else:
        cfg = released_config(args.arch)

    if args.reference == "none":
        ref, state = None, builtin_state if args.model else own_state(cfg)
        run_ref = None
    else:
        ref, state = build_reference(cfg, dev)
        if args.model:  # the bundled weights, not noise
            state = {k: v.to(dev) for k, v in builtin_state.items()}
            ref.load_state_dict(state)
        run_ref = reference_runner(ref, args.reference, dev)
    backends = args.backends or installed_backends(dev)
    # hatstream's default path, resolved by the function `hatstream run`'s load_model calls
    # (--precision auto, --backend auto).
    from hatstream.inference import resolve_run
    from hatstream.inference.backends import graph_dtypes

    probe_model, probe_info = build_from_state_dict({k: v.cpu() for k, v in state.items()}, source)
    default_dtype, default = resolve_run(probe_model, probe_info, dev, "auto", "auto")
    del probe_model
    names = list(args.precisions or default_precisions(dev)) if "torch" in backends else []
    precision_name = SHORT_NAMES[default_dtype]
    if default == "torch" and "torch" in backends and precision_name not in names:
        names.append(precision_name)
    ours = {DTYPES[n]: Upscaler(*build_from_state_dict({k: v.cpu() for k, v in state.items()}, source),
                                dev, DTYPES[n], backend="torch")
            for n in names}
    # Each graph runtime in every precision it runs here (OpenVINO: bf16 too, on a native-bf16 CPU).
    graph_names = set(args.precisions or DTYPES)
    graphs = {f"{b}_{dtype_name(dt)}": backend_runner(b, state, source, dt)
              for b in backends if b != "torch" for dt in graph_dtypes(b) if SHORT_NAMES[dt] in graph_names}

    g = torch.Generator().manual_seed(0)
    rows = []
    for size in args.sizes:
        w, h = width_height(size)
        x = torch.rand(args.batch, 3, h, w, generator=g).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        row = {"size": size_label(size)}
        # Every contender at this size, timed in turns (alternating), so that load on a shared
        # CPU hits them alike; each one's best time counts.
        runners: dict[str, object] = {}
        y_ref = None
        if ref is not None:
            with torch.inference_mode():
                y_ref = ref(x)  # fp32: the PSNR baseline, whatever precision is timed
            label = args.reference.replace("-", "_")
            runners[f"reference_{label}"] = torch.inference_mode()(run_ref)
        for dt, up in ours.items():
            runners[f"ours_{dtype_name(dt)}"] = up
        runners.update(graphs)
        all_times, first = alternating_times(runners, x, args.repeat, dev, args.warmup)
        times = {k: min(v) for k, v in all_times.items()}
        medians = {k: statistics.median(v) for k, v in all_times.items()}
        ref_key = f"reference_{args.reference.replace('-', '_')}"
        for key, t in times.items():
            row[f"{key}_s"] = t
            row[f"{key}_median_s"] = medians[key]
            row[f"{key}_fps"] = args.batch / t
            if key.startswith("reference"):
                continue
            name = key.removeprefix("ours_").removesuffix("_float32")
            if key in graphs:
                row[f"{key}_first_call_s"] = first[key]
            if ref_key in times:
                row[f"speedup_{name}"] = times[ref_key] / t
                row[f"speedup_{name}_median"] = medians[ref_key] / medians[key]
            if y_ref is not None:
                row[f"psnr_{name}_db"] = psnr(runners[key](x), y_ref)
        default_name = (dtype_name(default_dtype) if default == "torch" else
                        f"{default}{'' if default_dtype == torch.float32 else '_' + dtype_name(default_dtype)}")
        for k in (f"speedup_{default_name}", f"speedup_{default_name}_median", f"psnr_{default_name}_db"):
            if k in row:
                row[k.replace(default_name, "default")] = row[k]
        del runners
        row["load_average_1min"] = os.getloadavg()[0]  # a shared machine: how busy it was
        if dev.type == "cuda":
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        del x, y_ref
    meta = {"arch": source, "backends": backends, "default_backend": default,
            "default_precision": dtype_name(default_dtype),
            "load_average": os.getloadavg(),
            "cpu_flags": sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_bf16)\b", _cpuinfo()))),
            "device": str(dev), "torch": torch.__version__, "cpu": platform.processor(),
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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
