#!/usr/bin/env bash
# Run m, call 36 (2026-11-30): the review commit ae78b7b (PackChunksKernel's stored test, run k's
# staging restored, unpack_tools) through the GPU tests, memcheck, racecheck and the IPC end to
# end test, then profiles of today's decode start (8B 8K batch 1, contiguous and pinned records)
# and short sequences (8B 1K and 2K tokens, batch 1 and 8) not measured before.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + memcheck + racecheck + e2e"
timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard\|build"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | tail -n 4
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
unpack_tools
NEW=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
REPS=5 variant profile-8k "$NEW" KVTC_CUDA_PROFILE=1
grep "decode device" "$OUT/variants/profile-8k.err" | tail -n 2
REPS=5 variant profile-8k-pinned "$NEW" KVTC_CUDA_PROFILE=1 KVTC_PIN_RECORDS=1
grep "decode device" "$OUT/variants/profile-8k-pinned.err" | tail -n 2
VARIANT_ARGS="--shape 8b --tokens 1024" variant short-1k "$NEW"
VARIANT_ARGS="--shape 8b --tokens 2048" variant short-2k "$NEW"
VARIANT_ARGS="--shape 8b --tokens 1024 --batch 8" variant profile-1k-b8 "$NEW" KVTC_CUDA_PROFILE=1
grep "device" "$OUT/variants/profile-1k-b8.err" | tail -n 4
