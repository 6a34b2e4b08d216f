#!/usr/bin/env bash
# Downstream-quality run for one model: capture (calib texts) -> calibrate (sidecar) ->
# evaluate (eval texts: kvtc through the real codec, fp8, KIVI-2bit, the seed PoC) -> plot.
#
# usage: connector-py/scripts/quality.sh stories260k|smollm2
#
# Writes .cache/quality/NAME/{kv-calib/, calibration.safetensors, poc-basis.npz, quality.json,
# per-document.json, timings.txt},
# docs/quality-NAME.json, docs/quality-NAME.{png,svg} (x: achieved ratio over all prefix tokens)
# and docs/quality-NAME-compressed.{png,svg} (x: ratio over compressed tokens, the paper's), and
# prints the results table and the time of every step.
# Environment: PYTHON (default .venv/bin/python), KVTC_SIDECAR (default node dist/src/main.js),
# MODEL (override the model path), RANK_CAP (smollm2 PCA rank cap, default 2048), THREADS.
set -euo pipefail

name="${1:-}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
sidecar="${KVTC_SIDECAR:-node $repo/dist/src/main.js}"
data="$repo/connector-py/kvtc_connector/data"
export HF_HUB_OFFLINE=1

case "$name" in
  stories260k)
    model="${MODEL:-/work/shared/models/stories260K/hf}"
    texts=stories ratios=4,8,16,32 window=32 max_tokens=512
    calib_flags=()
    ;;
  smollm2)
    model="${MODEL:-$repo/.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
    if [[ ! -e "$model" ]]; then
      "$repo/connector-py/scripts/fetch_smollm2.sh" "$(dirname "$model")"
    fi
    texts=general ratios=8,16,32,64 window=128 max_tokens=1024
    # Full rank (min(n, p) = 5760) randomized SVD is too slow on a 2-core CPU; see docs/quality.md.
    calib_flags=(--rank-cap "${RANK_CAP:-2048}")
    ;;
  *)
    echo "usage: $0 stories260k|smollm2" >&2
    exit 2
    ;;
esac

out="$repo/.cache/quality/$name"
mkdir -p "$out" "$repo/docs"
: >"$out/timings.txt"
threads=()
if [[ -n "${THREADS:-}" ]]; then threads=(--threads "$THREADS"); fi

step() {
  local label="$1"
  shift
  echo "== $label: $*" >&2
  local t0 t1
  t0="$(date +%s.%N)"
  "$@"
  t1="$(date +%s.%N)"
  awk -v l="$label" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-10s %8.1f s\n", l, b - a }' |
    tee -a "$out/timings.txt"
}

start="$(date +%s.%N)"
step capture "$py" -m kvtc_connector.capture --model "$model" \
  --texts "$data/$texts-calib.txt" --out "$out/kv-calib" --max-tokens "$max_tokens" \
  --overwrite "${threads[@]}"
# shellcheck disable=SC2086 # $sidecar is a command line
step calibrate $sidecar calibrate --kv "$out/kv-calib" --out "$out/calibration.safetensors" \
  --ratios "$ratios" --window-tokens "$window" "${calib_flags[@]}"
step evaluate "$py" -m kvtc_connector.evaluate --model "$model" \
  --calibration "$out/calibration.safetensors" --texts "$data/$texts-eval.txt" \
  --ratios "$ratios" --json "$out/quality.json" --max-tokens "$max_tokens" \
  --window-tokens "$window" --sidecar "$sidecar" --poc-kv "$out/kv-calib" --poc-cache "$out/poc-basis.npz" \
  --per-document "$out/per-document.json" "${threads[@]}"
cp "$out/quality.json" "$repo/docs/quality-$name.json"
step plot "$py" -m kvtc_connector.plot_quality --json "$out/quality.json" \
  --out "$repo/docs/quality-$name" --table
"$py" -m kvtc_connector.plot_quality --json "$out/quality.json" --x compressed \
  --out "$repo/docs/quality-$name-compressed"
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%-10s %8.1f s\n", "total", b - a }' |
  tee -a "$out/timings.txt"
