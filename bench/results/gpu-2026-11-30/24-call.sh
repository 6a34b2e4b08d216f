#!/usr/bin/env bash
# Call 24 (2026-11-30, run j): why the coder kernels are slow per symbol (diagnosis only, no code
# change). Call 22's Nsight Compute: the 1B 8K inflate takes 315 us per stream at 11 % SM for one
# wave of 503 chunks (~0.4 us per literal per lane), the encode 132 us. Warp stall reasons,
# scheduler and memory tables for EncodeKernel and InflateKernel (1B 8K, batch 1), and the
# InflateKernel's SASS with per-instruction stall samples.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
export PATH=/tmp/kvtc-gpu/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/kvtc-gpu/sys/lib:/tmp/kvtc-gpu/nvcomp/lib64
export KVTC_ADDON_PATH=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
B=(node dist/src/main.js bench codec --backend cuda --json --reps 1 --shape 1b --tokens 8192 --batch 1)
stage "ncu sections"
timeout "$(left)" ncu --clock-control none -k 'regex:EncodeKernel|InflateKernel' -c 4 \
  --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis_Tables --section InstructionStats --print-details all "${B[@]}" \
  > "$OUT/ncu-coder-sections.txt" 2> "$OUT/ncu-coder-sections.err"
echo "rc $? $(wc -l < "$OUT/ncu-coder-sections.txt") lines"
stage "ncu source (InflateKernel)"
timeout "$(left)" ncu --clock-control none -k regex:InflateKernel -c 1 --section SourceCounters \
  --page source --print-source sass --csv "${B[@]}" > "$OUT/ncu-inflate-sass.csv" 2> "$OUT/ncu-inflate-sass.err"
echo "rc $? $(wc -l < "$OUT/ncu-inflate-sass.csv") lines"
stage "ncu source (EncodeKernel)"
timeout "$(left)" ncu --clock-control none -k regex:EncodeKernel -c 1 --section SourceCounters \
  --page source --print-source sass --csv "${B[@]}" > "$OUT/ncu-encode-sass.csv" 2> "$OUT/ncu-encode-sass.err"
echo "rc $? $(wc -l < "$OUT/ncu-encode-sass.csv") lines"
