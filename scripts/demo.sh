#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then run the multi-turn chat example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash examples/multi-turn-chat/run.sh "$@"
