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
# Stage A (train-hat-tiny-d8-x2.toml, run folder x2-d8) is done: its EMA is the bundled hat-tiny-x2 (a fresh
# start of it grows the earlier model: git show d41895e:hatstream/models/weights/hat-tiny-x2.safetensors).
X2=$WT/hatstream/models/weights/hat-tiny-x2.safetensors
# x4 (train-hat-tiny-d8-x4-chain.toml, run folder x4-chain) is done: its iteration 3,000 is the bundled
# hat-tiny-x4, a chain of the bundled x2 and a second pass trained on its output (validation fell after 3,000).
# Stage B (x2-d8-large) went flat and is paused; like every width-32 stage after it (C, L2, S, K, KL). Stage W,
# the bundled x2 grown to twice the width (same output at the start), is the one under way.
stage train-hat-tiny-w64-x2.toml x2-w64 "$X2"
# x4 from x2 as one network (train-hat-tiny-d8-x4.toml) ran once and tied the earlier x4: not in the chain.
