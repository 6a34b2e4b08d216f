#!/usr/bin/env bash
# Run l, call 32 (2026-11-30): an encode's chunks packed on the job stream (ChunkOffsetsKernel +
# PackChunksKernel right after the coder) and read back in slices (KVTC_READBACK_SLICE_MB, default
# 4) each copied into the record with its CRC while the next is in flight; against run k's code
# (b2c6610, built from .gpu/old/cuda) in alternating processes of this call.
# 1. GPU tests with memcheck and racecheck (the cross-decode matrix now has a cuda-odd record:
#    chunks of 1002 bytes), while the old addon builds.
#    With KVTC_PIN_RECORDS=1 the read back lands in the page-locked record itself (CRC only).
# 2. 8B 8K batch 1 and 8 (REPS=9): old, new, new pinned, new with KVTC_READBACK_SLICE_MB=0, old,
#    new, new pinned.
# 3. One profiled new process (KVTC_CUDA_PROFILE=1), 8B 8K batch 1.
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
stage "tests + sanitizers"; SANITIZERS="memcheck racecheck" timeout "$(left)" bash scripts/gpu-run.sh test | grep "^ok\|^not ok\|# pass\|# fail\|clean\|FAILED\|ERROR\|hazard\|build"
cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
wait $old_pid; tail -n 2 "$OUT/build-old.log"
export LD_LIBRARY_PATH="$W/sys/lib:$W/nvcomp/lib64" OPENBLAS_NUM_THREADS=16 OMP_NUM_THREADS=16
NEW=$(find "$PWD/build-gpu" -name kvtc.node | head -n 1)
OLD=$(find "$PWD/build-old" -name kvtc.node | head -n 1)
run() {  # run TAG ADDON [VAR=value...]
  local tag=$1 addon=$2
  shift 2
  stage "bench $tag $*"
  env "$@" KVTC_ADDON_PATH="$addon" timeout "$(left)" node dist/src/main.js bench codec --backend cuda --json --reps 9 \
    --shape 8b --tokens 8192 > "$OUT/gpu-bench-$tag.json" 2> "$OUT/bench-$tag.err"
  echo "rc $?"
  node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1])).results) console.log(r.shape, r.tokens, "b" + r.batch, r.encode_gbps.toFixed(1), r.decode_gbps.toFixed(1), "ratio", r.ratio.toFixed(2))' "$OUT/gpu-bench-$tag.json"
}
run old-1 "$OLD"
run new-1 "$NEW"
run pin-1 "$NEW" KVTC_PIN_RECORDS=1
run new-slice0-1 "$NEW" KVTC_READBACK_SLICE_MB=0
run old-2 "$OLD"
run new-2 "$NEW"
run pin-2 "$NEW" KVTC_PIN_RECORDS=1
stage "profile new"
KVTC_CUDA_PROFILE=1 KVTC_ADDON_PATH="$NEW" timeout "$(left)" node dist/src/main.js bench codec --backend cuda --json --reps 5 \
  --shape 8b --tokens 8192 --batch 1 > "$OUT/gpu-bench-new-profile.json" 2> "$OUT/profile-new.txt"
grep "encode device" "$OUT/profile-new.txt" | tail -n 2 | cut -c1-600
