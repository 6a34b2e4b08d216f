#!/usr/bin/env bash
# Run o, call 52 (2026-12-01): a fused group's records read back together (every part's copy
# queued, then the copies into the records with their CRCs spread over the threads a part each:
# CopyCrcMany) instead of one record after another; call 51's profile had the host at 0.28 ms per
# 256-token record. GPU tests with memcheck, the IPC end to end, then fused (default) against
# KVTC_FUSE_TOKENS=0 in alternating processes (8B 256 x 32 paged and contiguous, 1K x 8) and a
# profile of the fused 256 x 32.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests memcheck
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many" | tail -n 8
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${P256[*]}" variant p256on-$i "$NEW"
  VARIANT_ARGS="${C256[*]}" variant c256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${C256[*]}" variant c256on-$i "$NEW"
  VARIANT_ARGS="${K1[*]}" variant k1off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${K1[*]}" variant k1on-$i "$NEW"
done
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
grep "kvtc-profile\] encode device: k" "$OUT/variants/prof256.err" | tail -n 1
grep "kvtc-profile\] decode" "$OUT/variants/prof256.err" | tail -n 2 | cut -c1-400
merge_variants p256off p256on c256off c256on k1off k1on
