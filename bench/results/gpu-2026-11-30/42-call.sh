#!/usr/bin/env bash
# Run n, call 42 (2026-11-30): an encoded stream's chunk sizes and entry points written into
# pinned memory by a kernel (PublishSizesKernel) instead of two device-to-host copies on the job
# stream. GPU tests with memcheck; against ad0c8f8 (.gpu/old/cuda) in alternating processes at
# 8B 1K, 2K and 8K; a 1K batch-8 profile; 1K with page-locked records (the restore at 1K is
# host-bound: call 36's profile).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "tests + memcheck"
SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
wait_old
K1=(--shape 8b --tokens 1024)
K2=(--shape 8b --tokens 2048)
for i in 1 2; do
  VARIANT_ARGS="${K1[*]}" variant old1k-$i "$OLD"
  VARIANT_ARGS="${K1[*]}" variant new1k-$i "$NEW"
done
VARIANT_ARGS="${K2[*]}" variant old2k-1 "$OLD"
VARIANT_ARGS="${K2[*]}" variant new2k-1 "$NEW"
REPS=5 VARIANT_ARGS="${K1[*]}" variant profile1k-new "$NEW" KVTC_CUDA_PROFILE=1
grep "encode device" "$OUT/variants/profile1k-new.err" | tail -n 3
VARIANT_ARGS="${K1[*]}" variant newpin1k-1 "$NEW" KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048
variant old-1 "$OLD"
variant new-1 "$NEW"
merge_variants old1k new1k
