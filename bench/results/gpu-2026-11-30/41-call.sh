#!/usr/bin/env bash
# Run m, call 41 (2026-11-30): the final review's code (encode read back one copy per part,
# KVTC_READBACK_SLICE_MB taken out; the stored-chunk rule in one host helper; IsPageLocked public;
# build_addon / addon_in in scripts/lib/gpu-tools.sh) through the GPU tests with memcheck, built
# by the new helper, and one bench process (8B 8K) against call 39's table.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + memcheck"
SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
unpack_tools
variant new-1 "$(addon_in build-gpu)"
