#!/usr/bin/env bash
# Run v, call 78 (2026-12-02): where the time goes at level 6 and level 0 (KVTC_CUDA_PROFILE=1,
# REPS=3): the 8B 8K batch-8 encode and restore (contiguous KV), whose encode gained only 4 % at
# level 0 in call 76 although the coder took about a fifth of its device time in run p, and the
# 256 x 32 paged encode.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 1 "$OUT/build.log"
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
for l in 6 0; do
  REPS=3 VARIANT_ARGS="--shape 8b --tokens 8192 --batch 8 --deflate-level $l" variant prof-k8b8-l$l "$NEW" KVTC_CUDA_PROFILE=1
  for what in encode decode; do python3 scripts/profile-summary.py $what < "$OUT/variants/prof-k8b8-l$l.err"; done
  REPS=3 VARIANT_ARGS="${P256[*]} --deflate-level $l" variant prof-p256-l$l "$NEW" KVTC_CUDA_PROFILE=1
  for what in encode decode; do python3 scripts/profile-summary.py $what < "$OUT/variants/prof-p256-l$l.err"; done
done
