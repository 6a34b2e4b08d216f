#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with .gpu/ carried (scripts/gpu-bundle.sh):
# unpacks Node.js and the libraries, builds the addon with CUDA, runs the GPU tests (and the
# memcheck/racecheck sanitizers on them), then the GPU benchmark. Results go to $OUT (or ./out).
#   bash scripts/gpu-run.sh [test|e2e|bench|all]   (default all)
# Environment: SANITIZERS (default "memcheck racecheck"; empty: none), REPS, BENCH_PROCS, BENCH_SHAPES (default
# "8b smollm2 1b"), BENCH_ARGS (more flags of `bench codec`, e.g. "--tokens 8192 --paged" or
# "--rank-cap 6144"),
# BENCH_TAG (suffix of the result file), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
W=/tmp/kvtc-gpu
tar -xJf .gpu/dist.tar.xz  # always: the bundle's compiled TypeScript is this tree's
source scripts/lib/gpu-tools.sh
unpack_tools

echo "== build (CUDA $(nvcc --version | tail -n 1))"
build_addon cuda build-gpu "$OUT/cmake.log" > "$OUT/build.log" 2>&1 || { tail -n 30 "$OUT/build.log"; exit 1; }
tail -n 3 "$OUT/build.log"
KVTC_ADDON_PATH="$(addon_in build-gpu)"
export KVTC_ADDON_PATH
node -e "const a=require(process.env.KVTC_ADDON_PATH); console.log(JSON.stringify(a.buildInfo()))"

if [ "$what" = test ] || [ "$what" = all ]; then
  echo "== GPU tests"
  # The real-KV cross-decode test's calibration and captures (scripts/gpu-bundle.sh).
  export KVTC_GPU_CALIBRATION="$PWD/.gpu/stories260K.kvtc.safetensors" KVTC_GPU_CAPTURES="$PWD/.gpu/stories-eval"
  node --test --test-reporter=tap dist/test/gpu/ 2>&1 | tee "$OUT/gpu-tests.tap" | grep -E "^(not ok|ok|# (pass|fail|skip))" || true
  grep -q "^# fail 0" "$OUT/gpu-tests.tap" || { echo "GPU tests FAILED"; tail -n 40 "$OUT/gpu-tests.tap"; }
  for tool in ${SANITIZERS-memcheck racecheck}; do
    echo "== compute-sanitizer --tool $tool"
    # racecheck runs with kvtc's own DEFLATE coder both ways: nvCOMP 6.0's inflate_kernel (the
    # default inflater of plain chunks) reports shared-memory hazards of its own under racecheck
    # (14608 on an H200, 2026-11-30), none of them in kvtc's kernels.
    coder=${KVTC_CUDA_ENTROPY:-}
    [ "$tool" = racecheck ] && coder=kvtc
    KVTC_CUDA_ENTROPY=$coder KVTC_GPU_TEST_SMALL=1 compute-sanitizer --tool "$tool" --error-exitcode 7 node --test dist/test/gpu/ > "$OUT/sanitizer-$tool.log" 2>&1 \
      && echo "$tool: clean" || { echo "$tool: FAILED (rc $?)"; grep -E "ERROR SUMMARY|Invalid|Race|hazard" "$OUT/sanitizer-$tool.log" | head -n 10 || true; }
  done
fi

if [ "$what" = e2e ] || [ "$what" = all ]; then
  echo "== IPC end to end (Python + torch + stories260K, sidecar --backend cuda)"
  PY=$W/py
  [ -d "$PY/zmq" ] || python3 -m pip install -q --no-index --no-deps --target "$PY" .gpu/wheels/*.whl
  PYTHONPATH="$PWD/connector-py:$PY" KVTC_STORIES="$PWD/.gpu/stories260K" \
    KVTC_GPU_CALIBRATION="$PWD/.gpu/stories260K.kvtc.safetensors" \
    python3 -m pytest -p no:cacheprovider -q -s connector-py/tests/test_gpu_ipc.py 2>&1 | tee "$OUT/gpu-e2e.log" | tail -n 30
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  # One bench process per shape (BENCH_SHAPES, default all three), each kept as it finishes, so
  # a shape that fails or runs out of time keeps the others' results; merged into one JSON by
  # `bench merge`. BENCH_PROCS=N (default 1) runs the shapes N times over, each time in new
  # processes, and the merge reports per row the median over the processes with their range: some
  # processes run up to half as fast as others on the same code (docs/benchmarks.md, run k).
  echo "== GPU bench"
  merged="$OUT/gpu-bench${BENCH_TAG:-}.json"
  rm -f "$merged" "$W"/bench-part-*.json
  procs=${BENCH_PROCS:-1}
  parts=()
  for proc in $(seq 1 "$procs"); do
    for shape in ${BENCH_SHAPES:-8b smollm2 1b}; do
      part="$W/bench-part-$shape-$proc.json"
      if node dist/src/main.js bench codec --backend cuda --json --reps "${REPS:-5}" --shape "$shape" ${BENCH_ARGS:-} > "$W/bench-$shape.json" 2> "$W/bench-$shape.err"; then
        mv "$W/bench-$shape.json" "$part"
        parts+=("$part")
      else
        echo "bench $shape FAILED:"; tail -n 3 "$W/bench-$shape.err"
      fi
    done
  done
  if [ ${#parts[@]} -gt 0 ]; then
    node dist/src/main.js bench merge --json "${parts[@]}" > "$merged"
    if [ "$procs" -gt 1 ]; then node dist/src/main.js bench merge "${parts[@]}"; fi
  fi
  [ -f "$merged" ] && node -e '
    const r = require(process.argv[1]);
    console.log(`${r.gpu} ${r.date}`);
    console.log("shape   tokens batch paged  proj rank(K/V)   ratio  enc GB/s dec GB/s enc/GEMM dec/GEMM D2H GB/s pool hit/miss  vs bf16 GEMM enc/dec");
    for (const x of r.results) console.log(
      `${x.shape.padEnd(7)} ${String(x.tokens).padStart(6)} ${String(x.batch).padStart(5)} ${(x.paged ? "yes" : "no").padStart(5)} ${(x.projection ?? "bf16").padStart(5)} ${(x.rank_keys+"/"+x.rank_values).padStart(11)} ${x.ratio.toFixed(2).padStart(6)} ${x.encode_gbps.toFixed(1).padStart(8)} ${x.decode_gbps.toFixed(1).padStart(8)} ${x.gemm_ratio_encode.toFixed(2).padStart(8)} ${x.gemm_ratio_decode.toFixed(2).padStart(8)} ${x.d2h_copy_gbps.toFixed(1).padStart(8)} ${(x.record_pool_hits+"/"+x.record_pool_misses).padStart(13)}  ${(x.bf16_gemm_ratio_encode ?? x.gemm_ratio_encode).toFixed(2)}/${(x.bf16_gemm_ratio_decode ?? x.gemm_ratio_decode).toFixed(2)}`);
  ' "$merged"
fi
