#!/usr/bin/env bash
# Planned first device call of the next session (written 2026-11-30 after run e): the staging
# changes made after run e (work items of ~256 KiB, section CRCs checked while staging) are
# compile-checked only. Tests + sanitizers (the new corrupt-section GPU test), the profile laps of
# the paged and contiguous batch-1 restores (the 41 ms paged stall: pinned? / verify / chunk
# tables / staging plan / buffers), then (A/B) fused vs separate CRC, paged, rank 6144, e2e, the
# three shapes' table last; shared deadline.
set -uo pipefail
cd "$(dirname "$0")/.."
R=$OUT; export OUT=/tmp/o; mkdir -p "$OUT"
t0=$(date +%s); DEADLINE=${DEADLINE:-540}
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
stage() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }
finish() { stage done; cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null; (cd "$OUT" && tar -czf "$R/logs.tgz" --exclude='gpu-bench*.json' .); }
trap finish EXIT
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test
for a in "--paged" ""; do
  stage "profile b1 $a"; KVTC_CUDA_PROFILE=1 REPS=3 BENCH_SHAPES=8b BENCH_ARGS="--tokens 8192 --batch 1 $a" BENCH_TAG=-profile timeout "$(left)" bash scripts/gpu-run.sh bench | tail -n 1
  grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-8b.err | tail -n 4 | tee -a "$OUT/profile-b1.txt"
done
stage "A/B fused vs separate CRC"; AB_TESTS=0 timeout "$(left)" bash scripts/gpu-ab.sh KVTC_STAGE_VERIFY=separate
stage "rank 6144"; REPS=3 BENCH_SHAPES=8b BENCH_TAG=-r6144 BENCH_ARGS="--tokens 8192 --rank-cap 6144" timeout "$(left)" bash scripts/gpu-run.sh bench
stage "paged"; REPS=3 BENCH_SHAPES=8b BENCH_TAG=-paged BENCH_ARGS="--tokens 8192 --paged" timeout "$(left)" bash scripts/gpu-run.sh bench
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
stage "table"; REPS=3 timeout "$(left)" bash scripts/gpu-run.sh bench
