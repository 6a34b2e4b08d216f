#!/usr/bin/env bash
# Run k, call 28 (2026-11-30): the encoder's block header written by the block (call 24: 20 % of
# the EncodeKernel's stall samples were its threads waiting at a barrier for thread 0's header):
# thread 0 keeps the 19-symbol code-length code and the fixed fields, the run-length items are
# placed by a block scan and ORed into the stage. Then the table with every change of run k.
# 1. huffman_gpu_check built from call 27's coder (.gpu/old, d139f9f) and from this tree.
# 2. GPU tests with memcheck and racecheck.
# 3. Nsight Compute per kernel, 1B 8K batch 1 (EncodeKernel 123 us per stream in calls 26-27).
# 4. The table (REPS=9): 8K rows of the three shapes, 8B paged 8K, 8B rank 6144 fp8 8K, 32K rows.
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
  grep "encode kvtc\|encode:\|^bench\|checks passed\|FAIL" "$OUT/huffman-gpu-check-$v.log" | tail -n 8
done
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
ncu_kernels 1b
python3 scripts/ncu-table.py "$OUT/ncu-1b.csv" 2>&1 | grep "InflateKernel\|EncodeKernel" | head -n 4
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 8k --tokens 8192
REPS=9 bench paged --tokens 8192 --paged
REPS=9 bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
