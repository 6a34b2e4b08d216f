#!/usr/bin/env bash
# Run i, call 16 (2026-11-30): where the device time goes, per kernel, from hardware counters:
# Nsight Compute over one warm-up and one timed encode + decode (batch 1, 8K tokens) of the 8B and
# SmolLM2 shapes, at main (02d9413). Duration, DRAM bytes and the units' throughput per kernel.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; SANITIZERS="" BENCH_SHAPES=stories260k REPS=1 timeout "$(left)" bash scripts/gpu-run.sh bench | tail -n 2
export PATH=/tmp/kvtc-gpu/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/kvtc-gpu/sys/lib:/tmp/kvtc-gpu/nvcomp/lib64
export KVTC_ADDON_PATH=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
M=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
for shape in 8b smollm2; do
  stage "ncu $shape"
  timeout "$(left)" ncu --clock-control none --csv --print-units base --metrics "$M" \
    node dist/src/main.js bench codec --backend cuda --json --reps 1 --shape $shape --tokens 8192 --batch 1 \
    > "$R/ncu-$shape.csv" 2> "$OUT/ncu-$shape.err"
  echo "rc $? $(wc -l < "$R/ncu-$shape.csv") lines"; tail -n 3 "$OUT/ncu-$shape.err"
done
