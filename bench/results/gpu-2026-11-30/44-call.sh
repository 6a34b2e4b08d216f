#!/usr/bin/env bash
# Run n, call 44 (2026-11-30, nvidia-h200-x2, warm after call 43): the two-device test against the
# addon of ad0c8f8 (.gpu/old/cuda, before the per-device backend), to show it fails there; one
# 8B 8K and one 8B 1K bench process of the new addon (call 43's bench stage lacked node on PATH).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
wait_old
stage "two-device test, old addon"
KVTC_ADDON_PATH="$OLD" timeout 120 node --test --test-reporter=tap dist/test/gpu/devices.test.js > "$OUT/devices-old.tap" 2>&1
echo "rc $?"
grep "^ok\|^not ok\|# pass\|# fail\|error\|Error" "$OUT/devices-old.tap" | head -n 12
variant new-1 "$NEW"
VARIANT_ARGS="--shape 8b --tokens 1024" variant new1k-1 "$NEW"
