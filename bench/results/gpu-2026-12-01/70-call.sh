#!/usr/bin/env bash
# Run t, call 70 (2026-12-01): the inflate back to e8348ee's decode tables (no long-code
# subtables: call 68's huffman_gpu_check had them 9 % slower, call 69's pipeline no faster). The
# GPU tests on that tree, with memcheck, and huffman_gpu_check's bit checks on the coder.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests "memcheck"
coder_ab .gpu/old/cuda
