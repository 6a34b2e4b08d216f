#!/usr/bin/env bash
# Run i, call 14 (2026-11-30): the cuBLASLt bf16 GEMM plans and the two-lane encode (branch run-i,
# both unmeasured). GPU tests without sanitizers first (first run of test/gpu/real-kv.test.ts,
# test/gpu/gemm.test.ts and the two-lane bit-identity test); A/B KVTC_ENCODE_LANES=2 and
# KVTC_BF16_GEMM=gemmex (the old path) on the 8B shape, 8K, batch 1 and 8; the lanes on SmolLM2
# 8K (small kernels, where overlap should matter most); bench host on this machine's CPU. The
# sanitizers and e2e go to the next call, on whatever this call keeps.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
stage "tests"; SANITIZERS="" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|error\|FAILED"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
ab() {  # ab TAG VAR=value: gpu-ab.sh without its tests; results as gpu-bench-TAG-{base,ab}.json
  local tag=$1
  shift
  stage "A/B $tag: $*"
  AB_TESTS=0 timeout "$(left)" bash scripts/gpu-ab.sh "$@" | grep "^8b\|FAILED"
  for t in base ab; do mv "$OUT/gpu-bench-$t.json" "$OUT/gpu-bench-$tag-$t.json" 2>/dev/null; done
}
ab lanes KVTC_ENCODE_LANES=2
ab gemm KVTC_BF16_GEMM=gemmex
BENCH_SHAPES=smollm2 bench smollm2-lanes1 --tokens 8192
KVTC_ENCODE_LANES=2 BENCH_SHAPES=smollm2 bench smollm2-lanes2 --tokens 8192
stage "bench host (the host CPU's copy + CRC passes)"
KVTC_ADDON_PATH=$(find build-gpu -name kvtc.node | head -n 1) LD_LIBRARY_PATH=/tmp/kvtc-gpu/sys/lib:/tmp/kvtc-gpu/nvcomp/lib64 \
  timeout "$(left)" /tmp/kvtc-gpu/bin/node dist/src/main.js bench host --reps 30 --json > "$OUT/gpu-bench-host.json"
tail -c 600 "$OUT/gpu-bench-host.json"; echo
