#!/usr/bin/env bash
# Run q, call 65 (2026-12-01): a decode group's raw rows into one paged cache in one launch
# (ScatterRawRowsKernel; call 61 counted 16 launches of ~4 us per group of 8 records for their
# sinks). Every GPU test with memcheck and racecheck, the IPC end to end, then A/B against
# d38a6f9's addon (.gpu/old/cuda), alternating processes: 8B 256 x 32 and 256 x 16 paged, 8K
# batch 1 and 8; then the 8K rows of the 1B and SmolLM2 shapes with this tree's addon.
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
  VARIANT_ARGS="${W16[*]}" variant w16old-$i "$OLD"
  VARIANT_ARGS="${W16[*]}" variant w16new-$i "$NEW"
done
variant k8old-1 "$OLD"
variant k8new-1 "$NEW"
for shape in 1b smollm2; do VARIANT_ARGS="--shape $shape --tokens 8192" variant ${shape}new-1 "$NEW"; done
merge_variants p256old p256new w16old w16new k8old k8new 1bnew smollm2new
