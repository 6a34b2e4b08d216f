#!/usr/bin/env bash
# Runs ON the GPU machine (like scripts/gpu-run.sh, with .gpu/ carried): the GPU tests and memcheck
# with a candidate setting, then the 8B-shape bench at 8K tokens (batch 1 and 8) without and with
# it, in separate processes of one call, so that one call says which to keep as the default.
#   bash scripts/gpu-ab.sh VAR=value [...]     e.g. bash scripts/gpu-ab.sh KVTC_PIN_RECORDS=1
# Results: $OUT/gpu-bench-base.json and $OUT/gpu-bench-ab.json. Environment: REPS (default 3), OUT,
# AB_TESTS=0 to skip the tests (when the candidate is the older, already tested path), AB_ARGS
# (the bench's flags, default "--tokens 8192"; e.g. "--tokens 32768 --batch 1").
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: bash scripts/gpu-ab.sh VAR=value [...]" >&2; exit 2; }
candidate=("$@")
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/ab"
if [ "${AB_TESTS:-1}" != 0 ]; then
  env "${candidate[@]}" OUT="$OUT/ab" SANITIZERS=memcheck bash scripts/gpu-run.sh test
fi
for tag in base ab; do
  settings=()
  [ "$tag" = ab ] && settings=("${candidate[@]}")
  env "${settings[@]}" REPS="${REPS:-3}" BENCH_SHAPES=8b BENCH_ARGS="${AB_ARGS:---tokens 8192}" BENCH_TAG="-$tag" \
    bash scripts/gpu-run.sh bench
done
