#!/usr/bin/env bash
# Run k, call 27 (2026-11-30): two decode-side changes after call 26.
# a. DecodeLiteralRun checks the bit reader once per two literals (Need(30), then two lookups)
#    instead of once per literal: huffman_gpu_check built from call 26's coder (.gpu/old, 79d64d7)
#    and from this tree; Nsight Compute 1B 8K against call 26 (InflateKernel 250 us per stream).
# b. KVTC_DECODE_INFLATE=record (new A/B switch): one inflate launch for the keys' and values'
#    chunks of a record (twice the chunks in flight for the latency-bound inflater) instead of one
#    per section as it lands. GPU tests with memcheck on the default, and without sanitizers with
#    the switch; the 8K rows of the three shapes (REPS=9) without and with it, separate processes.
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
  grep "indexed\|^bench\|checks passed\|FAIL" "$OUT/huffman-gpu-check-$v.log" | tail -n 8
done
stage "tests + memcheck"; SANITIZERS=memcheck timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR"
mv "$OUT/gpu-tests.tap" "$OUT/gpu-tests-default.tap" 2>/dev/null
stage "tests, KVTC_DECODE_INFLATE=record"
KVTC_DECODE_INFLATE=record SANITIZERS= timeout "$(left)" bash scripts/gpu-run.sh test | grep "^not ok\|# pass\|# fail\|FAILED\|ERROR"
mv "$OUT/gpu-tests.tap" "$OUT/gpu-tests-record.tap" 2>/dev/null
ncu_kernels 1b
python3 scripts/ncu-table.py "$OUT/ncu-1b.csv" 2>&1 | grep "InflateKernel\|EncodeKernel" | head -n 4
rm -f "$OUT"/gpu-bench*.json
REPS=9 BENCH_SHAPES="1b smollm2 8b" bench section --tokens 8192
KVTC_DECODE_INFLATE=record REPS=9 BENCH_SHAPES="1b smollm2 8b" bench record --tokens 8192
