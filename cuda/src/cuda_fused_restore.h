// Internal to the CUDA backend: a restore's GEMM with its epilogue fused (cuda_restore_epilogue.cuh),
// X = D V^T finished in registers and written straight into a paged cache, where the two-pass path
// writes X and reads it back (ReconstructParts, then FinishParts in cuda_codec.cu). Opt-in with
// KVTC_FUSED_RESTORE=on: measured slower than the two passes (docs/benchmarks.md, runs s and t: its
// CUTLASS mainloop runs at about 1.4x cuBLAS's time with M = tokens); built only when CMake is given CUTLASS's headers
// (KVTC_CUTLASS_DIR), which define KVTC_WITH_CUTLASS.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kvtc/error.h"

namespace kvtc::cuda {

constexpr int kFusedMaxLayers = 256;  // layer bases travel in the kernel's parameters (2 KiB)

// Where and how a restore's rows land (the epilogue's parameters, cuda_restore_epilogue.cuh). Rows
// (GEMM M) are tokens, columns (GEMM N) are features (layer, kv head, dim), as the codec's
// reconstruction lays them out.
struct RestoreTarget {
  const float* mean = nullptr;                      // [N] the stream's PCA mean
  const float2* rope = nullptr;                     // cos/sin [position][head_dim / 2]; null: no RoPE (values)
  const int64_t* row_offset = nullptr;              // per row: element offset of its slot in a layer's tensor
  const int64_t* row_position = nullptr;            // per row: its row of `rope`
  __nv_bfloat16* layer_base[kFusedMaxLayers] = {};  // per layer: the stream's base (K or V part applied)
  int64_t head_stride = 0;                          // elements between kv heads of one slot (dims contiguous)
  int kv_heads = 0;
};

// One stream's restore of `rows` token rows: the GEMM's operands and where its rows land.
struct FusedRestore {
  const __nv_bfloat16* dq = nullptr;     // the dequantized coefficients [rows, ld_dq], row-major
  const __nv_bfloat16* basis = nullptr;  // the stream's basis V [features, ld_basis], row-major
  int64_t ld_dq = 0, ld_basis = 0;
  int rows = 0, features = 0, k = 0;  // k: the coefficient columns the GEMM reads (zero-padded)
  int head_dim = 0, layers = 0;
  RestoreTarget target;
};

#if defined(KVTC_WITH_CUTLASS)
// Whether this build has the fused restore, and whether it takes a layer of `features_per_layer`
// features of `head_dim` (a tile must hold whole heads of one layer).
constexpr bool kFusedRestoreBuilt = true;
bool FusedRestoreFits(int features_per_layer, int head_dim);
// Queues the fused GEMM on `stream`.
void LaunchFusedRestore(const FusedRestore& job, cudaStream_t stream);
#else
constexpr bool kFusedRestoreBuilt = false;
inline bool FusedRestoreFits(int, int) { return false; }
inline void LaunchFusedRestore(const FusedRestore&, cudaStream_t) {
  KVTC_CHECK(false, kBackendUnavailable, "this build has no fused restore (CMake's KVTC_CUTLASS_DIR was not set)");
}
#endif

}  // namespace kvtc::cuda
