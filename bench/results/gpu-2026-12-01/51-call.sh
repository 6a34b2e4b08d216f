#!/usr/bin/env bash
# Run o, call 51 (2026-12-01): one quantize launch per kernel for a whole group (blockIdx.z picks
# the sequence; call 50's profile: a group of 32 took 0.52 ms to quantize per stream in 64
# launches against 0.13 for one 8K sequence) and groups of up to 2048 coded tokens by default.
# The paged tests; fused (default) against KVTC_FUSE_TOKENS=0 in alternating processes: 8B
# 256-token chunks x 32 (no window) paged and contiguous, 1K x 8; a profile of the fused 256 x 32.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged and parity tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js dist/test/gpu/parity.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A12 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
for i in 1 2 3; do
  VARIANT_ARGS="${P256[*]}" variant p256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${P256[*]}" variant p256on-$i "$NEW"
done
for i in 1 2; do
  VARIANT_ARGS="${C256[*]}" variant c256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${C256[*]}" variant c256on-$i "$NEW"
  VARIANT_ARGS="${K1[*]}" variant k1off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${K1[*]}" variant k1on-$i "$NEW"
done
REPS=3 VARIANT_ARGS="${C256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
grep "kvtc-profile\] encode device: k" "$OUT/variants/prof256.err" | tail -n 2
grep "kvtc-profile\] encode" "$OUT/variants/prof256.err" | tail -n 8 | cut -c1-200
merge_variants p256off p256on c256off c256on k1off k1on
