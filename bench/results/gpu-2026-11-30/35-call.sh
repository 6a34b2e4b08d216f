#!/usr/bin/env bash
# Run l, call 35 (2026-11-30): the table at this session's final defaults (read back and staging
# in whole sections; chunks packed on the job stream), REPS=9. 8B 8K in two processes (merged), the
# other rows one process each. No tests: the defaults changed, not the code (calls 32-34 ran the
# GPU tests, memcheck and racecheck on it; call 33-34's KVTC_READBACK_SLICE_MB=0 rows are this path).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
REPS=9 BENCH_PROCS=2 bench 8k-8b --tokens 8192
REPS=9 BENCH_SHAPES="smollm2 1b" bench 8k --tokens 8192
REPS=9 bench paged --tokens 8192 --paged
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
REPS=9 bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
