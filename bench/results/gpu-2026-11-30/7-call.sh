#!/usr/bin/env bash
# Run g, call 1 (2026-11-30): the fp8 projection (cuda_fp8.cuh), compile-checked only until now.
# Tests + sanitizers (new fp8 parity and paged cases), then the 8B shape at rank 6144 (the issue's
# 100 GB/s target) fp8 vs bf16, a profile of the fp8 batch-1 restore, 32K, paged, and rank 2048.
set -uo pipefail
cd "$(dirname "$0")/.."
R=$OUT; export OUT=/tmp/o; mkdir -p "$OUT"
t0=$(date +%s); DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
stage() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
finish() { stage done; cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null; (cd "$OUT" && tar -czf "$R/logs.tgz" --exclude='gpu-bench*.json' .); }
trap finish EXIT
bench() { local tag=$1; shift; stage "bench $tag: $*"; REPS=3 BENCH_SHAPES=8b BENCH_TAG="-$tag" BENCH_ARGS="$*" timeout "$(left)" bash scripts/gpu-run.sh bench | grep -v "^==\|^{\|ninja\|^NVIDIA" ; }
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test
grep -h "^not ok\|# fail\|assert\|Error" "$OUT"/gpu-tests.tap 2>/dev/null | head -n 20
stage "profile r6144 fp8 b1"; KVTC_CUDA_PROFILE=1 bench r6144-fp8-profile --tokens 8192 --batch 1 --rank-cap 6144 --projection fp8
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-8b.err | tail -n 2 | tee -a "$OUT/profile-r6144-fp8-b1.txt"
tail -n 3 /tmp/kvtc-gpu/bench-8b.err
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
bench r6144 --tokens 8192 --rank-cap 6144
bench r6144-fp8-paged --tokens 8192 --rank-cap 6144 --projection fp8 --paged
bench r6144-fp8-32k --tokens 32768 --rank-cap 6144 --projection fp8
bench fp8 --projection fp8
