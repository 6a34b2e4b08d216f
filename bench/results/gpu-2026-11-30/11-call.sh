#!/usr/bin/env bash
# Run h, call 11 (2026-11-30): the vector row kernels are the default now (call 10 ran them under
# KVTC_ROW_KERNELS=vector with memcheck). Tests + racecheck with them; per-stage profiles of the
# shapes furthest from their GEMM (SmolLM2 8K batch 1 and 8, 1B 8K batch 1) to choose the next
# step; the rank-6144 fp8 rows at 32K and paged at this commit.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + racecheck"; SANITIZERS="racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|error"
for b in 1 8; do
  BENCH_SHAPES=smollm2 KVTC_CUDA_PROFILE=1 bench smollm2-profile-b$b --tokens 8192 --batch $b
  grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-smollm2.err | tail -n 4 | tee -a "$OUT/profile-smollm2-b$b.txt"
done
BENCH_SHAPES=1b KVTC_CUDA_PROFILE=1 bench 1b-profile-b1 --tokens 8192 --batch 1
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-1b.err | tail -n 4 | tee -a "$OUT/profile-1b-b1.txt"
bench r6144-fp8-32k --tokens 32768 --rank-cap 6144 --projection fp8
bench r6144-fp8-paged --tokens 8192 --rank-cap 6144 --projection fp8 --paged
