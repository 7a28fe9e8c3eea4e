#!/usr/bin/env bash
# Every GPU check of hatstream in one device command, most valuable first, inside a time budget.
#
#   bash benchmarks/gpu/suite.sh              # all steps, in the order below
#   bash benchmarks/gpu/suite.sh ray-hat-s cpu-gpu-tests    # only these (e.g. a second call for the rest)
#
# Run THERE, on the lent GPU machine, from the repo root, carrying ".gpusite" (made here by
# benchmarks/gpu/pack.sh): see benchmarks/gpu/README.md for the exact call. Writes to $OUT:
#   suite.log     everything printed
#   results.json  versions, each step's exit status and time, and its parsed output
#   summary.md    the issue targets with the measured values and pass/MISS
# A step that fails or times out is recorded and the suite goes on. Each step has its own time cap,
# clipped to what is left of SUITE_BUDGET (seconds, default 540: the device allows 600 per command),
# so the suite always ends in time; steps that no longer fit are recorded as skipped.
#
# Knobs (environment), with the GPU defaults; benchmarks/gpu/README.md shows a tiny CPU smoke run:
#   SUITE_BUDGET=540 SUITE_DEVICE=cuda SUITE_SIZE=960x540 SUITE_PRECISION=bf16 SUITE_PRECISIONS="fp32 bf16 fp16"
#   SUITE_REFERENCE=bf16 SUITE_REPEAT=5 SUITE_FRAMES=96 SUITE_BENCH_FRAMES=48 PY=python3
#   SUITE_RAY_STOP=1 on cuda, else 0 (after Ray steps, `ray stop --force`: every Ray process of the machine)
set -uo pipefail  # no -e: a failing step must not end the suite

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
START=$SECONDS
BUDGET=${SUITE_BUDGET:-540}
RESERVE=15                     # seconds kept back for the final report
MIN_STEP=30                    # a step given less than this is skipped rather than started
DEVICE=${SUITE_DEVICE:-cuda}
SIZE=${SUITE_SIZE:-960x540}
PREC=${SUITE_PRECISION:-bf16}
PRECISIONS=${SUITE_PRECISIONS:-fp32 bf16 fp16}
REFERENCE=${SUITE_REFERENCE:-bf16}
REPEAT=${SUITE_REPEAT:-5}
FRAMES=${SUITE_FRAMES:-96}
BENCH_FRAMES=${SUITE_BENCH_FRAMES:-48}
PY=${PY:-python3}
RAY_STOP=${SUITE_RAY_STOP:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}
OUT=${OUT:-/tmp/hatstream-gpu-out}
WORK=${SUITE_WORK:-/tmp/hatstream-gpu}
STEPS=$WORK/steps
SITE_DIR=/tmp/gpusite          # where .gpusite/site.tar.xz unpacks (its root folder is gpusite/)
rm -rf "$STEPS"                # results of an earlier call on a still-warm machine came back with it
mkdir -p "$OUT" "$STEPS"
export PYTHONUNBUFFERED=1 PY WORK STEPS DEVICE SIZE PREC REPEAT FRAMES BENCH_FRAMES
# If the VM's /dev/shm is smaller than Ray's default object store, let Ray fall back to disk with a
# warning instead of refusing to start (versions.json records the /dev/shm size).
export RAY_OBJECT_STORE_ALLOW_SLOW_STORAGE=1
exec > >(tee "$OUT/suite.log") 2>&1
TEE_PID=$!

echo "=== hatstream GPU suite, $(date -u +%FT%TZ), budget ${BUDGET}s, device $DEVICE, size $SIZE"

# ---- setup: packages, fixtures, versions, inputs --------------------------------------------
# The site holds CPython 3.12 builds (the device's Python): never put it in front of another Python.
if [ -f .gpusite/site.tar.xz ] && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  if [ ! -d "$SITE_DIR/site" ]; then
    t0=$SECONDS
    if command -v xz >/dev/null; then
      timeout 120 tar -C "$(dirname "$SITE_DIR")" -xJf .gpusite/site.tar.xz || echo "!!! unpacking the site failed"
    else  # no xz program: Python's lzma reads it as well
      timeout 120 "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
        .gpusite/site.tar.xz "$(dirname "$SITE_DIR")" || echo "!!! unpacking the site failed"
    fi
    echo "unpacked .gpusite/site.tar.xz in $((SECONDS - t0))s"
  fi
  export PYTHONPATH="$SITE_DIR/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # ../shared does not travel; the fixtures tests/test_gpu.py needs came in the site.
  [ -d "$ROOT/../shared/fixtures" ] || export HATSTREAM_SHARED="$SITE_DIR/shared"
else
  echo "not using .gpusite (absent, or $PY is not Python 3.12): using $PY's own packages"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi
timeout 120 "$PY" benchmarks/gpu/suite_tools.py versions "$STEPS/versions.json" || echo "!!! versions failed"
t0=$SECONDS
timeout 120 "$PY" benchmarks/gpu/suite_tools.py prepare "$WORK" --size "$SIZE" --frames "$FRAMES" \
  || echo "!!! preparing checkpoints and the clip failed: the stages/run steps will fail"
echo "prepared inputs in $((SECONDS - t0))s"

# ---- the steps, most valuable first ---------------------------------------------------------
# name | time cap (s) | command (run by bash -c; its outputs go to $STEPS/<name>.{json,jsonl,xml})
STEP_LIST=(
  # Correctness on CUDA: fixtures in fp32 (fused attention enforced), bf16 and safe fp16.
  "gpu-tests|120|\$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py -k 'not compiled' --junitxml=\$STEPS/gpu-tests.xml"
  # Issue 7 headline: HAT-S x4 model-only fps in every precision, and the reference beside it.
  "model-hat-s|150|\$PY benchmarks/bench_model.py --device \$DEVICE --arch HAT-S_SRx4 --sizes \$SIZE --precisions $PRECISIONS --reference $REFERENCE --repeat \$REPEAT --warmup 2 --json-out \$STEPS/model-hat-s.json"
  "model-hat|150|\$PY benchmarks/bench_model.py --device \$DEVICE --arch HAT_SRx4 --sizes \$SIZE --precisions $PRECISIONS --reference $REFERENCE --repeat \$REPEAT --warmup 2 --json-out \$STEPS/model-hat.json"
  # Per-stage throughput and TFLOP/s, then the whole run on the same model: run vs model-only.
  "stages-hat-s|90|\$PY -m hatstream bench --model \$WORK/HAT-S_SRx4.pth --size \$SIZE --precision \$PREC --device \$DEVICE --frames \$BENCH_FRAMES --json-out \$STEPS/stages-hat-s.json"
  "run-hat-s|120|\$PY -m hatstream run \$WORK/clip.mp4 -o \$WORK/run.mp4 --model \$WORK/HAT-S_SRx4.pth --precision \$PREC --device \$DEVICE --json --overwrite > \$STEPS/run-hat-s.jsonl; rc=\$?; cat \$STEPS/run-hat-s.jsonl; exit \$rc"
  # Issue 4: Ray engine per GPU against the local engine.
  "ray-hat-s|180|\$PY benchmarks/bench_ray.py --device \$DEVICE --arch HAT-S_SRx4 --precision \$PREC --size \$SIZE --frames \$FRAMES --workers 1 --codec libx264 --preset ultrafast --json-out \$STEPS/ray-hat-s.json"
  "gpu-tests-compile|180|\$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py -k compiled --junitxml=\$STEPS/gpu-tests-compile.xml"
  "stages-hat|90|\$PY -m hatstream bench --model \$WORK/HAT_SRx4.pth --size \$SIZE --precision \$PREC --device \$DEVICE --frames \$BENCH_FRAMES --json-out \$STEPS/stages-hat.json"
  # The same run with the fastest x264 preset: how much of the gap (if any) is the encoder.
  "run-hat-s-ultrafast|90|\$PY -m hatstream run \$WORK/clip.mp4 -o \$WORK/run-ultrafast.mp4 --model \$WORK/HAT-S_SRx4.pth --precision \$PREC --device \$DEVICE --preset ultrafast --json --overwrite > \$STEPS/run-hat-s-ultrafast.jsonl; rc=\$?; cat \$STEPS/run-hat-s-ultrafast.jsonl; exit \$rc"
  "stages-hat-s-compile|180|\$PY -m hatstream bench --compile --model \$WORK/HAT-S_SRx4.pth --size \$SIZE --precision \$PREC --device \$DEVICE --frames \$BENCH_FRAMES --json-out \$STEPS/stages-hat-s-compile.json"
  # CPU-written tests whose code paths change where CUDA exists (default device, Ray GPU actors).
  "cpu-gpu-tests|150|\$PY -m pytest -q -p no:cacheprovider --timeout 90 tests/test_bench.py tests/test_run_video.py tests/test_ray_engine.py tests/test_tiling.py tests/test_precision.py tests/test_train.py::test_one_worker_trains_on_the_gpu_and_its_checkpoint_loads_on_the_cpu --junitxml=\$STEPS/cpu-gpu-tests.xml"
  # Issue 18: the exported graph (hatstream export, fp16 with the rescaled trunk) in TensorRT:
  # trtexec if on PATH, ONNX Runtime's TensorRT EP if onnxruntime-gpu is there; exit 3 = not available.
  "onnx-trt-hat-s|240|\$PY benchmarks/gpu/onnx_trt.py \$WORK/HAT-S_SRx4.pth --size \$SIZE --precision fp16 --json-out \$STEPS/onnx-trt-hat-s.json"
)

record() {  # name rc seconds timeout [skipped-reason]
  local skipped=null
  [ -n "${5:-}" ] && skipped="\"$5\""
  ORDER=$((ORDER + 1))
  printf '{"step": "%s", "rc": %s, "seconds": %s, "timeout": %s, "skipped": %s, "started": %s, "order": %s}\n' \
    "$1" "$2" "$3" "$4" "$skipped" "$((SECONDS - START - $3))" "$ORDER" > "$STEPS/$1.status.json"
}

report() { timeout 60 "$PY" benchmarks/gpu/suite_tools.py report "$WORK" "$OUT" >/dev/null || echo "!!! report failed"; }

ray_cleanup() {
  # A step cut off by its timeout can leave Ray's GCS, raylet and GPU actors behind. `ray stop`
  # ends every Ray process of the machine, so only where the machine is ours alone (the lent GPU
  # machine; SUITE_RAY_STOP=1), never on a shared one such as the dev machine.
  [ "$RAY_STOP" = 1 ] || return 0
  timeout 30 "$PY" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true
}

wanted() {  # is step $1 selected on the command line (all when none is)?
  [ ${#SELECTED[@]} -eq 0 ] && return 0
  local s
  for s in "${SELECTED[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

SELECTED=("$@")
ORDER=0
for s in "${SELECTED[@]}"; do
  printf '%s\n' "${STEP_LIST[@]}" | grep -q "^$s|" || echo "!!! unknown step '$s' (steps: $(printf '%s\n' "${STEP_LIST[@]}" | cut -d'|' -f1 | xargs))"
done
for entry in "${STEP_LIST[@]}"; do
  name=${entry%%|*}; rest=${entry#*|}; cap=${rest%%|*}; cmd=${rest#*|}
  wanted "$name" || continue
  left=$((BUDGET - (SECONDS - START) - RESERVE))
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt "$MIN_STEP" ]; then
    echo "=== skip $name: ${left}s left of the budget"
    record "$name" null 0 "$cap" "budget"
    continue
  fi
  echo "=== step $name (cap ${limit}s, $((SECONDS - START))s into the suite)"
  echo "\$ $cmd"
  t0=$SECONDS
  timeout -k 10 "$limit" bash -c "$cmd"
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  record "$name" "$rc" "$((SECONDS - t0))" "$limit"
  case $name in ray-*|cpu-gpu-tests) ray_cleanup ;; esac
  report
done

echo "=== done in $((SECONDS - START))s"
timeout 60 "$PY" benchmarks/gpu/suite_tools.py report "$WORK" "$OUT" || true
cat "$OUT/summary.md" 2>/dev/null
# Let tee write its last lines before the command returns and $OUT is collected.
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
