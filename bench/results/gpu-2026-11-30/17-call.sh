#!/usr/bin/env bash
# Run i, call 17 (2026-11-30): kvtc's DEFLATE coder with its per-chunk serial work cut (call 16's
# counters: the encode and inflate kernels are latency-bound, one chunk's serial steps setting the
# time). Encode: the block plan's long steps over the block's threads (BlockPlan), the tree's
# queue heads in registers, the header written a word at a time. Inflate: long codes decoded
# without the bit-at-a-time walk, the tables prepared by the warp, the chunk prefetched.
# 1. huffman_gpu_check built from HEAD's coder (.gpu/old) and from this tree: checks + timings.
# 2. GPU tests with memcheck and racecheck; the three shapes' table; Nsight Compute per kernel
#    (8B and SmolLM2, 8K, batch 1) against call 16's; e2e.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
W=/tmp/kvtc-gpu
mkdir -p "$W/nvcomp" "$W/sys"
[ -f "$W/nvcomp/lib64/libnvcomp.so.6" ] || tar -C "$W/nvcomp" -xJf .gpu/nvcomp.tar.xz
[ -f "$W/sys/lib/libdeflate.so" ] || tar -C "$W/sys" -xJf .gpu/sys.tar.xz
export LD_LIBRARY_PATH=$W/sys/lib:$W/nvcomp/lib64
tool() {  # tool NAME INCLUDE_DIR HUFFMAN_CU
  /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false --expt-relaxed-constexpr -I"$2" -I"$W/nvcomp/include" \
    -I"$W/sys/include" cuda/tools/huffman_gpu_check.cu "$3" -L"$W/nvcomp/lib64" -lnvcomp -L"$W/sys/lib" -ldeflate -o "$W/$1"
}
stage "huffman_gpu_check: build old and new"
tool check-old .gpu/old/include .gpu/old/src/cuda_huffman.cu & tool check-new cuda/include cuda/src/cuda_huffman.cu; wait
for v in old new; do
  stage "huffman_gpu_check $v"
  timeout "$(left)" "$W/check-$v" | tee "$R/huffman-gpu-check-$v.log" | grep -v "^inflate lib\|^inflate kvtc streams"
done
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
BENCH_SHAPES="8b smollm2 1b" bench all
export PATH=$W/bin:/usr/local/cuda/bin:$PATH KVTC_ADDON_PATH=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
M=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
for shape in 8b smollm2; do
  stage "ncu $shape"
  timeout "$(left)" ncu --clock-control none --csv --print-units base --metrics "$M" \
    node dist/src/main.js bench codec --backend cuda --json --reps 1 --shape $shape --tokens 8192 --batch 1 \
    > "$R/ncu-$shape.csv" 2> "$OUT/ncu-$shape.err"
  echo "rc $? $(wc -l < "$R/ncu-$shape.csv") lines"
done
stage e2e; timeout "$(left)" bash scripts/gpu-run.sh e2e | tail -n 2
