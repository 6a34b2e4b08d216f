#!/usr/bin/env bash
# The compression demo on stories260K (a real trained Llama-2-architecture model in shared/):
# capture its KV cache on our calibration stories, calibrate (PCA + exact DP), then compress and
# restore held-out stories and print sizes, ratio and per-layer error.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-../shared/models/stories260K/hf}
WORK=${WORK:-.cache/compress-demo}
DATA=connector-py/kvtc_connector/data
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1

echo "== capture KV of $MODEL (calibration and held-out texts)"
.venv/bin/python -m kvtc_connector.capture --model "$MODEL" --texts "$DATA/stories-calib.txt" --out "$WORK/calib-kv" --max-tokens 512
.venv/bin/python -m kvtc_connector.capture --model "$MODEL" --texts "$DATA/stories-eval.txt" --out "$WORK/eval-kv" --max-tokens 512

echo "== calibrate"
node dist/src/main.js calibrate --kv "$WORK/calib-kv" --out "$WORK/stories260k.kvtc.safetensors" --ratios 4,8,16

echo "== compress and restore held-out stories"
node examples/compress-demo/demo.mjs --calibration "$WORK/stories260k.kvtc.safetensors" --kv "$WORK/eval-kv" --window 32
