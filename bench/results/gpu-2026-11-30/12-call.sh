#!/usr/bin/env bash
# Run h, call 12 (2026-11-30): the host copies' CRC32C in three interleaved chains and the copies
# spread over the threads from 512 KiB (call 11's SmolLM2/1B profiles were host-bound). Tests, the
# three shapes' table, rank 6144 fp8, paged (bf16 and fp8), the SmolLM2 8K profile again, e2e,
# and rank 6144 fp8 at 32K last.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests"; SANITIZERS="" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail"
BENCH_SHAPES="8b smollm2 1b" bench all
bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
bench paged --tokens 8192 --paged
bench r6144-fp8-paged --tokens 8192 --rank-cap 6144 --projection fp8 --paged
BENCH_SHAPES=smollm2 KVTC_CUDA_PROFILE=1 bench smollm2-profile-b1 --tokens 8192 --batch 1
grep -h "kvtc-profile" /tmp/kvtc-gpu/bench-smollm2.err | tail -n 2 | tee -a "$OUT/profile-smollm2-b1.txt"
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
bench r6144-fp8-32k --tokens 32768 --rank-cap 6144 --projection fp8
