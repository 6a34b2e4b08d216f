#!/usr/bin/env bash
# Run m, call 37 (2026-11-30): the restore's start reordered (coded sections staged and launched
# first, each chunk table read just before its section, raw sink and window rows last; a
# page-locked record's section CRCs checked on the host while its copy runs instead of over the
# whole record first) and the encode's read back queued before the chunk tables are written.
# Against ae78b7b (.gpu/old/cuda) in alternating processes, pageable and page-locked records
# (KVTC_PIN_RECORDS=1 with a 2 GiB record pool, so batch 8 reuses its blocks).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage "tests + memcheck"
SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
wait_old
PIN=(KVTC_PIN_RECORDS=1 KVTC_RECORD_POOL_MB=2048)
for i in 1 2; do
  variant old-$i "$OLD"
  variant new-$i "$NEW"
  variant oldpin-$i "$OLD" "${PIN[@]}"
  variant newpin-$i "$NEW" "${PIN[@]}"
done
merge_variants old new oldpin newpin
VARIANT_ARGS="--shape 8b --tokens 1024" variant old1k-1 "$OLD"
VARIANT_ARGS="--shape 8b --tokens 1024" variant new1k-1 "$NEW"
REPS=5 variant profile-new "$NEW" KVTC_CUDA_PROFILE=1
grep "device" "$OUT/variants/profile-new.err" | tail -n 4
REPS=5 variant profile-newpin "$NEW" KVTC_CUDA_PROFILE=1 "${PIN[@]}"
grep "decode device" "$OUT/variants/profile-newpin.err" | tail -n 2
