#!/usr/bin/env bash
# Run t, call 68 (2026-12-01): what call 67 left. First the CUTLASS probe again with the tiles,
# orientation and tile walks added after it, and Nsight Compute over its GEMMs (which kernel cuBLAS
# picks, and where CUTLASS's 1.4x goes); then the GPU tests under racecheck (memcheck was clean in
# call 67 on the same code), the IPC end to end, and the inflate's long-code subtables (9d32a3d)
# against e8348ee's coder (.gpu/old/cuda: its include/ and src/cuda_huffman.cu).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 2 "$OUT/build.log"
cutlass_probe "2048 32768 2048" "8192 32768 2048"
cutlass_probe_ncu "2048 32768 2048"
gpu_tests "racecheck"
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many\|Error" | tail -n 12
coder_ab .gpu/old/cuda
