#!/usr/bin/env bash
# Run i, call 18 (2026-11-30): a second sample of the 8K table at 5b32741 (REPS=5) for the batch-8
# encode figures that fell in call 17 (SmolLM2 152.2 -> 136.9, 1B 158.7 -> 145.4) while the coder
# kernels got faster, and the SmolLM2 8K batch-8 encode profile (host laps: is that case bound by
# the host's copy + CRC of the records?).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
REPS=5 BENCH_SHAPES="smollm2 1b 8b" bench all8k --tokens 8192
BENCH_SHAPES=smollm2 KVTC_CUDA_PROFILE=1 bench smollm2-profile-b8 --tokens 8192 --batch 8
grep -h "kvtc-profile\] encode" /tmp/kvtc-gpu/bench-smollm2.err | tail -n 3 | tee "$R/profile-smollm2-b8-encode.txt"
