#!/usr/bin/env bash
# Run u, call 74 (2026-12-02): two runs per lane in the indexed inflate (DecodeLiteralRuns in
# cuda_huffman.h: a lane decodes runs r and r + 32 of a chunk at once, so its two chains of table
# lookups overlap). huffman_gpu_check old (d2abee3's decoder, .gpu/old/cuda) against new, with 32
# and 64 runs per chunk; the GPU tests with KVTC_ENTRY_RUNS=64 (every record the codec writes has
# two runs per lane, so the parity tests check the new path); then the pipeline with records of 32
# against 64 runs per chunk, alternating processes. Built without CUTLASS (not carried: the fused
# restore is not what this call measures; its test skips).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
tail -n 3 "$OUT/build.log"
coder_ab .gpu/old/cuda
KVTC_ENTRY_RUNS=64 gpu_tests ""
unpack_tools
NEW=$(addon_in build-gpu)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S8=(--shape smollm2 --tokens 8192)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256r32-$i "$NEW" KVTC_ENTRY_RUNS=32
  VARIANT_ARGS="${P256[*]}" variant p256r64-$i "$NEW" KVTC_ENTRY_RUNS=64
  VARIANT_ARGS="${S8[*]}" variant s8r32-$i "$NEW" KVTC_ENTRY_RUNS=32
  VARIANT_ARGS="${S8[*]}" variant s8r64-$i "$NEW" KVTC_ENTRY_RUNS=64
  VARIANT_ARGS="${K8[*]}" variant k8r32-$i "$NEW" KVTC_ENTRY_RUNS=32
  VARIANT_ARGS="${K8[*]}" variant k8r64-$i "$NEW" KVTC_ENTRY_RUNS=64
done
merge_variants p256r32 p256r64 s8r32 s8r64 k8r32 k8r64
