#!/usr/bin/env bash
# Run n, call 43 (2026-11-30, nvidia-h200-x2): the CUDA backend per device (streams, handles,
# scratch and the calibration's device copy per (thread, device); a paged job on its cache's
# device) and the encode's chunk sizes published by a kernel (call 42). GPU tests with the new
# two-device test (test/gpu/devices.test.ts) and memcheck, the IPC end-to-end test, one 8B 8K and
# one 8B 1K bench process against call 42's.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
nvidia-smi -L
stage "tests + memcheck"
SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|# skip\|clean\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
grep -B2 -A30 "not ok" "$OUT/gpu-tests.tap" | head -n 60
stage "e2e"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error" | tail -n 3
variant new-1 "$(addon_in build-gpu)"
VARIANT_ARGS="--shape 8b --tokens 1024" variant new1k-1 "$(addon_in build-gpu)"
