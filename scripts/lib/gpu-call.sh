# Sourced by a device call's script (.gpu/call.sh, run there as `bash .gpu/call.sh` with .gpu
# carried; the scripts that ran are committed as bench/results/gpu-DATE/N-call.sh). One shared
# deadline over the call's stages, so that what finished comes back even when a stage runs long:
#   stage "what"            prints the elapsed seconds and a label
#   left                    seconds left before DEADLINE (default 540, at least 1), for
#                           `timeout "$(left)" ...`
#   gpu_tests [TOOLS]       builds the addon and runs the GPU tests through scripts/gpu-run.sh test,
#                           then compute-sanitizer with TOOLS (default memcheck; "" for none),
#                           printing the TAP summary and any failure; the TAP comes back as
#                           gpu-tests.tap (calls 37-48 spelled this out)
#   bench TAG ARGS...       the 8B shape (BENCH_SHAPES to change) through scripts/gpu-run.sh bench,
#                           REPS=9 (a 2 ms job's median of 3 can show a host stall: run j, call
#                           22; repetitions are cheap next to a process's setup), results as
#                           $OUT/gpu-bench-TAG.json
#   ncu_kernels SHAPE [TAG] Nsight Compute per kernel over one warm-up and one timed encode + decode
#                           (8K tokens, batch 1) of SHAPE, as ncu-SHAPE[-TAG].csv inside logs.tgz
#                           (the device tool returns few files; after a stage that built the addon;
#                           table: python3 scripts/ncu-table.py FILE)
#   coder_ab OLD_DIR        kvtc's DEFLATE coder, old against new: huffman_gpu_check (bit checks and
#                           its micro-benchmark) built from OLD_DIR/include and OLD_DIR/src/cuda_huffman.cu
#                           (e.g. .gpu/old, filled with `git show REV:cuda/...`) and from the tree,
#                           run one after the other, logs as huffman-gpu-check-{old,new}.log inside
#                           logs.tgz (calls 17 and 26-28 spelled this out)
#   build_old               builds the addon from .gpu/old/cuda (filled here before the call with
#                           `git archive REV cuda | tar -x -C .gpu/old`) into build-old, in the
#                           background (e.g. while the GPU tests run); `wait_old` waits and sets OLD
#                           to its kvtc.node (NEW: this tree's, after a gpu-run.sh stage built it)
#   variant TAG ADDON [VAR=value...]
#                           one `bench codec` process with that addon and environment: the 8B
#                           shape at 8K tokens (VARIANT_ARGS to change), REPS=9, batch 1 and 8;
#                           prints its rows, keeps its JSON for merge_variants. Alternate the
#                           variants over rounds (calls 32-34: old, new, ... three times over);
#                           BENCH_BACKEND=cpu tries the helpers on a machine without a GPU
#   merge_variants NAME...  per NAME, `bench merge` of its processes (tags NAME-1, NAME-2, ...)
#                           into $OUT/gpu-bench-NAME.json, and the merged table
#   cutlass_probe SHAPE...  builds bench/cutlass_gemm_probe.cu with this machine's nvcc and the
#                           CUTLASS headers scripts/gpu-bundle.sh carries (.gpu/cutlass.tar.xz),
#                           then runs it once per SHAPE ("T p r", e.g. "8192 32768 2048"); output
#                           as cutlass-probe.log inside logs.tgz
#   cutlass_probe_ncu SHAPE after cutlass_probe: Nsight Compute over the probe's GEMM kernels (cuBLAS's
#                           and CUTLASS's, one warm-up and one timed run each, PROBE_REPS=1) for
#                           one SHAPE: each kernel's name (cuBLAS's names its tile), time, DRAM
#                           bytes and throughputs, as cutlass-ncu.csv inside logs.tgz, and the
#                           tensor pipe's active share as cutlass-ncu-tensor.csv
# On exit the bench JSONs and a tarball of the logs are copied to the device tool's $OUT.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu-tools.sh"
R=$OUT
export OUT=/tmp/o
mkdir -p "$OUT"
t0=$(date +%s)
DEADLINE=${DEADLINE:-540}
# At least 1: `timeout 0` means no limit, and a stage that starts the second the one before it was
# killed at the deadline would then run unbounded (run h, call 13: the device call's own limit
# killed everything, and nothing came back).
left() {
  local l=$((DEADLINE - ($(date +%s) - t0)))
  echo $((l < 1 ? 1 : l))
}
stage() { echo "== [$(($(date +%s) - t0))s] $*"; }
finish() {
  stage done
  # The device tool returns few files (call 56: ten were too many, and none came back): the bench
  # JSONs travel alone only while they are few, and always inside logs.tgz.
  local n
  n=$(find "$OUT" -maxdepth 1 -name 'gpu-bench*.json' | wc -l)
  [ "$n" -le 6 ] && cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null
  (cd "$OUT" && tar -czf "$R/logs.tgz" .)
}
trap finish EXIT
gpu_tests() {
  stage "GPU tests + ${1-memcheck}"
  SANITIZERS=${1-memcheck} timeout "$(left)" bash scripts/gpu-run.sh test 2>&1 |
    grep "^ok\|^not ok\|# pass\|# fail\|# skip\|clean\|FAILED\|ERROR\|build"
  cp "$OUT/gpu-tests.tap" "$R/" 2>/dev/null
  grep -A12 "^not ok" "$OUT/gpu-tests.tap" 2>/dev/null | grep -A1 "error:" | head -n 20
}
bench() {
  local tag=$1
  shift
  stage "bench $tag: $* (shapes ${BENCH_SHAPES:-8b})"
  REPS=${REPS:-9} BENCH_SHAPES="${BENCH_SHAPES:-8b}" BENCH_TAG="-$tag" BENCH_ARGS="$*" \
    timeout "$(left)" bash scripts/gpu-run.sh bench | grep -v "^==\|^{\|ninja\|^NVIDIA"
}
ncu_kernels() {
  local shape=$1 name=ncu-$1${2:+-$2}
  stage "ncu $shape ${2:-}"
  unpack_tools  # PATH (node, ncu) and the libraries' LD_LIBRARY_PATH
  KVTC_ADDON_PATH=$(addon_in build-gpu) \
    timeout "$(left)" ncu --clock-control none --csv --print-units base \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active \
    node dist/src/main.js bench codec --backend cuda --json --reps 1 --shape "$shape" --tokens 8192 --batch 1 \
    > "$OUT/$name.csv" 2> "$OUT/$name.err"
  echo "rc $? $(wc -l < "$OUT/$name.csv") lines"
}
coder_ab() {
  local old=$1 w=/tmp/kvtc-gpu v
  unpack_tools
  local build=(/usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false --expt-relaxed-constexpr
    -I"$w/nvcomp/include" -I"$w/sys/include" cuda/tools/huffman_gpu_check.cu -L"$w/nvcomp/lib64" -lnvcomp
    -L"$w/sys/lib" -ldeflate)
  stage "huffman_gpu_check: build old ($old) and new"
  "${build[@]}" -I"$old/include" "$old/src/cuda_huffman.cu" -o "$w/check-old" &
  "${build[@]}" -Icuda/include cuda/src/cuda_huffman.cu -o "$w/check-new"
  wait
  for v in old new; do
    stage "huffman_gpu_check $v"
    timeout "$(left)" "$w/check-$v" > "$OUT/huffman-gpu-check-$v.log" 2>&1
    echo "rc $?"
    grep "indexed streams\|encode:\|^bench\|checks passed\|FAIL" "$OUT/huffman-gpu-check-$v.log" | tail -n 10
  done
}
OLD_PID=
build_old() {
  unpack_tools
  stage "build the old addon (.gpu/old/cuda) in the background"
  (build_addon .gpu/old/cuda build-old "$OUT/cmake-old.log" > "$OUT/build-old.log" 2>&1
  echo "old build rc $?" >> "$OUT/build-old.log") &
  OLD_PID=$!
}
wait_old() {
  [ -n "$OLD_PID" ] && wait "$OLD_PID"
  tail -n 1 "$OUT/build-old.log"
  OLD=$(addon_in build-old)
  NEW=$(addon_in build-gpu)
}
variant() {
  local tag=$1 addon=$2
  shift 2
  stage "bench $tag $*"
  mkdir -p "$OUT/variants"
  env "$@" KVTC_ADDON_PATH="$addon" timeout "$(left)" node dist/src/main.js bench codec --backend "${BENCH_BACKEND:-cuda}" \
    --json --reps "${REPS:-9}" ${VARIANT_ARGS:---shape 8b --tokens 8192} > "$OUT/variants/$tag.json" 2> "$OUT/variants/$tag.err"
  echo "rc $?"
  node -e 'for (const r of JSON.parse(require("fs").readFileSync(process.argv[1])).results)
    console.log(r.shape, r.tokens, "b" + (r.batch ?? 1), "ratio " + r.ratio.toFixed(2), r.encode_gbps.toFixed(1),
      r.decode_gbps.toFixed(1), "x GEMM " + r.gemm_ratio_encode.toFixed(2) + " / " + r.gemm_ratio_decode.toFixed(2),
      "fused " + (r.fused_restores ?? "-"))' \
    "$OUT/variants/$tag.json"
}
cutlass_probe() {
  local w=/tmp/kvtc-gpu/cutlass shape
  unpack_tools  # CUTLASS's headers into $w
  stage "cutlass probe: build"
  timeout "$(left)" /usr/local/cuda/bin/nvcc -O3 -DNDEBUG -std=c++17 -arch=sm_90a --expt-relaxed-constexpr \
    -I"$w/include" -I"$w/tools/util/include" -Icuda/include -Icuda/src bench/cutlass_gemm_probe.cu -lcublas -o /tmp/kvtc-probe \
    > "$OUT/cutlass-probe-build.log" 2>&1
  echo "build rc $?"
  for shape in "$@"; do
    stage "cutlass probe $shape"
    # shellcheck disable=SC2086 # the shape is three numbers
    timeout "$(left)" /tmp/kvtc-probe $shape 2>&1 | tee -a "$OUT/cutlass-probe.log"
  done
}
cutlass_probe_ncu() {
  local m=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size
  m+=,sm__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed
  m+=,dram__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_elapsed
  stage "cutlass probe under ncu: $1"
  # shellcheck disable=SC2086 # the shape is three numbers
  PROBE_REPS=1 timeout "$(left)" ncu --clock-control none --csv --print-units base -k 'regex:gemm|device_kernel' \
    --metrics "$m" /tmp/kvtc-probe $1 > "$OUT/cutlass-ncu.csv" 2> "$OUT/cutlass-ncu.err"
  echo "rc $? $(wc -l < "$OUT/cutlass-ncu.csv") lines"
  # A metric of its own: a name this ncu does not know fails the whole run.
  # shellcheck disable=SC2086
  PROBE_REPS=1 timeout "$(left)" ncu --clock-control none --csv --print-units base -k 'regex:gemm|device_kernel' \
    --metrics gpu__time_duration.sum,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed \
    /tmp/kvtc-probe $1 > "$OUT/cutlass-ncu-tensor.csv" 2>> "$OUT/cutlass-ncu.err"
  echo "rc $? $(wc -l < "$OUT/cutlass-ncu-tensor.csv") lines"
}
merge_variants() {
  local name
  for name in "$@"; do
    stage "merge $name"
    node dist/src/main.js bench merge "$OUT/variants/$name"-[0-9]*.json --json > "$OUT/gpu-bench-$name.json" &&
      node dist/src/main.js bench merge "$OUT/variants/$name"-[0-9]*.json | tail -n +3
  done
}
