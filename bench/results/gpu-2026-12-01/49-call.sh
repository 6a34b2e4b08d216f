#!/usr/bin/env bash
# Run o, call 49 (2026-12-01): sequences fused into groups on the encode (0ddc030: one projection
# GEMM, one coder launch, one packing per group of up to 8K coded tokens). GPU tests with memcheck
# (new: paged many spans fused vs one at a time), the IPC end to end (new: save_blocks items vs one
# request per chunk), then fused (default) against KVTC_FUSE_TOKENS=0 (every sequence alone, as
# before) in alternating processes: 8B 256-token chunks x 32 with no window, paged and contiguous
# (the connector's chunks), and 8B 1K x 8.
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
done
VARIANT_ARGS="${C256[*]}" variant c256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${C256[*]}" variant c256on-1 "$NEW"
VARIANT_ARGS="${K1[*]}" variant k1off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${K1[*]}" variant k1on-1 "$NEW"
merge_variants p256off p256on c256off c256on k1off k1on
