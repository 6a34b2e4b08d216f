#!/usr/bin/env bash
# Run q, call 66 (2026-12-01): the table at this run's final code (d38a6f9; call 65's one-launch
# raw rows measured no faster and was not kept): 8K rows of the three shapes, 8B 256-token chunks
# paged (x 32 and x 16, two processes each), 8B 8K paged, 8B 8K with the plan trimmed to 6144
# components and the fp8 projection, then the 32K rows (last: the deadline may cut them).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 8k --tokens 8192
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
W16=(--shape 8b --tokens 256 --batch 16 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256-$i "$NEW"
  VARIANT_ARGS="${W16[*]}" variant w16-$i "$NEW"
done
merge_variants p256 w16
REPS=9 bench paged --tokens 8192 --paged
REPS=9 bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
