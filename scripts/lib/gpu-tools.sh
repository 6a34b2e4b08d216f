# Sourced on the GPU machine (scripts/gpu-run.sh, scripts/lib/gpu-call.sh), with .gpu/ carried
# (scripts/gpu-bundle.sh): `unpack_tools` unpacks what that machine lacks, once per machine, into
# /tmp/kvtc-gpu (Node.js, nvCOMP, OpenBLAS and libdeflate) and the tree (node_modules, and dist
# when absent), and puts them on PATH and LD_LIBRARY_PATH.
unpack_tools() {
  local w=/tmp/kvtc-gpu
  mkdir -p "$w/bin" "$w/nvcomp" "$w/sys"
  [ -x "$w/bin/node" ] || { xz -dc .gpu/node.xz > "$w/bin/node"; chmod +x "$w/bin/node"; }
  [ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
  [ -d dist ] || tar -xJf .gpu/dist.tar.xz
  [ -f "$w/nvcomp/lib64/libnvcomp.so.6" ] || tar -C "$w/nvcomp" -xJf .gpu/nvcomp.tar.xz
  [ -f "$w/sys/lib/libopenblas.so.0" ] || tar -C "$w/sys" -xJf .gpu/sys.tar.xz
  export PATH="$w/bin:/usr/local/cuda/bin:$PATH"
  export LD_LIBRARY_PATH="$w/sys/lib:$w/nvcomp/lib64:${LD_LIBRARY_PATH:-}"
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-16} OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
}
