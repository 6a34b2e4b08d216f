#!/usr/bin/env bash
# Run k, call 26 (2026-11-30): kvtc's DEFLATE coder after call 24's diagnosis.
# Inflate: the GPU bit reader cuts each refill from aligned words loaded two refills ahead (27 % of
# the 1B 8K loop's stall samples were one funnel shift waiting on the load issued at the same
# refill); the literal table grows from 10 to 12 bits and the two-literal table goes (the lanes
# took the long-code slow path at ~40 % of the warp's steps, one lane at a time; pairs rarely
# fitted in 10 bits). Encode: literal_bits summed per warp, one 64-bit shared atomicAdd per warp
# instead of a compare-and-swap loop per symbol.
# 1. huffman_gpu_check built from main's coder (.gpu/old, 6706b10) and from this tree: bits + timings.
# 2. GPU tests with memcheck and racecheck.
# 3. Nsight Compute per kernel, 1B and 8B 8K batch 1 (against calls 22 and 21).
# 4. The 8K rows of the three shapes; the 1B and SmolLM2 8K rows with OMP_WAIT_POLICY=passive
#    (run j's host stalls: libgomp's spinning team is the candidate).
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
  timeout "$(left)" "$W/check-$v" > "$OUT/huffman-gpu-check-$v.log" 2>&1; echo "rc $?"
  grep -v "^inflate lib\|^inflate kvtc streams" "$OUT/huffman-gpu-check-$v.log" | tail -n 12
done
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
ncu_kernels 1b
python3 scripts/ncu-table.py "$OUT/ncu-1b.csv" 2>&1 | grep "InflateKernel\|EncodeKernel" | head -n 4
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 8k --tokens 8192
ncu_kernels 8b
python3 scripts/ncu-table.py "$OUT/ncu-8b.csv" 2>&1 | grep "InflateKernel\|EncodeKernel" | head -n 4
OMP_WAIT_POLICY=passive REPS=9 BENCH_SHAPES="1b smollm2" bench omp-passive --tokens 8192
