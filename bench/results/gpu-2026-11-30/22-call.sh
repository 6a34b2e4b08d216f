#!/usr/bin/env bash
# Call 22 (2026-11-30, run j): call 21's table had the 1B shape at 8K far below call 17's (encode
# 70.3 / 74.9 against 122.4 / 145.4 GB/s, decode 43.4 / 109.6 against 109.2 / 121.6, same record
# bytes) while its 32K rows and the other shapes held. Which change, or none:
# 1. 1B 8K in separate processes: defaults twice; KVTC_RECONSTRUCTION=fp32; the row and
#    small-group kernels of call 17 (KVTC_ROW_KERNELS=vector KVTC_SMALL_GROUPS=threads); the
#    defaults with KVTC_CUDA_PROFILE=1 (stderr kept as profile-1b.err in logs.tgz).
# 2. Nsight Compute per kernel, 1B 8K.
# 3. 8B rank 6144 fp8 at 8K (the 100 GB/s target), then the IPC end to end.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
rm -f "$OUT"/gpu-bench*.json
export BENCH_SHAPES=1b
bench 1b-a --tokens 8192
bench 1b-b --tokens 8192
KVTC_RECONSTRUCTION=fp32 bench 1b-fp32 --tokens 8192
KVTC_ROW_KERNELS=vector KVTC_SMALL_GROUPS=threads bench 1b-old-kernels --tokens 8192
KVTC_CUDA_PROFILE=1 bench 1b-profile --tokens 8192
cp /tmp/kvtc-gpu/bench-1b.err "$OUT/profile-1b.err" 2>/dev/null
ncu_kernels 1b
BENCH_SHAPES=8b bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
