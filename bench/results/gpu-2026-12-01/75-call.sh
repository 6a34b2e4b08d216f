#!/usr/bin/env bash
# Run u, call 75 (2026-12-02): the encoder's occupancy. ptxas gives EncodeKernel 48 registers, so
# 5 blocks of 256 threads per SM where its 27.6 KB of shared memory allows 8, and an encode block
# waits at barriers while one thread builds its chunk's tree (run j). KVTC_ENC_MIN_BLOCKS=6 (40
# registers, 12 bytes spilled) and 8 (32 registers, 60 bytes spilled) against the default:
# huffman_gpu_check (encode bits checked against the host reference, encode timed), alternating;
# then the pipeline's encode with an addon built with 8 against the default, alternating processes.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
unpack_tools
(CUDAFLAGS=-DKVTC_ENC_MIN_BLOCKS=8 build_addon cuda build-enc8 "$OUT/cmake-enc8.log" > "$OUT/build-enc8.log" 2>&1
  echo "enc8 build rc $?" >> "$OUT/build-enc8.log") &
P=$!
w=/tmp/kvtc-gpu
B=(/usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false --expt-relaxed-constexpr -I"$w/nvcomp/include"
  -I"$w/sys/include" -Icuda/include cuda/tools/huffman_gpu_check.cu cuda/src/cuda_huffman.cu -L"$w/nvcomp/lib64" -lnvcomp
  -L"$w/sys/lib" -ldeflate)
stage "huffman_gpu_check builds: KVTC_ENC_MIN_BLOCKS 0 6 8"
for n in 0 6 8; do "${B[@]}" -DKVTC_ENC_MIN_BLOCKS=$n -o "$w/check-$n" & done
stage build; timeout "$(left)" bash scripts/gpu-run.sh build > "$OUT/build.log" 2>&1; echo "build rc $?"
wait
tail -n 1 "$OUT/build-enc8.log"
for i in 1 2; do
  for n in 0 6 8; do
    stage "huffman_gpu_check min blocks $n ($i)"
    timeout "$(left)" "$w/check-$n" > "$OUT/huffman-gpu-check-enc$n-$i.log" 2>&1
    echo "rc $?"
    grep "differ\|encode:\|^bench\|checks passed\|FAIL" "$OUT/huffman-gpu-check-enc$n-$i.log" | grep -v " 0 differ" | tail -n 12
  done
done
NEW=$(addon_in build-gpu)
ENC8=$(addon_in build-enc8)
P256=(--shape 8b --tokens 256 --batch 32 --window-tokens 0 --paged)
K8=(--shape 8b --tokens 8192 --paged)
S8=(--shape smollm2 --tokens 8192)
for i in 1 2; do
  VARIANT_ARGS="${P256[*]}" variant p256def-$i "$NEW"
  VARIANT_ARGS="${P256[*]}" variant p256enc8-$i "$ENC8"
  VARIANT_ARGS="${S8[*]}" variant s8def-$i "$NEW"
  VARIANT_ARGS="${S8[*]}" variant s8enc8-$i "$ENC8"
  VARIANT_ARGS="${K8[*]}" variant k8def-$i "$NEW"
  VARIANT_ARGS="${K8[*]}" variant k8enc8-$i "$ENC8"
done
merge_variants p256def p256enc8 s8def s8enc8 k8def k8enc8
