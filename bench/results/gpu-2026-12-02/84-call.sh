#!/usr/bin/env bash
# Run w, call 84 (2026-12-02): SmolLM2 32K batch-1 encodes at level 6 ran at 118-125 GB/s in two
# processes of three (calls 81, 83) and 216 in the third. Four processes with KVTC_CUDA_PROFILE=1,
# REPS=3, to see which stage a slow process spends its time in.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
for i in 1 2 3 4; do
  REPS=3 VARIANT_ARGS="--shape smollm2 --tokens 32768 --batch 1" variant prof-s32b1-$i "$NEW" KVTC_CUDA_PROFILE=1
  python3 scripts/profile-summary.py encode < "$OUT/variants/prof-s32b1-$i.err"
done
