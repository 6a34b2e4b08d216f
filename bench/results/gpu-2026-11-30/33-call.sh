#!/usr/bin/env bash
# Run l, call 33 (2026-11-30): call 32's encode (chunks packed on the job stream, read back in
# slices) plus a restore's staging in slices (KVTC_STAGE_SLICE_MB, default 4: each slice of a
# section sent as soon as it is staged, its CRC combined on the way); against run k's code
# (b2c6610, .gpu/old/cuda) in alternating processes, three rounds.
# 1. GPU tests with memcheck (the decode's host path changed; no kernel since call 32).
# 2. 8B 8K batch 1 and 8 (REPS=9), three rounds of: old, new, new with KVTC_READBACK_SLICE_MB=0,
#    new with KVTC_STAGE_SLICE_MB=0; merged per variant with `bench merge`.
cd "$(dirname "$0")/.."
source scripts/lib/gpu-call.sh
W=/tmp/kvtc-gpu
mkdir -p "$W/bin" "$W/nvcomp" "$W/sys"
[ -x "$W/bin/node" ] || { xz -dc .gpu/node.xz > "$W/bin/node"; chmod +x "$W/bin/node"; }
[ -f "$W/nvcomp/lib64/libnvcomp.so.6" ] || tar -C "$W/nvcomp" -xJf .gpu/nvcomp.tar.xz
[ -f "$W/sys/lib/libopenblas.so.0" ] || tar -C "$W/sys" -xJf .gpu/sys.tar.xz
[ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
export PATH="$W/bin:/usr/local/cuda/bin:$PATH"
stage "build old (b2c6610) in the background"
(cmake -S .gpu/old/cuda -B build-old -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTC_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DNVCOMP_ROOT="$W/nvcomp" -DKVTC_SYS_ROOT="$W/sys" \
  -DCMAKE_JS_INC="$(node -p "require('node-api-headers').include_dir")" > "$OUT/cmake-old.log" 2>&1 &&
  cmake --build build-old > "$OUT/build-old.log" 2>&1; echo "old build rc $?" >> "$OUT/build-old.log") &
old_pid=$!
stage "tests + memcheck"; SANITIZERS="memcheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
wait $old_pid; tail -n 1 "$OUT/build-old.log"
export LD_LIBRARY_PATH="$W/sys/lib:$W/nvcomp/lib64" OPENBLAS_NUM_THREADS=16 OMP_NUM_THREADS=16
NEW=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
OLD=$(find "$PWD/build-old" -name kvtc.node | head -n 1)
run() {  # run TAG ADDON [VAR=value...]
  local tag=$1 addon=$2
  shift 2
  stage "bench $tag $*"
  env "$@" KVTC_ADDON_PATH="$addon" timeout "$(left)" node dist/src/main.js bench codec --backend cuda --json --reps 9 \
    --shape 8b --tokens 8192 > "$W/bench-$tag.json" 2> "$OUT/bench-$tag.err"
  echo "rc $?"
  node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1])).results) console.log(r.shape, r.tokens, "b" + r.batch, r.encode_gbps.toFixed(1), r.decode_gbps.toFixed(1))' "$W/bench-$tag.json"
}
for i in 1 2 3; do
  run old-$i "$OLD"
  run new-$i "$NEW"
  run readback0-$i "$NEW" KVTC_READBACK_SLICE_MB=0
  run stage0-$i "$NEW" KVTC_STAGE_SLICE_MB=0
done
for v in old new readback0 stage0; do
  stage "merge $v"
  node dist/src/main.js bench merge "$W"/bench-$v-*.json --json > "$OUT/gpu-bench-$v.json" 2>> "$OUT/merge.err" && node dist/src/main.js bench merge "$W"/bench-$v-*.json 2>&1 | tail -n 4
done
