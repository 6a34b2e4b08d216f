#!/usr/bin/env bash
# Run o, call 53 (2026-12-01): CopyCrcMany in 256 KiB pieces of every part over the threads (call
# 52 gave each thread a whole part: 8B 1K x 8, whose records carry 8 MB raw windows, encoded at 64.1
# against 137.3 GB/s alone). GPU tests with racecheck; fused (default) against KVTC_FUSE_TOKENS=0 in
# alternating processes: 8B 1K x 8, 256 x 32 paged and contiguous, and 8K x 1 / x 8 (one sequence
# per group either way: the single-record read back is to be unchanged).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests racecheck
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
for i in 1 2; do
  VARIANT_ARGS="${K1[*]}" variant k1off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${K1[*]}" variant k1on-$i "$NEW"
done
VARIANT_ARGS="${P256[*]}" variant p256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${P256[*]}" variant p256on-1 "$NEW"
VARIANT_ARGS="${C256[*]}" variant c256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${C256[*]}" variant c256on-1 "$NEW"
variant k8off-1 "$NEW" KVTC_FUSE_TOKENS=0
variant k8on-1 "$NEW"
merge_variants k1off k1on p256off p256on c256off c256on k8off k8on
