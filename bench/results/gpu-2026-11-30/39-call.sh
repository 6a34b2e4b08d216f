#!/usr/bin/env bash
# Run m, call 39 (2026-11-30): the table at this run's final code (936ec54 plus bench/pinned_copy.py;
# the record memory as before: call 38's cudaHostAlloc records gained nothing and were not kept),
# REPS=9, after the IPC end to end test (the paged restore's start changed in 936ec54). 8B 8K in
# two processes (merged); 8B 1K and 2K (new rows); then the rows of call 35.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "e2e"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error" | tail -n 3
REPS=9 BENCH_PROCS=2 bench 8k-8b --tokens 8192
REPS=9 bench paged --tokens 8192 --paged
REPS=9 BENCH_SHAPES="smollm2 1b" bench 8k --tokens 8192
REPS=9 bench 1k --tokens 1024
REPS=9 bench 2k --tokens 2048
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
REPS=9 bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
