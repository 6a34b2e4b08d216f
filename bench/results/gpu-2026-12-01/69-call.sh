#!/usr/bin/env bash
# Run t, call 69 (2026-12-01): call 68's huffman_gpu_check had the inflate with long-code subtables
# (9d32a3d) slower than e8348ee's on its micro-benchmark (113.6 against 124.9 GB/s, 16 KiB chunks;
# 38.8 against 42.4, 64 KiB). Whether that shows in the pipeline: e8348ee's addon (.gpu/old/cuda)
# against this tree's, alternating processes, on the paged rows (8B 256 x 32, 8B 8K, SmolLM2 256 x 32).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
build_old
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
wait_old
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S256=(--shape smollm2 --tokens 256 --batch 32 --window-tokens 0 --paged)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256old-$i "$OLD"
  VARIANT_ARGS="${P256[*]}" variant p256new-$i "$NEW"
  VARIANT_ARGS="${K8[*]}" variant k8old-$i "$OLD"
  VARIANT_ARGS="${K8[*]}" variant k8new-$i "$NEW"
  VARIANT_ARGS="${S256[*]}" variant s256old-$i "$OLD"
  VARIANT_ARGS="${S256[*]}" variant s256new-$i "$NEW"
done
merge_variants p256old p256new k8old k8new s256old s256new
