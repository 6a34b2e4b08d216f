#!/usr/bin/env bash
# Run o, call 54 (2026-12-01): a group's read back copied in waves of parts of up to 4 MiB as they
# land (call 53: the copies of a whole round after its last read left 8B 1K x 8 at 134.2 against
# 150.8 GB/s alone). Paged and parity GPU tests; fused (default) against KVTC_FUSE_TOKENS=0 in
# alternating processes: 8B 1K x 8 (three rounds), 256 x 32 paged and contiguous, 8K x 1 / x 8.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged and parity tests"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js dist/test/gpu/parity.test.js dist/test/gpu/pinned.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A12 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
for i in 1 2 3; do
  VARIANT_ARGS="${K1[*]}" variant k1off-$i "$NEW" KVTC_FUSE_TOKENS=0
  VARIANT_ARGS="${K1[*]}" variant k1on-$i "$NEW"
done
VARIANT_ARGS="${P256[*]}" variant p256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${P256[*]}" variant p256on-1 "$NEW"
VARIANT_ARGS="${C256[*]}" variant c256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${C256[*]}" variant c256on-1 "$NEW"
variant k8on-1 "$NEW"
merge_variants k1off k1on p256off p256on c256off c256on k8on
