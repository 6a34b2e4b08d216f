#!/usr/bin/env bash
# Planned next call (written 2026-11-30 after run g). Compile-checked only before it: the vector
# row kernels (KVTC_ROW_KERNELS=vector, off by default; test/gpu/row-kernels.test.ts compares them
# bit for bit with the scalar ones) and the review refactors of run g's last commit (bench
# baselines through one timed() helper, shapeCalibration() in the GPU tests). Tests + sanitizers,
# the A/B of the row kernels (tests + memcheck with them, 8B 8K bench without and with), the same
# at rank 6144 fp8, the bf16 batch-8 encode with profile laps (148.8 in call 9 against 160.0 in
# call 6), paged, the three shapes' table, e2e.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|error"
stage "A/B row kernels"; timeout "$(left)" bash scripts/gpu-ab.sh KVTC_ROW_KERNELS=vector | grep "^ok\|^not ok\|# pass\|# fail\|clean\|error\|^8b"
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
KVTC_ROW_KERNELS=vector bench r6144-fp8-vector --tokens 8192 --rank-cap 6144 --projection fp8
KVTC_CUDA_PROFILE=1 bench profile-b8 --tokens 8192 --batch 8
grep -h "kvtc-profile\] encode" /tmp/kvtc-gpu/bench-8b.err | tail -n 3 | tee -a "$OUT/profile-b8.txt"
bench paged --tokens 8192 --paged
BENCH_SHAPES="8b smollm2 1b" bench all
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
