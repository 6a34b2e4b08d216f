#!/usr/bin/env bash
# Run q, call 63 (2026-12-01): call 62's new test (a restore of four groups, records with sinks and
# windows) failed on its first assertion (record 1 keys: sinks, restored grouped). It now checks
# every record before failing, against the record's own raw rows (CPU decoder) and the restore
# alone. Run with this tree's addon and f31a3b9's (.gpu/old/cuda), and with the encode's and the
# decode's groups switched off (KVTC_FUSE_TOKENS=0, KVTC_DECODE_FUSE_TOKENS=0), to find which stage
# is wrong. Then the 1B and SmolLM2 shapes at 8K, new against old.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "build new"
build_addon cuda build-gpu "$OUT/cmake.log" > "$OUT/build.log" 2>&1; echo "new build rc $?"
wait_old
paged_test() {
  local tag=$1 addon=$2
  shift 2
  stage "paged test $tag $*"
  env "$@" KVTC_ADDON_PATH="$addon" timeout 120 node --test --test-reporter=tap dist/test/gpu/paged.test.js > "$OUT/paged-$tag.tap" 2>&1
  grep "^ok\|^not ok" "$OUT/paged-$tag.tap"
  grep -A40 "^not ok" "$OUT/paged-$tag.tap" | grep "record [0-9]\|error:" | head -n 30
}
paged_test new "$NEW"
paged_test old "$OLD"
paged_test new-decode-alone "$NEW" KVTC_DECODE_FUSE_TOKENS=0
paged_test new-all-alone "$NEW" KVTC_FUSE_TOKENS=0
paged_test old-decode-alone "$OLD" KVTC_DECODE_FUSE_TOKENS=0
for shape in 1b smollm2; do
  VARIANT_ARGS="--shape $shape --tokens 8192" variant ${shape}old-1 "$OLD"
  VARIANT_ARGS="--shape $shape --tokens 8192" variant ${shape}new-1 "$NEW"
done
merge_variants 1bold 1bnew smollm2old smollm2new
