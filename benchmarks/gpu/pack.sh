#!/usr/bin/env bash
# Build .gpusite/site.tar.xz: the Python packages the GPU checks need that the lent GPU machine lacks
# (PyAV, Ray core, jsonschema and its needs, spandrel), plus the shared HAT fixtures that
# tests/test_gpu.py reads, packed small enough to travel in the device's 64 MiB working-tree carry.
#
# Run HERE (needs PyPI), from anywhere inside the repo:   bash benchmarks/gpu/pack.sh
# Then the device call carries ".gpusite" and runs benchmarks/gpu/suite.sh (see benchmarks/gpu/README.md).
#
# The device runs CPython 3.12 on x86-64 (torch 2.11+cu130 in /opt/torch/.venv), so wheels are fetched
# for that interpreter whatever Python runs this script. Environment overrides:
#   PY=python          the interpreter whose pip downloads/installs (default: the repo's .venv)
#   RAY_VERSION=2.60.0 Ray to pack (default: the version the repo's .venv runs, so the GPU checks
#                      exercise what was tested here)
#   SHARED=../shared   where the fixtures come from
#   CHECK_PY=python3.12  if set to a CPython 3.12, the packed site is smoke-tested with it (ray.init,
#                        a task, an av encode) before packing; needs that Python to have Ray's deps
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-2.60.0}
SHARED=${SHARED:-$ROOT/../shared}
LIMIT_MIB=64
# Pinned to what the dev venv runs (pip list there), so the device tests the same code paths.
PACKAGES=(
  "av==18.1.0"
  "ray==$RAY_VERSION"
  "jsonschema==4.26.0" "jsonschema-specifications==2025.9.1" "referencing==0.37.0" "rpds-py==2026.9.1"
  "spandrel==0.4.2"
)
# Fixtures tests/test_gpu.py and tests/test_bench.py read (via HATSTREAM_SHARED on the device).
FIXTURES=(fixtures/hat/small_x4_w16.pt fixtures/hat/hatdim30_x4.pt fixtures/hat/released_layouts.json)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

CACHE=$ROOT/.gpusite-cache       # downloaded wheels, kept between runs (git-ignored, never carried)
OUTDIR=$ROOT/.gpusite            # what travels: site.tar.xz only
BUILD=$(mktemp -d /tmp/gpusite-build.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$CACHE" "$OUTDIR"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

echo "== download (cp312 manylinux x86_64) into $CACHE"
nice -n 10 "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$CACHE" "${PACKAGES[@]}"

echo "== install into a site folder"
SITE=$BUILD/gpusite/site
# --no-compile: bytecode made by this (maybe other-version) Python would be useless there.
nice -n 10 "$PY" -m pip install -q --no-deps --no-index --find-links "$CACHE" --no-compile "${TARGET[@]}" \
  --target "$SITE" "${PACKAGES[@]}"
echo "installed: $(mib "$(du -sb "$SITE" | cut -f1)")"

echo "== slim"
# Not needed by hatstream's inference, Ray engine or tests: Java workers (30 MB), RLlib, Serve, the LLM
# library, the dashboard's web UI (the suite starts Ray without a dashboard), console scripts.
rm -rf "$SITE"/ray/jars "$SITE"/ray/rllib "$SITE"/ray/serve "$SITE"/ray/llm "$SITE"/ray/dashboard/client/build \
       "$SITE"/bin
find "$SITE" -name '__pycache__' -type d -prune -exec rm -rf {} +
# Ray's three big binaries carry full symbol tables; strip keeps the dynamic symbol table that
# loading and linking use, and drops debug info and static symbols (--strip-unneeded).
BIG=(ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server)
for f in "${BIG[@]}"; do
  before=$(stat -c %s "$SITE/$f")
  nice -n 10 strip --strip-unneeded "$SITE/$f"
  # A stripped file must still be an ELF of the same kind, with its dynamic section intact.
  file -b "$SITE/$f" | grep -q '^ELF 64-bit LSB .*x86-64' || { echo "strip broke $f" >&2; exit 1; }
  readelf -d "$SITE/$f" | grep -q NEEDED || { echo "strip lost the dynamic section of $f" >&2; exit 1; }
  echo "  $f: $(mib "$before") -> $(mib "$(stat -c %s "$SITE/$f")")"
done
echo "slimmed: $(mib "$(du -sb "$SITE" | cut -f1)")"

echo "== fixtures from $SHARED"
for f in "${FIXTURES[@]}"; do
  mkdir -p "$BUILD/gpusite/shared/$(dirname "$f")"
  cp "$SHARED/$f" "$BUILD/gpusite/shared/$f"
done

if [ -n "${CHECK_PY:-}" ]; then
  echo "== smoke test with $CHECK_PY ($("$CHECK_PY" --version 2>&1))"
  # The stripped Ray must still start its GCS and raylet and run a task; av must encode a frame.
  PYTHONPATH="$SITE" RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 timeout 180 nice -n 10 "$CHECK_PY" - <<'EOF'
import io, ray, av, numpy  # numpy: av's from_ndarray needs it
ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
@ray.remote
def square(x):
    return x * x
assert ray.get(square.remote(7)) == 49
print("ray", ray.__version__, "ran a task on", ray.nodes()[0]["NodeManagerAddress"])
ray.shutdown()
buf = io.BytesIO()
with av.open(buf, "w", format="mp4") as c:
    s = c.add_stream("libx264", rate=25); s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    f = av.VideoFrame.from_ndarray(numpy.zeros((48, 64, 3), numpy.uint8), format="rgb24"); f.pts = 0
    c.mux(s.encode(f)); c.mux(s.encode())
print("av", av.__version__, "encoded", len(buf.getvalue()), "bytes")
import importlib.util, jsonschema  # noqa: E401,F401 - spandrel imports torch, which this check lacks
assert importlib.util.find_spec("spandrel") is not None
EOF
fi

echo "== pack .gpusite/site.tar.xz"
rm -f "$OUTDIR"/site.tar.xz
# -T1: one xz thread, to stay light on a shared machine; -9e buys a few MiB at the same decode cost.
tar -C "$BUILD" --owner=0 --group=0 --sort=name -cf - gpusite | nice -n 10 xz -T1 -9e > "$OUTDIR/site.tar.xz.part"
mv "$OUTDIR/site.tar.xz.part" "$OUTDIR/site.tar.xz"
site=$(stat -c %s "$OUTDIR/site.tar.xz")

# What a device call sends: tracked + untracked-not-ignored files, shared/ inside the repo, carried paths.
repo=$( { git ls-files -z --cached --others --exclude-standard; if [ -d shared ]; then find shared -type f -print0; fi; } \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$((repo + site))
echo "site.tar.xz:        $(mib "$site")"
echo "repo (carried):     $(mib "$repo")"
echo "total with .gpusite: $(mib "$total") of $LIMIT_MIB MiB"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
  echo "over the device's $LIMIT_MIB MiB carry limit" >&2
  exit 1
fi
