#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), then runs every test suite:
# node-tap (TypeScript + native addon), pytest (connector-py), the adversarial decoder check
# and the GPU DEFLATE coder's host check, both built with AddressSanitizer, and a compile-only
# build of the CUDA backend with nvcc from PyPI. (GPU tests run on the GPU machine:
# scripts/gpu-run.sh; here they skip with a message.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

printf '\n== tap\n'
npm test

printf '\n== SmolLM2 and its calibration for the connector tests\n'
bash scripts/prepare-smollm2.sh

printf '\n== pytest (connector-py)\n'
(cd connector-py && ../.venv/bin/python -m pytest -q)

printf '\n== decoder under AddressSanitizer\n'
npm run build:native:asan --silent >/dev/null
check=$(find build-asan -name kvtc_decode_check -type f -perm -u+x | head -n 1)
ASAN_OPTIONS=detect_leaks=1 "$check"

printf '\n== GPU DEFLATE coder, host check under AddressSanitizer\n'
cmake --build build-asan --target kvtc_huffman_check >/dev/null
ASAN_OPTIONS=detect_leaks=1 "$(find build-asan -name kvtc_huffman_check -type f -perm -u+x | head -n 1)"

printf '\n== CUDA backend compiles (nvcc from PyPI; no GPU here, nothing runs)\n'
bash scripts/cuda-compile-check.sh
