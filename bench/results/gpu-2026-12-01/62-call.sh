#!/usr/bin/env bash
# Run q, call 62 (2026-12-01): (1) the first GPU run of f31a3b9 (run p's review) and of this
# tree: a decode flight's device image split in two buffers, the coded sections' freed once
# inflated and the raw rows' once written, so the next group's copy no longer waits for the
# previous group's writes; a new GPU test restores four groups (slots reused). Every GPU test, then
# memcheck and racecheck over all, the IPC end to end. (2) A/B against f31a3b9's addon
# (.gpu/old/cuda), alternating processes: 8B 256 x 32 paged (staged and page-locked records),
# 256 x 16 (the worker's request), 8K batch 1 and 8; and KVTC_DECODE_FIRST_TOKENS=512 (a smaller
# first group).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
gpu_tests "memcheck racecheck"
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many\|Error" | tail -n 12
wait_old
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
W16=(--shape 8b --tokens 256 --batch 16 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256old-$i "$OLD"
  VARIANT_ARGS="${P256[*]}" variant p256new-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant pinold-$i "$OLD" KVTC_PIN_RECORDS=1
  VARIANT_ARGS="${P256[*]}" variant pinnew-$i "$NEW" KVTC_PIN_RECORDS=1
  VARIANT_ARGS="${P256[*]}" variant first512-$i "$NEW" KVTC_DECODE_FIRST_TOKENS=512
  VARIANT_ARGS="${W16[*]}" variant w16old-$i "$OLD"
  VARIANT_ARGS="${W16[*]}" variant w16new-$i "$NEW"
  VARIANT_ARGS="${W16[*]}" variant w16first512-$i "$NEW" KVTC_DECODE_FIRST_TOKENS=512
  variant k8old-$i "$OLD"
  variant k8new-$i "$NEW"
done
merge_variants p256old p256new pinold pinnew first512 w16old w16new w16first512 k8old k8new
