# Sourced on the GPU machine (scripts/gpu-run.sh, scripts/lib/gpu-call.sh), with .gpu/ carried
# (scripts/gpu-bundle.sh): `unpack_tools` unpacks what that machine lacks, once per machine, into
# /tmp/kvtc-gpu (Node.js, nvCOMP, OpenBLAS and libdeflate, CUTLASS's headers) and the tree
# (node_modules, and dist when absent), and puts them on PATH and LD_LIBRARY_PATH.
unpack_tools() {
  local w=/tmp/kvtc-gpu
  mkdir -p "$w/bin" "$w/nvcomp" "$w/sys"
  [ -x "$w/bin/node" ] || { xz -dc .gpu/node.xz > "$w/bin/node"; chmod +x "$w/bin/node"; }
  [ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
  [ -d dist ] || tar -xJf .gpu/dist.tar.xz
  [ -f "$w/nvcomp/lib64/libnvcomp.so.6" ] || tar -C "$w/nvcomp" -xJf .gpu/nvcomp.tar.xz
  [ -f "$w/sys/lib/libopenblas.so.0" ] || tar -C "$w/sys" -xJf .gpu/sys.tar.xz
  [ -d "$w/cutlass/include" ] || [ ! -f .gpu/cutlass.tar.xz ] || { mkdir -p "$w/cutlass" && tar -C "$w/cutlass" -xJf .gpu/cutlass.tar.xz; }
  export PATH="$w/bin:/usr/local/cuda/bin:$PATH"
  export LD_LIBRARY_PATH="$w/sys/lib:$w/nvcomp/lib64:${LD_LIBRARY_PATH:-}"
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-16} OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
}
# `build_addon SRC BUILD LOG`: the addon from SRC (a cuda/ tree) with CUDA into BUILD, CMake's
# configure output in LOG (after unpack_tools).
build_addon() {
  local w=/tmp/kvtc-gpu
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTC_WITH_CUDA=ON \
    -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DNVCOMP_ROOT="$w/nvcomp" -DKVTC_SYS_ROOT="$w/sys" \
    -DKVTC_CUTLASS_DIR="$([ -d "$w/cutlass/include" ] && echo "$w/cutlass")" \
    -DCMAKE_JS_INC="$(node -p "require('node-api-headers').include_dir")" > "$3" 2>&1 || { tail -n 30 "$3"; return 1; }
  cmake --build "$2"
}
# `addon_in BUILD`: the kvtc.node a build_addon of BUILD made.
addon_in() { find "$PWD/$1" -name kvtc.node | head -n 1; }
