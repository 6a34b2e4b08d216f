#!/usr/bin/env bash
# Run k, call 31 (2026-11-30): the 8B paged 8K rows came out at 106-112 GB/s batch-1 encode in calls
# 28 and 30 against 196.6 in call 23 (the contiguous rows did not drop). Same code as calls 28-30:
# one contiguous and one paged 8B 8K process, batch 1, the paged one with KVTC_CUDA_PROFILE=1 (its
# per-stage device and host times, stderr kept as profile-paged.txt).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
rm -f "$OUT"/gpu-bench*.json
REPS=9 bench contiguous-b1 --tokens 8192 --batch 1
KVTC_CUDA_PROFILE=1 REPS=9 bench paged-b1-profile --tokens 8192 --batch 1 --paged
cp /tmp/kvtc-gpu/bench-8b.err "$OUT/profile-paged.txt"
