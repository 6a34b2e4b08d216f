#!/usr/bin/env bash
# Run i, call 15 (2026-11-30): main with the cuBLASLt bf16 GEMM plans (02d9413). Tests with
# memcheck and racecheck (first sanitizer runs of the real-KV cross-decode and the GEMM plans), the
# three shapes' table (8K and 32K, batch 1 and 8), rank 6144 fp8, e2e, bench host on this CPU, the
# 8B batch-8 per-stage profile, paged (bf16 and fp8), rank 6144 fp8 at 32K.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
BENCH_SHAPES="8b smollm2 1b" bench all
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
stage "bench host (the host CPU's copy + CRC passes)"
KVTC_ADDON_PATH=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1) LD_LIBRARY_PATH=/tmp/kvtc-gpu/sys/lib:/tmp/kvtc-gpu/nvcomp/lib64 \
  timeout "$(left)" /tmp/kvtc-gpu/bin/node dist/src/main.js bench host --reps 30 --json > "$OUT/gpu-bench-host.json"
tail -c 400 "$OUT/gpu-bench-host.json"; echo
KVTC_CUDA_PROFILE=1 bench profile-b8 --tokens 8192 --batch 8
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-8b.err | tail -n 4 | tee -a "$R/profile-8b-b8.txt"
bench paged --tokens 8192 --paged
bench r6144-fp8-paged --tokens 8192 --rank-cap 6144 --projection fp8 --paged
bench r6144-fp8-32k --tokens 32768 --rank-cap 6144 --projection fp8
