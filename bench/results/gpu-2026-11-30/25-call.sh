#!/usr/bin/env bash
# Call 25 (2026-11-30, run j): call 24's profile of the 1B 8K inflate: one warp per scheduler
# (503 chunks of 16 KiB, 32 runs of 512 literals each), 7.5 cycles per issued instruction, 87 %
# of cycles with no eligible warp: too few runs to hide the decode loop's latencies. Smaller
# chunks (the record format's own parameter, --chunk-kib) give more runs: 8 KiB chunks take runs
# of 256 literals (DefaultEntryStride's floor), twice the runs; 4 KiB as many runs as 8 KiB in
# more, shorter chunks. What each costs in record bytes and gains in speed, 1B and SmolLM2 at 8K.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
rm -f "$OUT"/gpu-bench*.json
BENCH_SHAPES=1b bench 1b-c16 --tokens 8192
BENCH_SHAPES=1b bench 1b-c8 --tokens 8192 --chunk-kib 8
BENCH_SHAPES=1b bench 1b-c4 --tokens 8192 --chunk-kib 4
BENCH_SHAPES=smollm2 bench smollm2-c16 --tokens 8192
BENCH_SHAPES=smollm2 bench smollm2-c8 --tokens 8192 --chunk-kib 8
