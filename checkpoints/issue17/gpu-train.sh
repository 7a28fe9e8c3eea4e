#!/bin/sh
# THERE, on a lent GPU machine (see gpu-pack.sh for the call): continue issue 17's training runs from the run
# folders committed beside this script, on CUDA, for at most BUDGET seconds of training in all, and put the
# updated run folders in $OUT (they come back with the call; copy them over checkpoints/issue17/ and commit).
#
# Each stage is the same run as on the CPU (same config.json, batch and seed, resumed exactly), so the
# chain can go on here or on a CPU from whatever this call reaches. TRAIN_DEVICE=cpu drops --gpu (to try
# the script on a machine without one).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/checkpoints/issue17
PY=${PY:-python3}
BUDGET=${BUDGET:-540}                 # the device allows 600 s per command; leave time for start and copy-out
OUT=${OUT:-/tmp/issue17-out}
GPU=--gpu
[ "${TRAIN_DEVICE:-cuda}" = cpu ] && GPU=
export PYTHONPATH=$ROOT
cd "$ROOT/.issue17-data"              # the runs' configs name their data as samples/..., relative to here
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
command -v nvidia-smi >/dev/null && nvidia-smi -L

# A committed run folder holds config.json, log.jsonl, training_state.pt and (but for stage W) net_g_latest.pth.
unpack() {
    if [ -d "$HERE/$1" ] && [ ! -d "$1" ]; then
        mkdir -p "$1/models"
        cp "$HERE/$1"/* "$1/"
        # Stage W commits no net_g_latest.pth (its training_state.pt holds the weights; the carry is tight).
        [ ! -f "$HERE/$1/net_g_latest.pth" ] || cp "$HERE/$1/net_g_latest.pth" "$1/models/"
    fi
}
pack() {
    [ -f "$1/training_state.pt" ] || return 0
    mkdir -p "$OUT/$1"
    cp "$1/config.json" "$1/log.jsonl" "$1/training_state.pt" "$OUT/$1/"
    cp "$1/models/net_g_latest.pth" "$OUT/$1/"
}
stage() {  # run folder, preset, init for a fresh start; prints the done event's "finished"
    unpack "$1"
    budget=$(left)
    if [ "$budget" -lt 30 ]; then echo "no time left for $1"; return 1; fi
    if [ -f "$1/training_state.pt" ]; then
        $PY -m hatstream train --resume --out "$1" $GPU --threads 4 --time-limit "$budget" --json > "$1.log"
    else
        $PY -m hatstream train --config "$ROOT/pipelines/$2" --init "$3" --out "$1" $GPU --threads 4 \
            --time-limit "$budget" --json > "$1.log"
    fi
    pack "$1"
    tail -1 "$1.log"
    tail -1 "$1.log" | grep -q '"finished": true'
}
# Stage A (x2-d8) is done: its EMA is the bundled hat-tiny-x2, where stage B starts. The x4 chain
# (x4-chain) is done too: the bundled hat-tiny-x4.
X2=$ROOT/hatstream/models/weights/hat-tiny-x2.safetensors
# Stage B (x2-d8-large) and the width-32 stages after it went flat; stage W (x2-w64, the bundled x2 at twice
# the width) is the one to continue, from its committed run folder.
stage x2-w64 train-hat-tiny-w64-x2.toml "$X2" || true
echo "trained for $(( $(date +%s) - START )) s; run folders in $OUT:"
ls -R "$OUT"
