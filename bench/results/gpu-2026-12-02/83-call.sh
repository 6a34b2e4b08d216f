#!/usr/bin/env bash
# Run w, call 83 (2026-12-02): the two batch-1 32K encodes that came out near half their neighbours
# in calls 81-82 (8B at level 0, SmolLM2 at level 6), again in new processes, twice each.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
for i in 1 2; do
  VARIANT_ARGS="--shape 8b --tokens 32768 --batch 1 --deflate-level 0" variant k32b1l0-$i "$NEW"
  VARIANT_ARGS="--shape smollm2 --tokens 32768 --batch 1" variant s32b1l6-$i "$NEW"
done
merge_variants k32b1l0 s32b1l6
