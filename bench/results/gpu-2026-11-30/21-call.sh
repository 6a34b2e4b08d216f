#!/usr/bin/env bash
# Call 21 (2026-11-30, run j): a bf16 cache's reconstruction out of the decode GEMM in bf16
# (KVTC_RECONSTRUCTION=bf16, new default) instead of fp32 (call 20: the 8B 8K decode epilogues
# read 1.1 GB of fp32 per stream).
# 1. GPU tests with memcheck and racecheck (new: bf16 vs fp32 reconstruction within a rounding).
# 2. A/B KVTC_RECONSTRUCTION=fp32 (8B 8K, batch 1 and 8).
# 3. Nsight Compute per kernel, 8B 8K (the decode GEMM and epilogues against call 20's).
# 4. The three shapes' table with every change since call 17 (paired rows, small-group tiles,
#    bf16 reconstruction).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
stage "A/B recon: KVTC_RECONSTRUCTION=fp32"
AB_TESTS=0 timeout "$(left)" bash scripts/gpu-ab.sh KVTC_RECONSTRUCTION=fp32 | grep "^8b\|FAILED"
for t in base ab; do mv "$OUT/gpu-bench-$t.json" "$OUT/gpu-bench-recon-$t.json" 2>/dev/null; done
ncu_kernels 8b bf16-recon
BENCH_SHAPES="8b smollm2 1b" bench all
