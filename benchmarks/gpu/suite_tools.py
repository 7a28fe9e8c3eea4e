"""Helpers for benchmarks/gpu/suite.sh: prepare inputs, record versions, and report against the targets.

    python3 benchmarks/gpu/suite_tools.py prepare WORK --size 960x540 --frames 96
    python3 benchmarks/gpu/suite_tools.py versions WORK/steps/versions.json
    python3 benchmarks/gpu/suite_tools.py report WORK OUT

`report` reads what each step left in WORK/steps (its status file and its JSON, JSON-lines or JUnit
output) and writes OUT/results.json (everything, raw) and OUT/summary.md (the issue targets, each
with its measurement and a verdict). suite.sh runs it after every step, so a suite cut off by its
time limit still leaves a report of the steps that finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The issue targets the suite measures (issue 4: Ray engine; issue 7: GPU speed).
TARGETS = {
    "hat_s_bf16_fps": 15.0,     # HAT-S x4, 960x540 in, bf16, model only
    "hat_bf16_fps": 8.0,        # HAT x4, same
    "run_vs_model": 0.90,       # hatstream run end to end against the model alone
    "ray_per_gpu_vs_local": 0.95,
}


# ---- prepare ----------------------------------------------------------------------------------

def prepare(work: Path, size: str, frames: int, layouts: list[str]) -> None:
    """Random-weight checkpoints of `layouts` and a `size` H.264 clip of `frames` frames, in `work`."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from bench_pipeline import make_clip
    from layouts import save_random_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    for name in layouts:
        print(save_random_checkpoint(name, work / f"{name}.pth"), flush=True)
    width, height = (int(v) for v in size.lower().split("x"))
    print(make_clip(work / "clip.mp4", frames, width, height), flush=True)


# ---- versions ---------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - a missing or broken package is itself the finding
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]


def versions() -> dict:
    """Python, torch/CUDA/GPU, av (and its FFmpeg), ray, spandrel, and nvidia-smi's view of the card."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "av": _version("av"), "ray": _version("ray"),
            "numpy": _version("numpy")}
    try:
        import importlib.metadata

        info["spandrel"] = importlib.metadata.version("spandrel")
    except Exception:  # noqa: BLE001
        info["spandrel"] = None
    try:
        import av

        info["ffmpeg"] = getattr(av, "ffmpeg_version_info", None)
        info["libavcodec"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    except Exception:  # noqa: BLE001 - already reported as unavailable above
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    try:
        q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    info["cpus"] = os.cpu_count()
    try:  # Ray's object store lives in /dev/shm; a small one sends it to slower storage
        info["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    except OSError:
        info["dev_shm_gib"] = None
    try:  # the device's copy of the tree may have no .git
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# ---- report -----------------------------------------------------------------------------------

def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict | None:
    """Counts and the failing tests (with the start of their message) from a pytest JUnit file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind,
                               "message": (el.get("message") or el.text or "")[:1500]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def _run_fps(path: Path) -> dict | None:
    """From `hatstream run --json` output: steady fps (first to last progress event) and the done event."""
    try:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    except (OSError, ValueError):
        return None
    progress = [e for e in events if e.get("event") == "progress"]
    done = next((e for e in events if e.get("event") == "done"), None)
    steady = None
    if len(progress) >= 2 and progress[-1]["elapsed"] > progress[0]["elapsed"]:
        steady = (progress[-1]["frames"] - progress[0]["frames"]) / (progress[-1]["elapsed"] - progress[0]["elapsed"])
    return {"steady_fps": steady, "done": done, "progress_events": len(progress)}


def _stage_fps(bench: dict | None, stage: str) -> float | None:
    if not bench:
        return None
    return next((s["fps"] for s in bench.get("stages", []) if s["name"] == stage), None)


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "pass" if value >= target else "MISS"


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def report(work: Path, out: Path) -> dict:
    """Gather every step's result into OUT/results.json and OUT/summary.md; returns the results."""
    steps_dir = work / "steps"
    found = [s for s in (_load_json(f) for f in steps_dir.glob("*.status.json")) if s]
    status = {s["step"]: s for s in sorted(found, key=lambda s: s.get("order") or 0)}
    data: dict = {"versions": _load_json(steps_dir / "versions.json"), "steps": status, "results": {}}
    res = data["results"]
    for name in status:
        for suffix, reader in ((".json", _load_json), (".xml", _junit), (".jsonl", _run_fps)):
            path = steps_dir / f"{name}{suffix}"
            if path.exists():
                res[name] = reader(path)
    data["targets"] = checks = _checks(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(_markdown(data))
    return data


def _model_row(res: dict, step: str) -> dict:
    rows = (res.get(step) or {}).get("rows") or []
    return rows[0] if rows else {}


def _checks(res: dict) -> list[dict]:
    """One entry per issue target (and the informational figures beside them)."""
    checks = []
    for step, arch, key in (("model-hat-s", "HAT-S x4", "hat_s_bf16_fps"), ("model-hat", "HAT x4", "hat_bf16_fps")):
        row = _model_row(res, step)
        label = f"{arch} {row.get('size', '960x540')} bf16, model only (eager, bench_model)"
        fps = row.get("ours_bfloat16_fps")
        checks.append({"check": label, "issue": 7, "target": f">= {TARGETS[key]:g} fps", "value": fps,
                       "shown": _fmt(fps, ".2f", " fps"), "verdict": _verdict(fps, TARGETS[key])})
        extra = []
        for name, short in (("float32", "fp32"), ("float16", "fp16-safe")):
            if f"ours_{name}_fps" in row:
                db = row.get(f"psnr_{name}_db")
                extra.append(f"{short} {row[f'ours_{name}_fps']:.2f} fps" + (f" (PSNR {db:.1f} dB)" if db else ""))
        ref = next((k for k in row if k.startswith("reference_") and k.endswith("_fps")), None)
        if ref:
            extra.append(f"reference (eager {ref[len('reference_'):-len('_fps')]}) {row[ref]:.2f} fps")
            if "speedup_bfloat16" in row:
                extra.append(f"ours bf16 / reference: {row['speedup_bfloat16']:.2f}x")
        if "psnr_bfloat16_db" in row:
            extra.append(f"bf16 PSNR vs reference fp32 {row['psnr_bfloat16_db']:.1f} dB")
        if extra:
            checks.append({"check": f"{arch}: other precisions, reference", "issue": 7,
                           "target": "info", "value": None, "shown": "; ".join(extra), "verdict": "info"})

    stages = res.get("stages-hat-s")
    model_fps = _stage_fps(stages, "model")
    if stages:
        shown = ", ".join(f"{s['name']} {s['fps']:.1f}" for s in stages.get("stages", []))
        if stages.get("tflops"):
            shown += f"; model {stages['tflops']:.1f} TFLOP/s"
            if stages.get("fraction_of_peak"):
                shown += f" ({stages['fraction_of_peak']:.1%} of bf16 peak)"
        what = f"{stages.get('width')}x{stages.get('height')} {stages.get('dtype')}"
        checks.append({"check": f"hatstream bench HAT-S {what}: fps per stage", "issue": 7, "target": "info",
                       "value": model_fps, "shown": shown, "verdict": "info"})
    for step, label in (("run-hat-s", "hatstream run HAT-S (default encoder), steady fps vs bench's model stage"),
                        ("run-hat-s-ultrafast", "hatstream run HAT-S, x264 ultrafast, steady fps vs model stage")):
        run = res.get(step)
        if run is None and step != "run-hat-s":
            continue
        steady = (run or {}).get("steady_fps")
        ratio = steady / model_fps if steady and model_fps else None
        shown = (f"{_fmt(ratio, '.1%')} ({_fmt(steady, '.2f')} fps steady vs {_fmt(model_fps, '.2f')} model-only; "
                 f"whole run {_fmt(((run or {}).get('done') or {}).get('fps'), '.2f')} fps)")
        checks.append({"check": label, "issue": 7, "target": ">= 90%", "value": ratio, "shown": shown,
                       "verdict": _verdict(ratio, TARGETS["run_vs_model"])})
    compiled = res.get("stages-hat-s-compile")
    if compiled:
        fps = _stage_fps(compiled, "model")
        checks.append({"check": f"hatstream bench --compile HAT-S {compiled.get('dtype')}, model stage", "issue": 7,
                       "target": f">= {TARGETS['hat_s_bf16_fps']:g} fps", "value": fps,
                       "shown": f"{_fmt(fps, '.2f', ' fps')}; {_fmt(compiled.get('tflops'), '.1f')} TFLOP/s",
                       "verdict": _verdict(fps, TARGETS["hat_s_bf16_fps"])})
    stages_hat = res.get("stages-hat")
    if stages_hat:
        checks.append({"check": f"hatstream bench HAT {stages_hat.get('dtype')}, model stage", "issue": 7,
                       "target": "info",
                       "value": _stage_fps(stages_hat, "model"),
                       "shown": f"{_fmt(_stage_fps(stages_hat, 'model'), '.2f', ' fps')}; "
                                f"{_fmt(stages_hat.get('tflops'), '.1f')} TFLOP/s", "verdict": "info"})

    ray = res.get("ray-hat-s")
    ratio, shown, what = None, "—", ""
    if ray:
        what = f" ({ray.get('model')} {ray.get('size')} {ray.get('precision')}, {ray.get('codec')})"
        rows = ray.get("results", [])
        local = next((r for r in rows if r["engine"].startswith("local")), {})
        remote = next((r for r in rows if r["engine"].startswith("ray") and "skipped" not in r), {})
        ratio = remote.get("per_gpu_vs_local")
        shown = (f"{_fmt(ratio, '.1%')} (Ray {_fmt(remote.get('steady_fps'), '.2f')} fps vs local "
                 f"{_fmt(local.get('steady_fps'), '.2f')} fps steady; identical {remote.get('identical')}, "
                 f"max diff {remote.get('max_diff')})")
    checks.append({"check": f"Ray engine per GPU vs local engine{what}", "issue": 4, "target": ">= 95%",
                   "value": ratio, "shown": shown, "verdict": _verdict(ratio, TARGETS["ray_per_gpu_vs_local"])})

    for step, label in (("gpu-tests", "tests/test_gpu.py (eager)"),
                        ("gpu-tests-compile", "tests/test_gpu.py (compile)"),
                        ("cpu-gpu-tests", "CPU tests on the GPU machine (subset)")):
        t = res.get(step)
        if t is None:
            continue
        ok = t["failures"] == 0 and t["errors"] == 0 and t["passed"] > 0
        checks.append({"check": label, "issue": None, "target": "all pass", "value": t["passed"],
                       "shown": f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                                f"{t['skipped']} skipped", "verdict": "pass" if ok else "FAIL"})
    return checks


def _markdown(data: dict) -> str:
    v = data.get("versions") or {}
    lines = ["# GPU suite results", ""]
    if v:
        lines.append(f"Card: {v.get('gpu', '?')} ({v.get('nvidia_smi', '?')}); python {v.get('python')}, "
                     f"torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}), av {v.get('av')}, "
                     f"ray {v.get('ray')}, spandrel {v.get('spandrel')}, {v.get('cpus')} CPUs.")
        lines.append("")
    lines += ["| check | issue | target | measured | verdict |", "|---|---|---|---|---|"]
    for c in data["targets"]:
        lines.append(f"| {c['check']} | {c['issue'] or ''} | {c['target']} | {c['shown']} | {c['verdict']} |")
    lines += ["", "| step | exit | seconds | timeout |", "|---|---|---|---|"]
    for name, s in data["steps"].items():
        if s.get("skipped"):
            exit_ = f"skipped ({s['skipped']})"
        else:
            exit_ = f"{s.get('rc')}{' (timed out)' if s.get('rc') in (124, 137) else ''}"
        lines.append(f"| {name} | {exit_} | {s.get('seconds')} | {s.get('timeout')} |")
    for name, r in data["results"].items():
        for f in (r or {}).get("failed", []) if isinstance(r, dict) else []:
            lines += ["", f"**{name}: {f['test']}** ({f['kind']}): `{f['message'][:400]}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch the subcommands."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("work", type=Path)
    a.add_argument("--size", default="960x540")
    a.add_argument("--frames", type=int, default=96)
    a.add_argument("--layouts", nargs="+", default=["HAT-S_SRx4", "HAT_SRx4"])
    b = sub.add_parser("versions")
    b.add_argument("out", type=Path)
    c = sub.add_parser("report")
    c.add_argument("work", type=Path)
    c.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.work, args.size, args.frames, args.layouts)
    elif args.cmd == "versions":
        info = versions()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=2))
        print(json.dumps(info, indent=2))
    else:
        data = report(args.work, args.out)
        for c in data["targets"]:
            print(f"{c['verdict']:>12}  {c['check']}: {c['shown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
