#!/usr/bin/env bash
# Run t, call 71 (2026-12-01): the fused restore with M = features (RestoreEpilogueByFeature in
# bench/cutlass_gemm_probe.cu: V's rows reordered so a thread holds both members of each neox pair,
# movmatrix transposes for token-major stores), checked element by element and timed beside
# call 68's kernels, in the probe only.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
cutlass_probe "2048 32768 2048" "8192 32768 2048"
