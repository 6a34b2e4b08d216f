#!/usr/bin/env bash
# Planned first call of the next session (written 2026-11-30 after run i). Before it:
#   git checkout wip/next-run (main + wip/neox-pair-rows + wip/small-group-tiles; merge main into
#   it first if main moved), bash scripts/gpu-bundle.sh,
#   cp .gpu/call-next.sh .gpu/call.sh; run `DEADLINE=500 bash .gpu/call.sh` with carry [".gpu"],
#   timeout ~540, and NO `| tail` in the run command.
# 1. GPU tests + memcheck + racecheck with the paired row kernels and the small-group tiles (the
#    defaults on that branch): the row-kernels test compares paired / vector / scalar and tiles /
#    threads bit for bit.
# 2. A/B paired vs vector, and tiles vs threads (8B 8K, batch 1 and 8).
# 3. A/B KVTC_BF16_GEMM=gemmex at 32K batch 1 (run i's unexplained 8B 32K batch-1 drop).
# 4. ncu per kernel of the 8B 8K encode + decode (against call 17's: keys prologue / epilogue 431 /
#    597 us, small-group quantize / dequantize 125 / 183 us per stream).
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
ab() {  # ab TAG VAR=value: gpu-ab.sh without its tests; results as gpu-bench-TAG-{base,ab}.json
  local tag=$1
  shift
  stage "A/B $tag: $* (${AB_ARGS:---tokens 8192})"
  AB_TESTS=0 timeout "$(left)" bash scripts/gpu-ab.sh "$@" | grep "^8b\|FAILED"
  for t in base ab; do mv "$OUT/gpu-bench-$t.json" "$OUT/gpu-bench-$tag-$t.json" 2>/dev/null; done
}
ab rows KVTC_ROW_KERNELS=vector
ab small KVTC_SMALL_GROUPS=threads
AB_ARGS="--tokens 32768 --batch 1" ab gemm32k KVTC_BF16_GEMM=gemmex
ncu_kernels 8b
