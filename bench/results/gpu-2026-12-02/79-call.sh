#!/usr/bin/env bash
# Run v, call 79 (2026-12-02): the GPU tests again (call 76 stopped the fused-group paged test at
# a wrong expectation before its level-0 decode checks ran), then the 8B 32K batch-8 rows at level
# 6 and 0 again, alternating, with nothing else running (call 77 ran them beside a background build).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 1 "$OUT/build.log"
gpu_tests ""
unpack_tools
NEW=$(addon_in build-gpu)
VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 0" variant 8bx32l0-2 "$NEW"
VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 6" variant 8bx32l6-2 "$NEW"
