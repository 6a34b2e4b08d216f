#!/usr/bin/env bash
# Run o, call 55 (2026-12-01): a fused paged group's prologue in one launch (GroupRowsOf: each
# row's cache offset and position from per-row tables). The paged tests (pair and vector kernels
# over a group of five spans), the IPC end to end (stories260K's head size takes the scalar
# kernel), then 8B 256 x 32 paged fused against KVTC_FUSE_TOKENS=0, alternating.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A12 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
cp "$OUT/paged.tap" "$R/" 2>/dev/null
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many" | tail -n 8
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${P256[*]}" variant p256on-$i "$NEW"
done
merge_variants p256off p256on
