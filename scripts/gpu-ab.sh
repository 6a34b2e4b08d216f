#!/usr/bin/env bash
# Runs ON the GPU machine (like scripts/gpu-run.sh, with .gpu/ carried): the GPU tests (and
# memcheck) with the opt-in flat dequantize kernel, then the 8B-shape bench at 8K tokens (batch 1
# and 8) four ways: as is, with whole-section staging (KVTC_STAGE_PIECE_KIB=0, the staging of run
# d), with KVTC_DEQUANT=flat, and with both; one call says which to keep as the default.
#   bash scripts/gpu-ab.sh        Results: $OUT/gpu-bench-{base,piece0,flat,flat-piece0}.json
# Environment: REPS (default 3), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
KVTC_DEQUANT=flat SANITIZERS=memcheck bash scripts/gpu-run.sh test
for variant in "base:" "piece0:KVTC_STAGE_PIECE_KIB=0" "flat:KVTC_DEQUANT=flat" \
  "flat-piece0:KVTC_DEQUANT=flat KVTC_STAGE_PIECE_KIB=0"; do
  tag=${variant%%:*}
  # shellcheck disable=SC2086  # the variant's settings are words for env
  env ${variant#*:} REPS="${REPS:-3}" BENCH_SHAPES=8b BENCH_ARGS="--tokens 8192" BENCH_TAG="-$tag" \
    bash scripts/gpu-run.sh bench
done
