#!/usr/bin/env bash
# Run w, call 82 (2026-12-02): call 81's table again at DEFLATE level 0 (no entropy coding).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 8kl0 --tokens 8192 --deflate-level 0
REPS=9 bench pagedl0 --tokens 8192 --paged --deflate-level 0
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32kl0 --tokens 32768 --deflate-level 0
