#!/usr/bin/env bash
# Run q, call 64 (2026-12-01): d38a6f9 (the decode image in two buffers). The paged tests (the new
# four-group restore, its expectation fixed: raw sinks only in records that start at token 0) with
# memcheck and racecheck; then where a 256-token restore's host time goes now: the host passes on
# this machine (`bench host`), KVTC_CUDA_PROFILE over 8B 256 x 32 paged, and that row with 8 OpenMP
# threads against the default.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged.tap" 2>&1
grep "^ok\|^not ok" "$OUT/paged.tap"; grep -A40 "^not ok" "$OUT/paged.tap" | grep "record [0-9]\|error:" | head -n 20
for tool in memcheck racecheck; do
  stage "$tool (paged tests)"
  KVTC_ADDON_PATH=$NEW KVTC_GPU_TEST_SMALL=1 timeout "$(left)" compute-sanitizer --tool $tool --error-exitcode 7 \
    node --test dist/test/gpu/paged.test.js > "$OUT/sanitizer-$tool.log" 2>&1 && echo "$tool: clean" ||
    { echo "$tool: FAILED"; grep -E "SUMMARY|Invalid|not ok|hazard" "$OUT/sanitizer-$tool.log" | head -n 8; }
done
stage "bench host"
nproc; lscpu | grep -i "model name\|^CPU(s)\|thread\|socket\|numa node(s)"
timeout "$(left)" node dist/src/main.js bench host --sizes 262144,4194304,16777216,67108864 --reps 10 2>&1 | grep "^|"
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
python3 scripts/profile-summary.py decode < "$OUT/variants/prof256.err"
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant omp8-$i "$NEW" OMP_NUM_THREADS=8
done
merge_variants p256 omp8
