#!/usr/bin/env bash
# Run u, call 73 (2026-12-02): call 72 found the M = features fused restore's transposed stores
# slow because each one's slot load waited behind a movmatrix; ByFeatureStores::kBatched loads
# 8 leads' slots (keys: 4 leads' positions and RoPE factors) ahead of their transposes, timed with
# the cooperative 128x256, 256x128 c2x1 and ping-pong 128x128 schedules, in the probe only.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
cutlass_probe "2048 32768 2048" "8192 32768 2048"
