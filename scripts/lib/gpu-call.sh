# Sourced by a device call's script (.gpu/call.sh, run there as `bash .gpu/call.sh` with .gpu
# carried; the scripts that ran are committed as bench/results/gpu-DATE/N-call.sh). One shared
# deadline over the call's stages, so that what finished comes back even when a stage runs long:
#   stage "what"            prints the elapsed seconds and a label
#   left                    seconds left before DEADLINE (default 540, at least 1), for
#                           `timeout "$(left)" ...`
#   bench TAG ARGS...       the 8B shape (BENCH_SHAPES to change) through scripts/gpu-run.sh bench,
#                           REPS=3, results as $OUT/gpu-bench-TAG.json
# On exit the bench JSONs and a tarball of the logs are copied to the device tool's $OUT.
set -uo pipefail
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
  cp "$OUT"/gpu-bench*.json "$R/" 2>/dev/null
  (cd "$OUT" && tar -czf "$R/logs.tgz" --exclude='gpu-bench*.json' .)
}
trap finish EXIT
bench() {
  local tag=$1
  shift
  stage "bench $tag: $* (shapes ${BENCH_SHAPES:-8b})"
  REPS=${REPS:-3} BENCH_SHAPES="${BENCH_SHAPES:-8b}" BENCH_TAG="-$tag" BENCH_ARGS="$*" \
    timeout "$(left)" bash scripts/gpu-run.sh bench | grep -v "^==\|^{\|ninja\|^NVIDIA"
}
