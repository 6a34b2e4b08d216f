#!/usr/bin/env bash
# Run p, call 56 (2026-12-01): the decode in groups (records of few tokens staged into one image,
# one inflate launch, one dequantize launch and one GEMM per stream, one epilogue launch per stream
# into one paged cache) and decodePagedMany, plus the review commit 6ca96e5 (not yet run on a GPU).
# GPU tests with memcheck, the IPC end to end (load_blocks items now), then grouped (default)
# against KVTC_FUSE_TOKENS=0 in alternating processes: 8B 256 x 32 paged and contiguous, 1K x 8,
# 8K (records alone either way: to be unchanged), and a profile of the grouped paged 256 x 32.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests memcheck
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many\|Error" | tail -n 12
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
done
VARIANT_ARGS="${K1[*]}" variant k1off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${K1[*]}" variant k1on-1 "$NEW"
variant k8off-1 "$NEW" KVTC_FUSE_TOKENS=0
variant k8on-1 "$NEW"
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
grep "kvtc-profile\] decode" "$OUT/variants/prof256.err" | tail -n 2 | cut -c1-600
merge_variants p256off p256on c256off c256on k1off k1on k8off k8on
