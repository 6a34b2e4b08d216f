#!/usr/bin/env bash
# Run o, call 50 (2026-12-01): call 49's fused groups came out slower than sequences alone
# (8B 256 x 32 contiguous encode 75.5 against 91.9 GB/s, 1K x 8 113.4 against 156.4): where the
# time goes. The paged many-spans test again (its spans fixed: call 49 gave one too few blocks),
# then 8B 256-token chunks x 32 (no window) and 1K x 8 with groups of 8192 (default), 4096, 2048
# coded tokens and none, and the per-record profile (KVTC_CUDA_PROFILE) of none and 8192.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
unpack_tools
NEW=$(addon_in build-gpu)
stage "paged test"
KVTC_ADDON_PATH=$NEW timeout "$(left)" node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged.tap" 2>&1
grep "^# pass\|^# fail\|^not ok" "$OUT/paged.tap"; grep -A12 "^not ok" "$OUT/paged.tap" | grep -m2 "error:" -A1
C256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0)
K1=(--shape 8b --tokens 1024 --batch 8)
for f in 0 8192 4096 2048; do
  VARIANT_ARGS="${C256[*]}" variant c256f$f-1 "$NEW" KVTC_FUSE_TOKENS=$f
done
for f in 0 8192 4096 2048; do
  VARIANT_ARGS="${C256[*]}" variant c256f$f-2 "$NEW" KVTC_FUSE_TOKENS=$f
done
for f in 0 4096 2048; do
  VARIANT_ARGS="${K1[*]}" variant k1f$f-1 "$NEW" KVTC_FUSE_TOKENS=$f
done
for f in 0 8192; do
  REPS=3 VARIANT_ARGS="${C256[*]}" variant prof256f$f "$NEW" KVTC_FUSE_TOKENS=$f KVTC_CUDA_PROFILE=1
  grep "kvtc-profile\] encode" "$OUT/variants/prof256f$f.err" | tail -n 33 | head -n 3
  grep "kvtc-profile\] encode" "$OUT/variants/prof256f$f.err" | tail -n 2
done
merge_variants c256f0 c256f8192 c256f4096 c256f2048
