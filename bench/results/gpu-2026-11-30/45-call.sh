#!/usr/bin/env bash
# Run n, call 45 (2026-11-30): why a page-locked record restores slower than a staged one (run m:
# 170-178 against 206 GB/s, 8B 8K batch 1, with a bimodal keys' inflation start, 1.1 or 2.5 ms).
# Diagnostic addon (.gpu/old/cuda = 14c6048 plus KVTC_DIAG_SKIP_CRC, which skips the host's CRC
# pass over each section of a direct restore; never committed) against this tree's, alternating:
# staged, page-locked, page-locked without the host CRC, page-locked with 4 OpenMP threads.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "build the new addon"
build_addon cuda build-gpu "$OUT/cmake.log" > "$OUT/build.log" 2>&1; echo "new build rc $?"
wait_old
echo "old $OLD new $NEW"
PIN=(KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048)
for i in 1 2; do
  variant stag-$i "$NEW"
  variant pin-$i "$NEW" "${PIN[@]}"
  variant nocrc-$i "$OLD" "${PIN[@]}" KVTC_DIAG_SKIP_CRC=1
  variant pin4-$i "$NEW" "${PIN[@]}" OMP_NUM_THREADS=4
done
merge_variants stag pin nocrc pin4
REPS=5 variant profile-nocrc "$OLD" "${PIN[@]}" KVTC_DIAG_SKIP_CRC=1 KVTC_CUDA_PROFILE=1
grep "decode device" "$OUT/variants/profile-nocrc.err" | tail -n 3
REPS=5 variant profile-pin "$NEW" "${PIN[@]}" KVTC_CUDA_PROFILE=1
grep "decode device" "$OUT/variants/profile-pin.err" | tail -n 3
K1=(--shape 8b --tokens 1024)
VARIANT_ARGS="${K1[*]}" variant stag1k-1 "$NEW"
VARIANT_ARGS="${K1[*]}" variant pin1k-1 "$NEW" "${PIN[@]}"
VARIANT_ARGS="${K1[*]}" variant nocrc1k-1 "$OLD" "${PIN[@]}" KVTC_DIAG_SKIP_CRC=1
