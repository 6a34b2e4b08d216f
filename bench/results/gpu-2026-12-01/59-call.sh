#!/usr/bin/env bash
# Run p, call 59 (2026-12-01): page-locked sections of a decode group checksummed together
# (CopyCrcMany) while their DMAs run (call 58: 117.6 GB/s against 147.9 staged, each section's CRC
# its own parallel loop). The paged and page-locked tests (a new one: a group of page-locked and
# pageable records) with memcheck; the decode group size (KVTC_DECODE_FUSE_TOKENS 1024 / 2048 /
# 4096) and page-locked records on 8B 256 x 32 paged; what the vLLM worker sends (16 chunks of 256
# per request) and the 1B and SmolLM2 shapes, grouped against KVTC_FUSE_TOKENS=0.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged and page-locked tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js dist/test/gpu/pinned.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A14 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
stage "memcheck (paged and page-locked tests)"
KVTC_ADDON_PATH=$NEW KVTC_CUDA_ENTROPY=kvtc timeout "$(left)" compute-sanitizer --tool memcheck --error-exitcode 7 \
  node --test dist/test/gpu/paged.test.js dist/test/gpu/pinned.test.js > "$OUT/sanitizer-memcheck.log" 2>&1 && echo "memcheck: clean" ||
  { echo "memcheck: FAILED"; grep -E "ERROR SUMMARY|Invalid|not ok" "$OUT/sanitizer-memcheck.log" | head -n 8; }
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant d1k-$i "$NEW" KVTC_DECODE_FUSE_TOKENS=1024
  VARIANT_ARGS="${P256[*]}" variant d2k-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant d4k-$i "$NEW" KVTC_DECODE_FUSE_TOKENS=4096
  VARIANT_ARGS="${P256[*]}" variant pin-$i "$NEW" KVTC_PIN_RECORDS=1
done
W16=(--shape 8b --tokens 256 --batch 16 --window-tokens 0 --paged)
VARIANT_ARGS="${W16[*]}" variant w16off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${W16[*]}" variant w16on-1 "$NEW"
for shape in 1b smollm2; do
  S=(--shape $shape --tokens 256 --batch 32 --window-tokens 0 --paged)
  VARIANT_ARGS="${S[*]}" variant ${shape}off-1 "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${S[*]}" variant ${shape}on-1 "$NEW"
done
merge_variants d1k d2k d4k pin w16off w16on 1boff 1bon smollm2off smollm2on
