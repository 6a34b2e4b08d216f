#!/usr/bin/env bash
# Run g, call 3 (2026-11-30): the copy stream at the highest priority. Tests (no sanitizers: the
# change is a stream priority), the rank-6144 fp8 profile and rows, the 8B rank-2048 bf16 rows,
# rank-6144 bf16; shared deadline.
set -uo pipefail
cd "$(dirname "$0")/.."
R=$OUT; export OUT=/tmp/o; mkdir -p "$OUT"
t0=$(date +%s); DEADLINE=${DEADLINE:-235}
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
stage() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
finish() { stage done; cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null; (cd "$OUT" && tar -czf "$R/logs.tgz" --exclude='gpu-bench*.json' .); }
trap finish EXIT
bench() { local tag=$1; shift; stage "bench $tag: $*"; REPS=3 BENCH_SHAPES=8b BENCH_TAG="-$tag" BENCH_ARGS="$*" timeout "$(left)" bash scripts/gpu-run.sh bench | grep -v "^==\|^{\|ninja\|^NVIDIA" ; }
stage "tests"; SANITIZERS="" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail"
KVTC_CUDA_PROFILE=1 bench r6144-fp8-profile --tokens 8192 --batch 1 --rank-cap 6144 --projection fp8
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-8b.err | tail -n 2 | tee -a "$OUT/profile-r6144-fp8-b1.txt"
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
bench 8b-8k --tokens 8192
bench r6144 --tokens 8192 --rank-cap 6144
