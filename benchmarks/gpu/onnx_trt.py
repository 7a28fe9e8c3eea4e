"""TensorRT on the exported graph: export a checkpoint at one size, build an engine, time it, and
compare its output with hatstream's torch path on the same GPU.

    python benchmarks/gpu/onnx_trt.py CHECKPOINT --size 960x540 [--precision fp16|bf16|fp32] --json-out r.json

Uses `trtexec` when it is on PATH (engine build and timing), and ONNX Runtime's TensorRT execution
provider when `onnxruntime-gpu` is importable (timing and the PSNR against torch). Exits 3, saying
what is missing, when neither exists or the exporter (onnx, onnxscript) is not installed: the lent
GPU machine has none of them unless they were carried (see benchmarks/gpu/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    """Run the check; print one result line (and write JSON with --json-out)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--size", default="960x540", help="WxH")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/hatstream-trt"))
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    trtexec = shutil.which("trtexec")
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if missing or not (trtexec or has_ort):
        print(f"skipped: needs {' '.join(missing) or 'onnx ok'}; trtexec {'found' if trtexec else 'missing'}; "
              f"onnxruntime {'found' if has_ort else 'missing'}")
        return 3

    import torch

    from hatstream.inference import Upscaler, load_network
    from hatstream.inference.precision import DTYPES
    from hatstream.models.export import INPUT_NAME, export_onnx

    w, h = (int(v) for v in args.size.split("x"))
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"model-{args.size}-{args.precision}.onnx"
    t = time.perf_counter()
    model, info = load_network(args.checkpoint)
    export_onnx(model, path, w, h, dtype=DTYPES[args.precision])
    result = {"size": args.size, "precision": args.precision, "export_s": time.perf_counter() - t}
    if trtexec:
        # The graph is already typed (fp16/bf16 inside, fp32 at the edges): --stronglyTyped keeps it so.
        cmd = [trtexec, f"--onnx={path}", "--stronglyTyped", f"--iterations={args.repeat}", "--warmUp=1000"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        print("\n".join(out.stdout.splitlines()[-25:]))
        result["trtexec_rc"] = out.returncode
        for line in out.stdout.splitlines():
            if "GPU Compute Time" in line and "mean" in line:
                result["trtexec_gpu_compute"] = line.split("]")[-1].strip()
    if has_ort:
        import onnxruntime as ort

        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
        if providers:
            session = ort.InferenceSession(str(path), providers=providers)
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])  # engine build happens here
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                session.run(None, {INPUT_NAME: x.numpy()})
                times.append(time.perf_counter() - t)
            model, info = load_network(args.checkpoint)
            want = Upscaler(model, info, torch.device("cuda"), torch.float32)(x).cpu()
            mse = (got.double() - want.double()).pow(2).mean().item()
            result.update(ort_providers=session.get_providers(), ort_s=min(times),
                          psnr_vs_torch_fp32_db=10 * math.log10(1 / max(mse, 1e-20)))
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
