#!/usr/bin/env bash
# Run v, call 77 (2026-12-02): deflate level 0 against 6 on the rows call 76 did not cover (32K
# tokens batch 8 of the three shapes, 1B 8K; one process each, 8B first, the rest last); the encoder's occupancy
# in the pipeline: c8eb490's default (KVTC_ENC_MIN_BLOCKS=6, 40 registers) against an addon built
# unbounded (0, 48 registers: the default before c8eb490), alternating processes (call 75 measured
# the pipeline only with 8 blocks).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
unpack_tools
(CUDAFLAGS=-DKVTC_ENC_MIN_BLOCKS=0 build_addon cuda build-enc0 "$OUT/cmake-enc0.log" > "$OUT/build-enc0.log" 2>&1
  echo "enc0 build rc $?" >> "$OUT/build-enc0.log") &
P=$!
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 1 "$OUT/build.log"
NEW=$(addon_in build-gpu)
VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 6" variant 8bx32l6-1 "$NEW"
VARIANT_ARGS="--shape 8b --tokens 32768 --batch 8 --deflate-level 0" variant 8bx32l0-1 "$NEW"
wait $P
tail -n 1 "$OUT/build-enc0.log"
ENC0=$(addon_in build-enc0)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S8=(--shape smollm2 --tokens 8192)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256enc6-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant p256enc0-$i "$ENC0"
  VARIANT_ARGS="${K8[*]}" variant k8enc6-$i "$NEW"
  VARIANT_ARGS="${K8[*]}" variant k8enc0-$i "$ENC0"
  VARIANT_ARGS="${S8[*]}" variant s8enc6-$i "$NEW"
  VARIANT_ARGS="${S8[*]}" variant s8enc0-$i "$ENC0"
done
for s in smollm2 1b; do
  VARIANT_ARGS="--shape $s --tokens 32768 --batch 8 --deflate-level 6" variant ${s}x32l6-1 "$NEW"
  VARIANT_ARGS="--shape $s --tokens 32768 --batch 8 --deflate-level 0" variant ${s}x32l0-1 "$NEW"
done
VARIANT_ARGS="--shape 1b --tokens 8192 --deflate-level 6" variant 1bx8l6-1 "$NEW"
VARIANT_ARGS="--shape 1b --tokens 8192 --deflate-level 0" variant 1bx8l0-1 "$NEW"
merge_variants 8bx32l6 8bx32l0 smollm2x32l6 smollm2x32l0 1bx32l6 1bx32l0 1bx8l6 1bx8l0 p256enc6 p256enc0 k8enc6 k8enc0 s8enc6 s8enc0
