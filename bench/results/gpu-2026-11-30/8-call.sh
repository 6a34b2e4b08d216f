#!/usr/bin/env bash
# Run g, call 2 (2026-11-30): fp8 rows' scales gathered by the prologue (one conversion pass, not
# two), the raw window read back in the encode's first round, finer encode laps. Tests +
# sanitizers, the rank-6144 profile, fp8 vs bf16 at rank 6144, paged, the bf16 table, fp8 rank
# 2048, rank 6144 at 32K last.
set -uo pipefail
cd "$(dirname "$0")/.."
R=$OUT; export OUT=/tmp/o; mkdir -p "$OUT"
t0=$(date +%s); DEADLINE=${DEADLINE:-500}
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
stage() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
finish() { stage done; cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null; (cd "$OUT" && tar -czf "$R/logs.tgz" --exclude='gpu-bench*.json' .); }
trap finish EXIT
bench() { local tag=$1; shift; stage "bench $tag: $* (shapes ${BENCH_SHAPES:-8b})"; REPS=3 BENCH_SHAPES="${BENCH_SHAPES:-8b}" BENCH_TAG="-$tag" BENCH_ARGS="$*" timeout "$(left)" bash scripts/gpu-run.sh bench | grep -v "^==\|^{\|ninja\|^NVIDIA" ; }
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test
grep -h "^not ok\|# fail\|assert\|Error" "$OUT"/gpu-tests.tap 2>/dev/null | head -n 20
KVTC_CUDA_PROFILE=1 bench r6144-fp8-profile --tokens 8192 --batch 1 --rank-cap 6144 --projection fp8
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-8b.err | tail -n 2 | tee -a "$OUT/profile-r6144-fp8-b1.txt"
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
bench r6144 --tokens 8192 --rank-cap 6144
bench r6144-fp8-paged --tokens 8192 --rank-cap 6144 --projection fp8 --paged
BENCH_SHAPES="8b smollm2 1b" bench all
bench fp8 --tokens 8192 --projection fp8
bench r6144-fp8-32k --tokens 32768 --rank-cap 6144 --projection fp8
