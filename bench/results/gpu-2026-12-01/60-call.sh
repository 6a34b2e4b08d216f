#!/usr/bin/env bash
# Run p, call 60 (2026-12-01): the final code (7a446d5's review: one helper uploads a quantize's or
# dequantize's group tables). Every GPU test, then memcheck and racecheck over all of them, the IPC
# end to end, and the 8B rows of the session again, grouped against KVTC_FUSE_TOKENS=0 (256 x 32
# paged, 8K).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
gpu_tests "memcheck racecheck"
stage "IPC end to end"
timeout "$(left)" bash scripts/gpu-run.sh e2e 2>&1 | grep "passed\|failed\|error\|save_many\|Error" | tail -n 12
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
VARIANT_ARGS="${P256[*]}" variant p256off-1 "$NEW" KVTC_FUSE_TOKENS=0
VARIANT_ARGS="${P256[*]}" variant p256on-1 "$NEW"
variant k8on-1 "$NEW"
merge_variants p256off p256on k8on
