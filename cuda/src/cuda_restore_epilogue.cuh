// A CUTLASS sm90 collective epilogue that finishes a restore's reconstruction X = D V^T in the
// GEMM's registers: it adds the PCA mean, re-applies neox RoPE (keys) and writes each row straight
// into its slot of a paged KV cache. The two-pass restore writes the GEMM's bf16 output and reads it
// back in a separate epilogue launch (FinishPairKernel and the other finish kernels,
// cuda_codec.cu): about 0.77 ms of a 1.07 GB restore whose GEMMs take 2.77 ms (docs/benchmarks.md,
// run q, "What 1.25x would take").
//
// Why it can be done in registers: in an sm90 wgmma accumulator fragment each thread holds two
// adjacent columns of a row in every group of 8 columns, across the whole tile width. So with a
// tile a whole number of heads wide, a thread holds both members of every neox pair (d, d + D/2) of
// its rows, and each pair of adjacent columns becomes one 4-byte store. PairPlan finds those
// partners from the fragment's static layout at compile time and refuses to compile if they are
// not where this reasoning says.
//
// Used through cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter (a non-TMA
// epilogue, stores from registers, like CUTLASS's DefaultEpilogue) with the TMA warp-specialized
// cooperative or ping-pong mainloops: the codec's fused restore (cuda_fused_restore.cu, behind
// KVTC_FUSED_RESTORE) and bench/cutlass_gemm_probe.cu. Needs CUTLASS 4.2's headers (PyPI
// nvidia-cutlass) and sm_90a.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda_fused_restore.h"  // RestoreTarget
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/gemm.h"

namespace kvtc::cuda {

// Per fragment element i of a thread (static layout `CoordLayout` of its tile coordinates, the
// thread's own offset aside): its row slot among the thread's distinct rows, and for the lead
// element of each group (an even column in the first half of a head) the elements holding column
// + 1, + D/2 and + D/2 + 1 of the same row.
template <int kSize>
struct PairPlan {
  int row_slot[kSize] = {};
  int rows = 0;
  int row_of_slot[kSize] = {};
  bool lead[kSize] = {};
  int next[kSize] = {}, partner[kSize] = {}, partner_next[kSize] = {};
  bool ok = true;
};

template <class CoordLayout, int n, int kHeadDim, bool kRope>
constexpr PairPlan<n> MakePairPlan() {
  PairPlan<n> plan;
  int row[n] = {}, col[n] = {};
  const auto coord = cute::make_coord_tensor(CoordLayout{});
  for (int i = 0; i < n; ++i) {
    row[i] = int(cute::get<0>(coord(i)));
    col[i] = int(cute::get<1>(coord(i)));
  }
  auto find = [&](int r, int c) {
    for (int j = 0; j < n; ++j)
      if (row[j] == r && col[j] == c) return j;
    return -1;
  };
  for (int i = 0; i < n; ++i) {
    int slot = -1;
    for (int s = 0; s < plan.rows; ++s)
      if (plan.row_of_slot[s] == row[i]) slot = s;
    if (slot < 0) {
      slot = plan.rows++;
      plan.row_of_slot[slot] = row[i];
    }
    plan.row_slot[i] = slot;
  }
  int leads = 0;
  for (int i = 0; i < n; ++i) {
    const int d = col[i] % kHeadDim;
    if (d % 2 != 0 || (kRope && d >= kHeadDim / 2)) continue;
    plan.lead[i] = true;
    ++leads;
    plan.next[i] = find(row[i], col[i] + 1);
    if (plan.next[i] < 0) plan.ok = false;
    if (kRope) {
      plan.partner[i] = find(row[i], col[i] + kHeadDim / 2);
      plan.partner_next[i] = find(row[i], col[i] + kHeadDim / 2 + 1);
      if (plan.partner[i] < 0 || plan.partner_next[i] < 0) plan.ok = false;
    }
  }
  // Every element is covered exactly once: 2 per lead without RoPE, 4 with.
  if (leads * (kRope ? 4 : 2) != n) plan.ok = false;
  return plan;
}

// What GemmUniversal's sm90 kernels read from an epilogue that writes the paged cache itself (C and
// D are not used) and takes a RestoreTarget: RestoreEpilogue's, and the probe's (bench/).
template <bool kRope>
struct RestoreEpilogueInterface {
  using ElementC = cutlass::bfloat16_t;
  using ElementD = cutlass::bfloat16_t;
  using StrideC = cutlass::gemm::TagToStrideC_t<cutlass::layout::RowMajor>;
  using StrideD = StrideC;
  using ElementAccumulator = float;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  using ThreadEpilogueOp = void;  // GemmUniversalAdapter names it; nothing reads it
  struct SharedStorage {};
  using TensorStorage = SharedStorage;
  using Arguments = RestoreTarget;
  using Params = RestoreTarget;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  // Whole heads per tile is checked by the callers (LaunchFusedRestore, the probe: N a multiple of the
  // tile's N, the tile's N of whole heads); here what the arguments alone decide.
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.mean && args.row_offset && args.layer_base[0] && args.kv_heads > 0 && (!kRope || args.row_position);
  }

  CUTLASS_DEVICE bool is_source_needed() { return false; }
};

template <int kHeadDim, bool kRope>
class RestoreEpilogue : public RestoreEpilogueInterface<kRope> {
 public:
  using typename RestoreEpilogueInterface<kRope>::Params;
  using typename RestoreEpilogueInterface<kRope>::SharedStorage;

  CUTLASS_HOST_DEVICE RestoreEpilogue(Params const& params, SharedStorage const& = SharedStorage()) : params_(params) {}

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_mnk,
                                 BlockCoordMNKL blk_coord_mnkl, cute::Tensor<FrgEngine, FrgLayout> const& acc,
                                 TiledMma tiled_mma, ResidueMNK, int thread_idx, char*) {
    using namespace cute;
    static_assert(is_static<BlockShapeMNK>::value, "the tile shape must be static");
    constexpr int kTileN = int(size<1>(BlockShapeMNK{}));
    static_assert(kTileN % kHeadDim == 0, "a tile must be a whole number of heads wide");

    const int M = int(get<0>(problem_shape_mnkl));
    const int m_coord = int(get<0>(blk_coord_mnkl)), n_coord = int(get<1>(blk_coord_mnkl));
    const int tile_m0 = m_coord * int(size<0>(BlockShapeMNK{})), tile_n0 = n_coord * kTileN;

    // The thread's tile coordinates: its own offset plus a static layout.
    auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
    Tensor tile_coords = thr_mma.partition_C(make_identity_tensor(take<0, 2>(blk_shape_mnk)));
    using CoordLayout = cute::remove_cvref_t<decltype(tile_coords.layout())>;
    static_assert(is_static<CoordLayout>::value, "the accumulator layout must be static");
    constexpr int kElems = decltype(size(CoordLayout{}))::value;
    constexpr auto plan = MakePairPlan<CoordLayout, kElems, kHeadDim, kRope>();
    static_assert(plan.ok, "the accumulator fragment does not hold every neox pair and adjacent column");
    static_assert(int(size(FrgLayout{})) == kElems, "accumulators and coordinates differ in size");
    const auto rel = make_coord_tensor(CoordLayout{});
    const int thr_m = int(get<0>(tile_coords(0))) - int(get<0>(rel(0)));
    const int thr_n = int(get<1>(tile_coords(0))) - int(get<1>(rel(0)));

    // Per row of the thread: where its slot is and its RoPE row (rows past M are not written).
    int64_t offset[plan.rows];
    int64_t position[plan.rows];
    bool live[plan.rows];
    CUTLASS_PRAGMA_UNROLL
    for (int s = 0; s < plan.rows; ++s) {
      const int m = tile_m0 + thr_m + plan.row_of_slot[s];
      live[s] = m < M;
      offset[s] = live[s] ? __ldg(params_.row_offset + m) : 0;
      position[s] = kRope && live[s] ? __ldg(params_.row_position + m) : 0;
    }
    // The tile lies in one layer (whole heads, and a layer is whole heads).
    const int per_layer = params_.kv_heads * kHeadDim;
    const int layer = tile_n0 / per_layer;
    __nv_bfloat16* const base = params_.layer_base[layer];

    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kElems; ++i) {
      if (!plan.lead[i]) continue;
      const int s = plan.row_slot[i];
      if (!live[s]) continue;
      const int n = tile_n0 + thr_n + int(get<1>(rel(i)));
      const int f = n - layer * per_layer;  // feature within the layer
      const int head = f / kHeadDim, d = f % kHeadDim;
      __nv_bfloat16* at = base + offset[s] + head * params_.head_stride + d;
      const float2 m0 = __ldg(reinterpret_cast<const float2*>(params_.mean + n));
      float a0 = acc(i) + m0.x, a1 = acc(plan.next[i]) + m0.y;
      if constexpr (kRope) {
        constexpr int kHalf = kHeadDim / 2;
        const float2 m1 = __ldg(reinterpret_cast<const float2*>(params_.mean + n + kHalf));
        const float b0 = acc(plan.partner[i]) + m1.x, b1 = acc(plan.partner_next[i]) + m1.y;
        // cos/sin of frequencies d and d + 1 (d even: one 16-byte load).
        const float4 cs = __ldg(reinterpret_cast<const float4*>(params_.rope + position[s] * kHalf + d));
        // a' = a cos - b sin, b' = b cos + a sin (the codec's FinishVecKernel, in the same order)
        const float ra0 = a0 * cs.x - b0 * cs.y, rb0 = b0 * cs.x + a0 * cs.y;
        const float ra1 = a1 * cs.z - b1 * cs.w, rb1 = b1 * cs.z + a1 * cs.w;
        *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(ra0, ra1);
        *reinterpret_cast<__nv_bfloat162*>(at + kHalf) = __floats2bfloat162_rn(rb0, rb1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(a0, a1);
      }
    }
  }

 private:
  Params const& params_;  // the kernel's __grid_constant__ parameters: 2 KiB of layer bases not copied per thread
};

}  // namespace kvtc::cuda
