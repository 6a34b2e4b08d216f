#!/usr/bin/env bash
# Run k, call 30 (2026-11-30): call 29's second sample for the other rows call 28 measured in its
# slow processes, same code as calls 28-29, REPS=9: 1B 8K, 8B rank 6144 fp8 8K (the
# 100 GB/s target), 8B paged 8K.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES=1b bench 1b-8k-again --tokens 8192
REPS=9 bench r6144-fp8-again --tokens 8192 --rank-cap 6144 --projection fp8
REPS=9 bench paged-again --tokens 8192 --paged
