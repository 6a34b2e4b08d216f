#!/usr/bin/env bash
# Run h, call 13 (2026-11-30): the bf16 projection GEMMs through cuBLASLt with per-shape plans
# (KVTC_BF16_GEMM=gemmex is the cublasGemmEx path before). Tests + memcheck + racecheck at HEAD;
# the A/B of the GEMM path (8B 8K, batch 1 and 8); rank 6144 fp8 (its plans are cached now too);
# paged; e2e; the three shapes' table last.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|error\|FAILED"
stage "A/B bf16 GEMM path"; AB_TESTS=0 timeout "$(left)" bash scripts/gpu-ab.sh KVTC_BF16_GEMM=gemmex | grep "^8b\|FAILED"
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
bench paged --tokens 8192 --paged
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
BENCH_SHAPES="8b smollm2 1b" bench all
