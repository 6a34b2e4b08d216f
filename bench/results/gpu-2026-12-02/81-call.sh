#!/usr/bin/env bash
# Run w, call 81 (2026-12-02): the record pool sized to the batch (2d498d0) with no knob set, on the
# row call 80 found faulting in fresh memory (8B 32K batch 8, level 0); then the table at this
# tree's final code and the default level 6: 8K rows of the three shapes, 8B 8K paged, 8B 256 x 32
# paged; the 32K rows last (the deadline may cut them; call 82 has them otherwise).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 1 "$OUT/build.log"
unpack_tools
NEW=$(addon_in build-gpu)
VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 0" variant poolauto-1 "$NEW"
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 8k --tokens 8192
REPS=9 bench paged --tokens 8192 --paged
VARIANT_ARGS="--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged" variant p256-1 "$NEW"
merge_variants poolauto p256
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
