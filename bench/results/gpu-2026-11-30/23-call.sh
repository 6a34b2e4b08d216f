#!/usr/bin/env bash
# Call 23 (2026-11-30, run j): the three shapes' table again with 9 timed repetitions per row
# instead of 3 (call 22: the 1B 8K rows are a few ms per job and one process in five lost 8-13 ms
# per encode to host stalls, KVTC_CUDA_PROFILE's "k.coded" wait and copy+CRC, in 2 of 3
# repetitions: the median of 3 did not hide it), then the 8B shape paged (vLLM's layout) at 8K.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench all
REPS=9 bench paged --tokens 8192 --paged
