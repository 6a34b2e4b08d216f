#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then run the compression demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash examples/compress-demo/run.sh
