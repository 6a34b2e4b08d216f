#!/usr/bin/env bash
# Run m, call 38 (2026-11-30): page-locked records (KVTC_PIN_RECORDS=1) allocated by cudaHostAlloc
# instead of registered after the fact (cudaHostRegister on a 2 MiB-aligned huge-page block).
# 1. GPU tests (host code only changed: no sanitizer run).
# 2. bench/pinned_copy.py: host-to-device GB/s from each kind of host memory, one process.
# 3. 8B 8K, KVTC_PIN_RECORDS=1 (2 GiB record pool): 936ec54 (.gpu/old/cuda, registered) against
#    this tree (allocated), alternating, two rounds; and this tree's staged restore once.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "tests"
SANITIZERS= timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|FAILED\|ERROR"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
stage "pinned_copy"
timeout "$(left)" python3 bench/pinned_copy.py --mib 32 --reps 20 | tee "$OUT/pinned-copy-32.txt"
timeout "$(left)" python3 bench/pinned_copy.py --mib 256 --reps 10 | tee "$OUT/pinned-copy-256.txt"
wait_old
PIN=(KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048)
for i in 1 2; do
  variant oldpin-$i "$OLD" "${PIN[@]}"
  variant newpin-$i "$NEW" "${PIN[@]}"
done
merge_variants oldpin newpin
variant new-1 "$NEW"
REPS=5 variant profile-newpin "$NEW" KVTC_CUDA_PROFILE=1 "${PIN[@]}"
grep "device" "$OUT/variants/profile-newpin.err" | tail -n 3
