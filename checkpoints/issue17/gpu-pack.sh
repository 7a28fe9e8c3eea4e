#!/bin/sh
# HERE: copy issue 17's training and validation images into .issue17-data/samples (git-ignored), so that a
# device call can carry them to a lent GPU machine; then run checkpoints/issue17/gpu-train.sh THERE:
#
#   sh checkpoints/issue17/gpu-pack.sh            # SAMPLES=folder written by `python -m hatstream.train.samples`
#   run(command="sh checkpoints/issue17/gpu-train.sh", carry=[".issue17-data"], timeout_s=600)
#
# The test splits (samples/test, samples/test-video) never travel: nothing trains or selects on them.
set -eu
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
SAMPLES=${SAMPLES:-/work/runs/peers/samples}
DEST=$ROOT/.issue17-data/samples
rm -rf "$DEST"
mkdir -p "$DEST"
for split in pretrain debian extra video val val-video val-camera; do
    cp -r "$SAMPLES/$split" "$DEST/"
done
data=$(du -sb "$ROOT/.issue17-data" | cut -f1)
repo=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 stat -c %s) | awk '{s += $1} END {print s}')
echo "images: $((data / 1048576)) MiB, repo: $((repo / 1048576)) MiB, total $(((data + repo) / 1048576)) MiB of the 64 MiB carry"
[ $((data + repo)) -lt $((64 * 1048576)) ] || { echo "over the device's 64 MiB carry" >&2; exit 1; }
