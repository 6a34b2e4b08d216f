#!/usr/bin/env bash
# Call 2 of 2026-11-30b: Nsight Compute per kernel, 8B 8K encode + decode, with the branch's
# defaults (paired row kernels, small-group tiles) and with both switched back (vector, threads),
# in one call (call 1's ncu CSV did not come back: too many files).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
ncu_kernels 8b paired-tiles
KVTC_ROW_KERNELS=vector KVTC_SMALL_GROUPS=threads ncu_kernels 8b vector-threads
