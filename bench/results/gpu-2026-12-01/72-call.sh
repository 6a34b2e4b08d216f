#!/usr/bin/env bash
# Run u, call 72 (2026-12-02): why call 71's fused restore with M = features ran at 1.34-1.80x
# cuBLAS where the plain GEMM in that orientation ran at 1.04-1.14x: its epilogue taken apart
# (ByFeatureStores in bench/cutlass_gemm_probe.cu: direct 2-byte stores, no row loads, no stores)
# and the ping-pong schedule (one warp group's epilogue beside the other's MMAs), in the probe only.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
cutlass_probe "2048 32768 2048" "8192 32768 2048"
