#!/usr/bin/env bash
# Compiles the CUDA backend without a GPU: every .cu file with nvcc and the addon with
# KVTC_WITH_CUDA, object files only (nothing links, nothing runs). CI has no GPU; this keeps a
# change on the CPU side from breaking the GPU build unseen. The GPU tests and benchmarks run on
# the GPU machine (scripts/gpu-bundle.sh, scripts/gpu-run.sh).
# The toolkit comes from PyPI (nvcc, runtime and cuBLAS headers, nvCOMP headers) into .cache/cudatk,
# CUTLASS's headers (nvidia-cutlass) into .cache/cutlass.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/retry.sh
source scripts/lib/retry.sh
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
T=$PWD/.cache/cudatk
W=$PWD/.cache/cuda-wheels
if [ ! -x "$T/nvidia/cu13/bin/nvcc" ] || [ ! -f "$T/nvidia/cu13/include/cublas_v2.h" ] || [ ! -f "$T/nvcomp/include/nvcomp/deflate.h" ]; then
  mkdir -p "$W" "$T"
  retry "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$W" \
    nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-nvvm==13.5.37 \
    nvidia-cuda-cccl==13.3.5.0.6 nvidia-cublas==13.10.0.20 nvidia-libnvcomp-cu13==6.0.0.12
  # Whole wheels for the compiler; headers only from the large library wheels.
  "$PY" - "$W" "$T" <<'EOF'
import pathlib, sys, zipfile
wheels, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for whl in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        headers_only = whl.name.startswith(("nvidia_cublas", "nvidia_libnvcomp"))
        for m in z.namelist():
            if headers_only and "/include/" not in m:
                continue
            out = z.extract(m, target)
            if "/bin/" in m:
                pathlib.Path(out).chmod(0o755)
# nvCOMP's headers where the CMake build expects them (NVCOMP_ROOT/include).
src = target / "nvidia" / "libnvcomp" / "include"
dst = target / "nvcomp" / "include"
dst.parent.mkdir(parents=True, exist_ok=True)
if not dst.exists():
    dst.symlink_to(src)
EOF
fi
# CUTLASS's headers for the fused restore (cuda/src/cuda_fused_restore.cu, built on the GPU machine
# when CMake is given KVTC_CUTLASS_DIR).
C=$PWD/.cache/cutlass/cutlass_library/source
if [ ! -f "$C/include/cutlass/cutlass.h" ]; then
  mkdir -p "$W"
  retry "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$W" nvidia-cutlass==4.2.0.0
  "$PY" - "$W" "$PWD/.cache/cutlass" <<'EOF2'
import pathlib, sys, zipfile
wheels, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with zipfile.ZipFile(next(wheels.glob("nvidia_cutlass-*.whl"))) as z:
    for m in z.namelist():
        if m.startswith(("cutlass_library/source/include/", "cutlass_library/source/tools/util/include/")):
            z.extract(m, target)
EOF2
fi
NVCC=$T/nvidia/cu13/bin/nvcc
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "nvcc: $("$NVCC" --version | tail -n 1)"
for f in cuda/src/*.cu cuda/tools/*.cu; do
  if [ "$f" = cuda/src/cuda_fused_restore.cu ]; then
    # As CMake builds it with KVTC_CUTLASS_DIR: sm_90a (wgmma), CUTLASS's headers.
    "$NVCC" -std=c++17 -gencode=arch=compute_90a,code=sm_90a -DKVTC_WITH_CUTLASS=1 -DNDEBUG -c "$f" -Icuda/include \
      -Icuda/src -I"$C/include" --expt-relaxed-constexpr -o "$out/$(basename "$f").o"
  else
    "$NVCC" -std=c++17 -arch=sm_90 -c "$f" -Icuda/include -Icuda/src -I"$T/nvcomp/include" \
      -fmad=false --expt-relaxed-constexpr -o "$out/$(basename "$f").o"
  fi
  echo "compiled $f"
done
# Every internal header on its own, so each carries the includes it needs (the CUTLASS epilogue
# is compiled through cuda_fused_restore.cu above).
for h in cuda/src/*.cuh; do
  [ "$h" = cuda/src/cuda_restore_epilogue.cuh ] && continue
  printf '#include "%s"\n' "$(basename "$h")" > "$out/header.cu"
  "$NVCC" -std=c++17 -arch=sm_90 -c "$out/header.cu" -Icuda/include -Icuda/src -I"$T/nvcomp/include" \
    -fmad=false --expt-relaxed-constexpr -o "$out/header.o"
  echo "compiled $h alone"
done
# The codec as built with the fused restore (its declarations instead of the stubs).
"$NVCC" -std=c++17 -arch=sm_90 -DKVTC_WITH_CUTLASS=1 -c cuda/src/cuda_codec.cu -Icuda/include -Icuda/src \
  -I"$T/nvcomp/include" -fmad=false --expt-relaxed-constexpr -o "$out/cuda_codec_cutlass.o"
echo "compiled cuda/src/cuda_codec.cu with KVTC_WITH_CUTLASS=1"
# The CUTLASS probe (bench/cutlass_gemm_probe.cu), object only.
"$NVCC" -std=c++17 -O3 -DNDEBUG -arch=sm_90a --expt-relaxed-constexpr -I"$C/include" -I"$C/tools/util/include" \
  -Icuda/include -Icuda/src -c bench/cutlass_gemm_probe.cu -o "$out/cutlass_gemm_probe.o"
echo "compiled bench/cutlass_gemm_probe.cu"
g++ -std=c++17 -c -DKVTC_WITH_CUDA=1 -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED -DNAPI_CPP_EXCEPTIONS \
  -Icuda/include -I"$(node -p "require('node-addon-api').include_dir")" -I"$(node -p "require('node-api-headers').include_dir")" \
  -I"$T/nvidia/cu13/include" -I/usr/include/x86_64-linux-gnu/openblas-pthread \
  cuda/addon/addon.cc -o "$out/addon.o"
echo "compiled cuda/addon/addon.cc with KVTC_WITH_CUDA=1"
