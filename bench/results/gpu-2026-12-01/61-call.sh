#!/usr/bin/env bash
# Run p, call 61 (2026-12-01): where a grouped restore of 8B 256 x 32 spends its time. The decode
# profiles are now reported after the job (reporting a group's when its slot was reused waited for
# its marks and serialized the profiled pipeline), and Nsight Compute times every kernel of one
# encode and one restore (--reps 1: a warm-up and one timed repetition) for the device's busy time.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
python3 scripts/profile-summary.py decode < "$OUT/variants/prof256.err"
grep "kvtc-profile\] decode" "$OUT/variants/prof256.err" | tail -n 4 | cut -c1-330
stage "ncu 8b 256 x 32 paged"
KVTC_ADDON_PATH=$NEW timeout "$(left)" ncu --clock-control none --csv --print-units base \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  node dist/src/main.js bench codec --backend cuda --json --reps 1 "${P256[@]}" > "$OUT/ncu-p256.csv" 2> "$OUT/ncu-p256.err"
echo "ncu rc $?"
python3 scripts/ncu-table.py "$OUT/ncu-p256.csv" > "$OUT/ncu-p256.txt" 2>&1; wc -l "$OUT/ncu-p256.txt"
