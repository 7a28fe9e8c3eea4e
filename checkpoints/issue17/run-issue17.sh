#!/bin/sh
# Issue 17's training chain, one stage after another, each resumable: rerun this script to continue.
# Run from anywhere; it works in /work/runs/peers (samples/ lives there) niced, with THREADS torch threads (default 1).
set -e
WT=${WT:-$(cd "$(dirname "$0")/../.." && pwd)}  # the checkout this script lives in
PY=${PY:-$WT/.venv/bin/python}
cd /work/runs/peers
THREADS=${THREADS:-1}  # torch threads; nice 19 leaves the cores to other work whenever it wants them
export OMP_NUM_THREADS=$THREADS PYTHONPATH=$WT
stage() {  # preset, run folder, init checkpoint for a fresh start
    # --resume reads the run's own config.json; --config is only for a fresh start.
    if [ -f "$2/training_state.pt" ]; then
        nice -n 19 $PY -m hatstream train --resume --out "$2" --threads "$THREADS"
    else
        nice -n 19 $PY -m hatstream train --config "$WT/pipelines/$1" --init "$3" --out "$2" --threads "$THREADS"
    fi
}
# Stage A grew the hat-tiny-x2 shipped until 2026-12-03 (the bundled one is now stage A's result), so a
# fresh start takes that file from git history.
[ -f x2-d8/training_state.pt ] || git -C "$WT" show d41895e:hatstream/models/weights/hat-tiny-x2.safetensors > x2-earlier.safetensors
stage train-hat-tiny-d8-x2.toml x2-d8 x2-earlier.safetensors
stage train-hat-tiny-d8-x2-large.toml x2-d8-large x2-d8/models/net_g_latest.pth
# x4 from x2 (train-hat-tiny-d8-x4.toml) ran once and tied the bundled x4: not in the chain. x4's next stage
# is a second x2 pass trained on the first pass's output (not built yet: benchmarks/RESULTS.md).
