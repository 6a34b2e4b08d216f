#!/usr/bin/env bash
# Run m, call 40 (2026-11-30): the GPU tests at the final commit (the review moved the refusal
# tests' calibration into test/helpers/calibration.ts); no sanitizer (no native code changed since
# call 38's tests and call 37's memcheck).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests"
SANITIZERS= timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|FAILED\|ERROR"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
