#!/usr/bin/env bash
# Run n, call 46 (2026-11-30): a direct restore's coded sections land in the device image at their
# record address modulo 256 (call 45: a page-locked restore's keys inflated 1.6 ms in even with
# no host CRC, their 33 MB copy at about half the staged copy's speed; the one difference left is
# that the record's section and its image range were aligned differently). GPU tests with
# memcheck; against 14c6048 (.gpu/old/cuda) in alternating processes with page-locked records.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "tests + memcheck"
SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
wait_old
PIN=(KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048)
for i in 1 2; do
  variant oldpin-$i "$OLD" "${PIN[@]}"
  variant newpin-$i "$NEW" "${PIN[@]}"
done
merge_variants oldpin newpin
REPS=5 variant profile-newpin "$NEW" "${PIN[@]}" KVTC_CUDA_PROFILE=1
grep "decode device" "$OUT/variants/profile-newpin.err" | tail -n 3
variant newstag-1 "$NEW"
