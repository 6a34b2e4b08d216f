#!/usr/bin/env bash
# Run p, call 57 (2026-12-01): call 56's failing test was the test's own (a span asking 4 tokens of
# a 9-token record without record_tokens), fixed. The paged tests, then memcheck and racecheck on
# them (the decode groups: one epilogue launch over a group, and the per-part fallback). Then why
# the grouped 256 x 32 restore runs at 81 GB/s while its device work adds up to well under that:
# the whole profile summed per label (scripts/profile-summary.py), page-locked records
# (KVTC_PIN_RECORDS=1: no host staging) and larger decode groups (KVTC_DECODE_FUSE_TOKENS).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A14 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
for tool in memcheck racecheck; do
  stage "$tool (paged tests)"
  KVTC_ADDON_PATH=$NEW KVTC_CUDA_ENTROPY=kvtc timeout "$(left)" compute-sanitizer --tool $tool --error-exitcode 7 \
    node --test dist/test/gpu/paged.test.js > "$OUT/sanitizer-paged-$tool.log" 2>&1 && echo "$tool: clean" ||
    { echo "$tool: FAILED"; grep -E "ERROR SUMMARY|Invalid|Race|hazard|not ok" "$OUT/sanitizer-paged-$tool.log" | head -n 8; }
done
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256 "$NEW" KVTC_CUDA_PROFILE=1
python3 scripts/profile-summary.py decode < "$OUT/variants/prof256.err"
REPS=3 VARIANT_ARGS="${P256[*]}" variant prof256pin "$NEW" KVTC_CUDA_PROFILE=1 KVTC_PIN_RECORDS=1
python3 scripts/profile-summary.py decode < "$OUT/variants/prof256pin.err"
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant d2k-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant d4k-$i "$NEW" KVTC_DECODE_FUSE_TOKENS=4096
  VARIANT_ARGS="${P256[*]}" variant d8k-$i "$NEW" KVTC_DECODE_FUSE_TOKENS=8192
  VARIANT_ARGS="${P256[*]}" variant pin-$i "$NEW" KVTC_PIN_RECORDS=1
done
merge_variants d2k d4k d8k pin
