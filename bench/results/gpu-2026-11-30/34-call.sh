#!/usr/bin/env bash
# Run l, call 34 (2026-11-30): an encode slices its read back only for the job's last sequence
# (call 33: slices won at batch 1, lost at batch 8 where every sequence was sliced); a restore's
# staging back to whole sections by default (call 33: no gain from slices).
# 1. GPU tests (host-side change only since call 33's memcheck).
# 2. 8B 8K batch 1 and 8 (REPS=9), two rounds of: this code, KVTC_READBACK_SLICE_MB=0; merged.
# 3. The table (REPS=9, one process per shape): SmolLM2 and 1B 8K, the three shapes at 32K, 8B
#    paged 8K, 8B rank 6144 fp8 8K.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
W=/tmp/kvtc-gpu
stage "tests"; SANITIZERS="" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|FAILED\|ERROR\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
export PATH="$W/bin:/usr/local/cuda/bin:$PATH" LD_LIBRARY_PATH="$W/sys/lib:$W/nvcomp/lib64" OPENBLAS_NUM_THREADS=16 OMP_NUM_THREADS=16
NEW=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
run() {  # run TAG [VAR=value...]
  local tag=$1
  shift
  stage "bench $tag $*"
  env "$@" KVTC_ADDON_PATH="$NEW" timeout "$(left)" node dist/src/main.js bench codec --backend cuda --json --reps 9 \
    --shape 8b --tokens 8192 > "$W/bench-$tag.json" 2> "$OUT/bench-$tag.err"
  echo "rc $?"
  node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1])).results) console.log(r.shape, r.tokens, "b" + r.batch, r.encode_gbps.toFixed(1), r.decode_gbps.toFixed(1))' "$W/bench-$tag.json"
}
for i in 1 2; do
  run new-$i
  run readback0-$i KVTC_READBACK_SLICE_MB=0
done
for v in new readback0; do
  stage "merge $v"
  node dist/src/main.js bench merge "$W"/bench-$v-*.json --json > "$OUT/gpu-bench-$v.json" 2>> "$OUT/merge.err" && node dist/src/main.js bench merge "$W"/bench-$v-*.json 2>&1 | tail -n 2
done
REPS=9 BENCH_SHAPES="smollm2 1b" bench 8k --tokens 8192
REPS=9 BENCH_SHAPES="8b smollm2 1b" bench 32k --tokens 32768
REPS=9 bench paged --tokens 8192 --paged
REPS=9 bench r6144-fp8 --tokens 8192 --rank-cap 6144 --projection fp8
