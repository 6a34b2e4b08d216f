#!/usr/bin/env bash
# Run k, call 29 (2026-11-30): a second sample of call 28's 8K rows for the 8B and SmolLM2 shapes
# (call 28's SmolLM2 decode, a path no change of call 28 touched, came out 27 % below call 27's,
# and its 8B batch-8 encode 18 % below), same code, REPS=9; Nsight Compute 8B 8K batch 1 for the
# EncodeKernel (351-361 us per stream in call 26).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES="8b smollm2" bench 8k-again --tokens 8192
ncu_kernels 8b
python3 scripts/ncu-table.py "$OUT/ncu-8b.csv" 2>&1 | grep "InflateKernel\|EncodeKernel" | head -n 4
