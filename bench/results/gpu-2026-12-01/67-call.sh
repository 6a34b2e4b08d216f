#!/usr/bin/env bash
# Run s, call 67 (2026-12-01): run r's code (b2b9e5e) on a GPU for the first time. The addon builds
# with CUTLASS (the fused restore, opt-in); the GPU tests with memcheck (the new fused-restore test
# among them); then the fused restore against the two-pass one, alternating in new processes, on
# the paged rows it applies to (8B 256 x 32, 8B 8K, SmolLM2 256 x 32); then the CUTLASS probe.
# Racecheck, the IPC end to end and the inflate's subtables A/B are the next call's.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 4 "$OUT/build.log"
gpu_tests "memcheck"
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S256=(--shape smollm2 --tokens 256 --batch 32 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256off-$i "$NEW" KVTC_FUSED_RESTORE=off
  VARIANT_ARGS="${P256[*]}" variant p256on-$i "$NEW" KVTC_FUSED_RESTORE=on
  VARIANT_ARGS="${K8[*]}" variant k8off-$i "$NEW" KVTC_FUSED_RESTORE=off
  VARIANT_ARGS="${K8[*]}" variant k8on-$i "$NEW" KVTC_FUSED_RESTORE=on
  VARIANT_ARGS="${S256[*]}" variant s256off-$i "$NEW" KVTC_FUSED_RESTORE=off
  VARIANT_ARGS="${S256[*]}" variant s256on-$i "$NEW" KVTC_FUSED_RESTORE=on
done
merge_variants p256off p256on k8off k8on s256off s256on
cutlass_probe "2048 32768 2048" "8192 32768 2048"
