#!/usr/bin/env bash
# Run v, call 76 (2026-12-02): deflate level 0 (every chunk stored, no entropy coding: no coder on
# encode, a copy instead of an inflate on restore) against the default level 6, alternating
# processes, on the 256 x 32 paged restore, the 8B 8K paged rows and SmolLM2 8K; first the GPU
# tests under memcheck (never run on c8eb490's 6-block encoder; the parity and paged tests now
# cross-decode level-0 records).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 3 "$OUT/build.log"
gpu_tests "memcheck"
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S8=(--shape smollm2 --tokens 8192)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]} --deflate-level 6" variant p256l6-$i "$NEW"
  VARIANT_ARGS="${P256[*]} --deflate-level 0" variant p256l0-$i "$NEW"
  VARIANT_ARGS="${K8[*]} --deflate-level 6" variant k8l6-$i "$NEW"
  VARIANT_ARGS="${K8[*]} --deflate-level 0" variant k8l0-$i "$NEW"
  VARIANT_ARGS="${S8[*]} --deflate-level 6" variant s8l6-$i "$NEW"
  VARIANT_ARGS="${S8[*]} --deflate-level 0" variant s8l0-$i "$NEW"
done
merge_variants p256l6 p256l0 k8l6 k8l0 s8l6 s8l0
