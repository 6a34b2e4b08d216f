// Probe, not product code: the restore's GEMM, X[T, p] = D[T, r] V[p, r]^T (fp32 accumulation), with
// CUTLASS sm90 warp-specialized kernels against cuBLAS in the same process:
// - plain CUTLASS GEMMs (bf16 out), against cuBLAS's of the same shape;
// - the same GEMM with the restore's epilogue fused (cuda/src/cuda_restore_epilogue.cuh: PCA mean,
//   neox RoPE for keys, each row written into its slot of a paged cache of the FlashAttention layout
//   in shuffled blocks), for keys and values, checked element by element against cuBLAS (fp32 out)
//   followed by a plain reference epilogue kernel, and timed against the GEMM alone.
// The question it answers: can the epilogue pass the codec runs today after its cuBLAS GEMM (about
// 0.77 of 2.77 ms GEMM time per 1.07 GB restored) ride inside the GEMM for free, which the 1.25x
// target needs (docs/benchmarks.md, run q, "What 1.25x would take").
// Status: run on an H200 in call 67 (bench/results/gpu-2026-12-01/67-cutlass-probe.log): every CUTLASS
// tile about 1.4x cuBLAS, the fused ones agreeing exactly; call 68 (68-cutlass-probe.log) added the
// 256 x 128 tiles, the tile walks (no better) and the other orientation, M = features (1.07-1.15x).
// The epilogue's pairing of columns is checked at compile time (PairPlan) for every fused tile shape.
// Call 71 (71-cutlass-probe.log) added the fused epilogue in that orientation (FusedByFeature: V's
// rows permuted so each 16-row slab holds dims a..a+7 and a+D/2..a+D/2+7, movmatrix.trans for 4-byte
// token-major stores): exact, but 1.34-1.80x cuBLAS, no better than M = tokens. Calls 72-73 took its
// epilogue apart (ByFeatureStores): the slots loaded ahead of the transposes (kBatched) bring values
// to 1.11x (T = 2048) and 1.20x (T = 8192), keys to 1.38-1.63x; with nothing stored the kernel is
// already 1.0-1.18x at T = 8192. Where that leaves the fused restore: docs/benchmarks.md, run u.
//
// On the GPU machine: `cutlass_probe "2048 32768 2048" "8192 32768 2048"` in a device call's script
// (scripts/lib/gpu-call.sh; scripts/gpu-bundle.sh carries CUTLASS's headers from PyPI as
// .gpu/cutlass.tar.xz) builds it with that machine's nvcc and runs it once per shape (T p r, p a
// multiple of 8 x 128). To compile it here (about a minute on 2 cores; -DNDEBUG, or device asserts
// serialize the wgmma pipeline):
//   pip download nvidia-cutlass==4.2.0.0 --no-deps -d /tmp/cutlass
//   unzip -q /tmp/cutlass/*.whl 'cutlass_library/source/include/*' \
//     'cutlass_library/source/tools/util/include/*' -d .cache/cutlass
//   I=.cache/cutlass/cutlass_library/source
//   .cache/cudatk/nvidia/cu13/bin/nvcc -O3 -DNDEBUG -std=c++17 -arch=sm_90a --expt-relaxed-constexpr \
//     -I$I/include -I$I/tools/util/include -Icuda/include -Icuda/src -c bench/cutlass_gemm_probe.cu -o /tmp/probe.o
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cuda_restore_epilogue.cuh"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

using ElementA = cutlass::bfloat16_t;  // D: [T, r], K contiguous
using LayoutA = cutlass::layout::RowMajor;
using ElementB = cutlass::bfloat16_t;  // V: [p, r], K contiguous (column-major K x N)
using LayoutB = cutlass::layout::ColumnMajor;
using ElementC = cutlass::bfloat16_t;  // X: [T, p]
using LayoutC = cutlass::layout::RowMajor;
constexpr int kAlign = 8;
using ElementAccumulator = float;

// Median time (ms) of `reps` runs of `run` after one warm-up, or -1 if a run fails.
template <class Run>
float MedianMs(Run&& run, int reps) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps + 1; ++i) {
    CHECK(cudaEventRecord(a));
    if (!run()) break;
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    if (i) ms.push_back(t);  // the first run warms up
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (ms.size() != size_t(reps)) return -1.f;
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median time (ms) of `reps` runs of a CUTLASS GEMM, or a negative value if CUTLASS refuses it
// (-1) or fails to set it up (-2).
template <class Gemm>
float TimeGemm(const typename Gemm::Arguments& args, int reps) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return -1.f;
  void* workspace = nullptr;
  const size_t ws = Gemm::get_workspace_size(args);
  if (ws) CHECK(cudaMalloc(&workspace, ws));
  float t = -2.f;
  if (gemm.initialize(args, workspace) == cutlass::Status::kSuccess)
    t = MedianMs([&] { return gemm.run() == cutlass::Status::kSuccess; }, reps);
  if (workspace) cudaFree(workspace);
  return t;
}

// How the persistent tile scheduler walks the tiles: CUTLASS's heuristic (along M when there are
// more N tiles, as here), or one order forced, with a swizzle (tiles of one group share operands in L2).
struct Walk {
  const char* name = "";
  cutlass::gemm::kernel::detail::RasterOrderOptions raster = cutlass::gemm::kernel::detail::RasterOrderOptions::Heuristic;
  int swizzle = 1;
};

// A plain GEMM, bf16 out. kTransposed: computes X^T [p, T] = V D^T instead (M = features, N =
// tokens, X^T column-major is X row-major), cuBLAS's own orientation, to see whether it matters.
template <class TileShape, class ClusterShape, class Schedule = cutlass::gemm::collective::KernelScheduleAuto,
          bool kTransposed = false>
struct Probe {
  using LayoutOut = std::conditional_t<kTransposed, cutlass::layout::ColumnMajor, LayoutC>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator, ElementC, LayoutOut,
      kAlign, ElementC, LayoutOut, kAlign, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlign, ElementB, LayoutB, kAlign,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Median time (ms) of `reps` runs of X = D V^T, or a negative value if CUTLASS refuses the shape.
  static float Time(int T, int p, int r, const ElementA* d, const ElementB* v, ElementC* x, int reps,
                    const Walk& walk = {}) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    const int M = kTransposed ? p : T, N = kTransposed ? T : p;
    const ElementA* a = kTransposed ? v : d;
    const ElementB* b = kTransposed ? d : v;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, r, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, r, 1));
    StrideC sc = cutlass::make_cute_packed_stride(StrideC{}, make_shape(M, N, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(M, N, 1));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm, {M, N, r, 1}, {a, sa, b, sb}, {{1.0f, 0.0f}, x, sc, x, sd}};
    args.scheduler.raster_order = walk.raster;
    args.scheduler.max_swizzle_size = walk.swizzle;
    CHECK(cudaMemset(x, 0, size_t(M) * N * sizeof(ElementC)));  // so a GEMM that wrote nothing cannot agree
    return TimeGemm<Gemm>(args, reps);
  }
};

constexpr int kHeadDim = 128;
// A GEMM with a restore epilogue fused: no output matrix, the rows go to the cache. M = tokens
// (X = D V^T), or with kByFeature M = features (X^T = V' D^T, V' = PermuteRows(V)).
template <class Epilogue, class TileShape, class ClusterShape, class Schedule, bool kByFeature>
struct FusedGemm {
  using CollectiveEpilogue = cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<Epilogue>;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlign, ElementB, LayoutB, kAlign,
      ElementAccumulator, TileShape, ClusterShape, cutlass::gemm::collective::StageCountAuto, Schedule>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Median time (ms) of `reps` fused restores into `target` (v: V, or V' with kByFeature), or a
  // negative value if refused.
  static float Time(int T, int p, int r, const ElementA* d, const ElementB* v, const kvtc::cuda::RestoreTarget& target,
                    int reps) {
    // A tile's feature extent must hold whole heads of one layer.
    const int tile_features = kByFeature ? int(size<0>(TileShape{})) : int(size<1>(TileShape{}));
    if ((target.kv_heads * kHeadDim) % tile_features != 0) return -3.f;
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    const int M = kByFeature ? p : T, N = kByFeature ? T : p;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(M, r, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(N, r, 1));
    const ElementA* a = kByFeature ? v : d;
    const ElementB* b = kByFeature ? d : v;
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm, {M, N, r, 1}, {a, sa, b, sb}, target};
    return TimeGemm<Gemm>(args, reps);
  }
};
template <class TileShape, class ClusterShape, class Schedule, bool kRope>
using Fused = FusedGemm<kvtc::cuda::RestoreEpilogue<kHeadDim, kRope>, TileShape, ClusterShape, Schedule, false>;

// The fused restore with M = features (X^T = V' D^T), the orientation in which CUTLASS's GEMM ran at
// 1.07-1.15x cuBLAS in call 68 (M = tokens: 1.4x). Two things make its epilogue work in registers:
// - V's rows are reordered (V' = PermuteRows(V)) so that in every 16-row slab of a head, rows 0-7
//   are dims a..a+7 and rows 8-15 dims a+D/2..a+D/2+7 (a = 8 x slab). A wgmma fragment holds rows r
//   and r + 8 of the same columns in one thread, so it holds both members of every neox pair, in any
//   tile and schedule.
// - Each 8 x 8 block (8 feature rows x 8 tokens; a thread has two adjacent tokens of one row) is
//   transposed across the warp with movmatrix, after which a lane has two adjacent features of one
//   token: one 4-byte store, 16 contiguous bytes per token across a quad, as in RestoreEpilogue.
template <int kHeadDim>
__host__ __device__ constexpr int DimOfRow(int q) {  // q: the row within its head, in V' order
  const int slab = q / 16, w = q % 16;
  return w < 8 ? 8 * slab + w : kHeadDim / 2 + 8 * slab + (w - 8);
}

// What RestoreEpilogueByFeature stores (call 72's ablations of call 71's 1.34-1.80x): kTransposed
// as built; kDirect without the transposes, each element 2 bytes into its slot; kNoLoads transposed
// but each token's slot at token x slot stride (no load of row_offset; timing only, the slots are
// wrong); kNoStores nothing (timing only: the GEMM and the epilogue's arithmetic). Call 72 had the
// transposed stores at 1.26-1.38x cuBLAS (T = 2048) but 1.03-1.19x without their loads: each
// StoreBlock's load of its token's slot came after a (volatile, warp-synchronous) movmatrix, so the
// 64 loads of a thread waited one after the other. kBatched (call 73) loads the slots (and, for
// keys, the positions, then the RoPE factors) of 8 leads at a time before any of their transposes.
enum class ByFeatureStores { kTransposed, kDirect, kNoLoads, kNoStores, kBatched };

template <int kHeadDim, bool kRope, ByFeatureStores kStores = ByFeatureStores::kTransposed>
class RestoreEpilogueByFeature : public kvtc::cuda::RestoreEpilogueInterface<kRope> {
 public:
  using typename kvtc::cuda::RestoreEpilogueInterface<kRope>::Params;
  using typename kvtc::cuda::RestoreEpilogueInterface<kRope>::SharedStorage;

  CUTLASS_HOST_DEVICE RestoreEpilogueByFeature(Params const& params, SharedStorage const& = SharedStorage())
      : params_(params) {}

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_mnk,
                                 BlockCoordMNKL blk_coord_mnkl, cute::Tensor<FrgEngine, FrgLayout> const& acc,
                                 TiledMma tiled_mma, ResidueMNK, int thread_idx, char*) {
    using namespace cute;
    static_assert(is_static<BlockShapeMNK>::value, "the tile shape must be static");
    constexpr int kTileM = int(size<0>(BlockShapeMNK{}));
    static_assert(kTileM % kHeadDim == 0, "a tile must be a whole number of heads tall");
    const int N = int(get<1>(problem_shape_mnkl));  // tokens
    const int tile_m0 = int(get<0>(blk_coord_mnkl)) * kTileM;
    const int tile_n0 = int(get<1>(blk_coord_mnkl)) * int(size<1>(BlockShapeMNK{}));

    auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
    Tensor tile_coords = thr_mma.partition_C(make_identity_tensor(take<0, 2>(blk_shape_mnk)));
    using CoordLayout = cute::remove_cvref_t<decltype(tile_coords.layout())>;
    static_assert(is_static<CoordLayout>::value, "the accumulator layout must be static");
    constexpr int kElems = decltype(size(CoordLayout{}))::value;
    // The partners, at compile time: per lead element (even column, a lead row: row % 16 < 8), the
    // elements at column + 1, row + 8 and both.
    constexpr auto plan = [] {
      struct Plan {
        bool lead[kElems] = {};
        int next[kElems] = {}, below[kElems] = {}, below_next[kElems] = {};
        int leads[kElems] = {};  // the lead elements, in order (kElems / 4 of them)
        bool ok = true;
      } p;
      int row[kElems] = {}, col[kElems] = {};
      const auto coord = make_coord_tensor(CoordLayout{});
      for (int i = 0; i < kElems; ++i) {
        row[i] = int(get<0>(coord(i)));
        col[i] = int(get<1>(coord(i)));
      }
      auto find = [&](int r, int c) {
        for (int j = 0; j < kElems; ++j)
          if (row[j] == r && col[j] == c) return j;
        return -1;
      };
      int leads = 0;
      for (int i = 0; i < kElems; ++i) {
        if (col[i] % 2 != 0 || row[i] % 16 >= 8) continue;
        p.lead[i] = true;
        p.leads[leads++] = i;
        p.next[i] = find(row[i], col[i] + 1);
        p.below[i] = find(row[i] + 8, col[i]);
        p.below_next[i] = find(row[i] + 8, col[i] + 1);
        if (p.next[i] < 0 || p.below[i] < 0 || p.below_next[i] < 0) p.ok = false;
      }
      if (leads * 4 != kElems) p.ok = false;
      return p;
    }();
    static_assert(plan.ok, "the accumulator fragment does not hold rows r and r + 8 and adjacent columns");
    const auto rel = make_coord_tensor(CoordLayout{});
    const int thr_m = int(get<0>(tile_coords(0))) - int(get<0>(rel(0)));
    const int thr_n = int(get<1>(tile_coords(0))) - int(get<1>(rel(0)));
    const int lane = thread_idx % 32;

    const int per_layer = params_.kv_heads * kHeadDim;
    const int layer = tile_m0 / per_layer;  // the tile lies in one layer
    __nv_bfloat16* const base = params_.layer_base[layer];
    constexpr int kHalf = kHeadDim / 2;

    if constexpr (kStores == ByFeatureStores::kBatched) {
      constexpr int kLeads = kElems / 4, kBatch = kRope ? 4 : 8;  // keys: 8 spilled (the RoPE factors)
      static_assert(kLeads % kBatch == 0, "leads come in batches");
      // A compile-time batch index: with a runtime one (the loop not unrolled) `plan` went to the stack
      // (2.7 KB per thread).
      cute::for_each(cute::make_int_sequence<kLeads / kBatch>{}, [&](auto batch) {
        constexpr int b0 = decltype(batch)::value * kBatch;
        int64_t slot[kBatch];
        [[maybe_unused]] int64_t pos0[kBatch], pos1[kBatch];  // keys only
        [[maybe_unused]] float2 cs0[kBatch], cs1[kBatch];
        // Each lead's element index a constant too (`plan` read only in constant expressions).
        cute::for_each(cute::make_int_sequence<kBatch>{}, [&](auto jj) {
          constexpr int j = decltype(jj)::value, i = plan.leads[b0 + j];
          const int n = tile_n0 + thr_n + int(get<1>(rel(i)));
          const int token = (n & ~7) + lane / 4;  // the token this lane stores after the transposes
          slot[j] = __ldg(params_.row_offset + (token < N ? token : 0));
          if constexpr (kRope) {
            pos0[j] = __ldg(params_.row_position + (n < N ? n : 0));
            pos1[j] = __ldg(params_.row_position + (n + 1 < N ? n + 1 : 0));
          }
        });
        if constexpr (kRope) {
          cute::for_each(cute::make_int_sequence<kBatch>{}, [&](auto jj) {
            constexpr int j = decltype(jj)::value, i = plan.leads[b0 + j];
            const int m = tile_m0 + thr_m + int(get<0>(rel(i)));
            const int d = DimOfRow<kHeadDim>((m - layer * per_layer) % kHeadDim);
            cs0[j] = __ldg(params_.rope + pos0[j] * kHalf + d);
            cs1[j] = __ldg(params_.rope + pos1[j] * kHalf + d);
          });
        }
        cute::for_each(cute::make_int_sequence<kBatch>{}, [&](auto jj) {
          constexpr int j = decltype(jj)::value, i = plan.leads[b0 + j];
          constexpr int i_next = plan.next[i], i_below = plan.below[i], i_below_next = plan.below_next[i];
          const int m = tile_m0 + thr_m + int(get<0>(rel(i)));
          const int n = tile_n0 + thr_n + int(get<1>(rel(i)));
          const int f_local = m - layer * per_layer, head = f_local / kHeadDim;
          const int d = DimOfRow<kHeadDim>(f_local % kHeadDim);
          const int f = layer * per_layer + head * kHeadDim + d;
          const float mean_a = __ldg(params_.mean + f), mean_b = __ldg(params_.mean + f + kHalf);
          float a0 = acc(i) + mean_a, a1 = acc(i_next) + mean_a;
          float b0v = acc(i_below) + mean_b, b1 = acc(i_below_next) + mean_b;
          if constexpr (kRope) {
            const float2 c0 = cs0[j], c1 = cs1[j];
            const float ra0 = a0 * c0.x - b0v * c0.y, rb0 = b0v * c0.x + a0 * c0.y;
            const float ra1 = a1 * c1.x - b1 * c1.y, rb1 = b1 * c1.x + a1 * c1.y;
            a0 = ra0, a1 = ra1, b0v = rb0, b1 = rb1;
          }
          const int token = (n & ~7) + lane / 4;
          StoreBlockAt(base + slot[j] + head * params_.head_stride, (m & ~7) - layer * per_layer, lane,
                       token < N, __floats2bfloat162_rn(a0, a1));
          StoreBlockAt(base + slot[j] + head * params_.head_stride, (m & ~7) + 8 - layer * per_layer, lane,
                       token < N, __floats2bfloat162_rn(b0v, b1));
        });
      });
    } else {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kElems; ++i) {
        if (!plan.lead[i]) continue;
        const int m = tile_m0 + thr_m + int(get<0>(rel(i)));  // a lead row (V' order)
        const int n = tile_n0 + thr_n + int(get<1>(rel(i)));  // even token
        const int f_local = m - layer * per_layer, head = f_local / kHeadDim;
        const int d = DimOfRow<kHeadDim>(f_local % kHeadDim);  // its partner row m + 8 has d + D/2 (RoPE)
        const int f = layer * per_layer + head * kHeadDim + d;
        const float mean_a = __ldg(params_.mean + f);
        const float mean_b = __ldg(params_.mean + f + kHalf);  // row m + 8 is dim d + D/2 in V' order
        float a0 = acc(i) + mean_a, a1 = acc(plan.next[i]) + mean_a;
        float b0 = acc(plan.below[i]) + mean_b, b1 = acc(plan.below_next[i]) + mean_b;
        if constexpr (kRope) {
          const int n1 = n + 1 < N ? n + 1 : n;
          const float2 c0 = __ldg(params_.rope + __ldg(params_.row_position + (n < N ? n : 0)) * kHalf + d);
          const float2 c1 = __ldg(params_.rope + __ldg(params_.row_position + (n1 < N ? n1 : 0)) * kHalf + d);
          const float ra0 = a0 * c0.x - b0 * c0.y, rb0 = b0 * c0.x + a0 * c0.y;
          const float ra1 = a1 * c1.x - b1 * c1.y, rb1 = b1 * c1.x + a1 * c1.y;
          a0 = ra0, a1 = ra1, b0 = rb0, b1 = rb1;
        }
        if constexpr (kStores == ByFeatureStores::kNoStores) {
          // A condition the compiler cannot decide, so the arithmetic stays.
          if (params_.kv_heads == -1) base[n] = __float2bfloat16(a0 + a1 + b0 + b1);
        } else if constexpr (kStores == ByFeatureStores::kDirect) {
          const __nv_bfloat16 out[4] = {__float2bfloat16(a0), __float2bfloat16(a1), __float2bfloat16(b0),
                                        __float2bfloat16(b1)};
          CUTLASS_PRAGMA_UNROLL
          for (int k = 0; k < 4; ++k) {
            const int token = n + (k & 1);
            if (token < N)
              base[__ldg(params_.row_offset + token) + head * params_.head_stride + d + (k >> 1) * kHalf] = out[k];
          }
        } else {
          // Rows m (dims d..) and m + 8 (dims d + D/2..): two 8 x 8 blocks, each transposed across the warp.
          StoreBlock(base, head, m & ~7, n & ~7, lane, N, __floats2bfloat162_rn(a0, a1), layer * per_layer);
          StoreBlock(base, head, (m & ~7) + 8, n & ~7, lane, N, __floats2bfloat162_rn(b0, b1), layer * per_layer);
        }
      }
    }
  }

 private:
  // kBatched's StoreBlock: the slot of this lane's token (at: its head's first element) is known.
  CUTLASS_DEVICE void StoreBlockAt(__nv_bfloat16* at, int r0_local, int lane, bool in_range, __nv_bfloat162 v) const {
    uint32_t in = *reinterpret_cast<uint32_t*>(&v), out;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(out) : "r"(in));
    const int d = DimOfRow<kHeadDim>(r0_local % kHeadDim + 2 * (lane % 4));
    if (in_range) *reinterpret_cast<uint32_t*>(at + d) = out;
  }
  // One 8 x 8 block of rows r0.. (V' order) and tokens c0..: after the transpose this lane holds rows
  // r0 + 2 (lane % 4) and + 1 (two adjacent dims) of token c0 + lane / 4.
  CUTLASS_DEVICE void StoreBlock(__nv_bfloat16* base, int head, int r0, int c0, int lane, int N, __nv_bfloat162 v,
                                 int layer_first) const {
    uint32_t in = *reinterpret_cast<uint32_t*>(&v), out;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(out) : "r"(in));
    const int token = c0 + lane / 4;
    if (token >= N) return;
    const int d = DimOfRow<kHeadDim>((r0 - layer_first) % kHeadDim + 2 * (lane % 4));
    const int64_t slot = kStores == ByFeatureStores::kNoLoads ? int64_t(token) * params_.kv_heads * kHeadDim
                                                               : __ldg(params_.row_offset + token);
    __nv_bfloat16* at = base + slot + head * params_.head_stride + d;
    *reinterpret_cast<uint32_t*>(at) = out;
  }
  Params const& params_;
};

// V' [p, r]: V's rows in RestoreEpilogueByFeature's order (row q of each head from dim DimOfRow(q)).
__global__ void PermuteRows(const __nv_bfloat16* __restrict__ v, __nv_bfloat16* __restrict__ out, int p, int r) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(p) * r) return;
  const int q = int(i / r), k = int(i % r);
  const int head0 = q - q % kHeadDim;
  out[i] = v[size_t(head0 + DimOfRow<kHeadDim>(q % kHeadDim)) * r + k];
}

template <class TileShape, class ClusterShape, class Schedule, bool kRope,
          ByFeatureStores kStores = ByFeatureStores::kTransposed>
using FusedByFeature =
    FusedGemm<RestoreEpilogueByFeature<kHeadDim, kRope, kStores>, TileShape, ClusterShape, Schedule, true>;

__global__ void Fill(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    p[i] = __float2bfloat16(float(h & 0xffff) / 65536.f - 0.5f);
  }
}

// The reference epilogue, one thread per element, from cuBLAS's fp32 output x [T, p]: the same
// arithmetic as RestoreEpilogue.
__global__ void ReferenceFinish(const float* __restrict__ x, int T, int p, kvtc::cuda::RestoreTarget t) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * p) return;
  const int row = int(i / p), f = int(i % p);
  const int per_layer = t.kv_heads * kHeadDim, layer = f / per_layer, head = (f % per_layer) / kHeadDim,
            dim = f % kHeadDim, half = kHeadDim / 2;
  const size_t at = size_t(row) * p;
  float value = x[at + f] + t.mean[f];
  if (t.rope) {
    const bool first = dim < half;
    const int partner = first ? f + half : f - half;
    const float other = x[at + partner] + t.mean[partner];
    const float2 cs = t.rope[t.row_position[row] * half + (first ? dim : dim - half)];
    value = first ? value * cs.x - other * cs.y : value * cs.x + other * cs.y;
  }
  t.layer_base[layer][t.row_offset[row] + head * t.head_stride + dim] = __float2bfloat16(value);
}

// A paged cache of the FlashAttention layout, per layer (blocks, 2, block_size, kv_heads, 128) bf16.
struct PagedCache {
  int layers = 0, blocks = 0, block_size = 0, kv_heads = 0;
  size_t layer_elems = 0;
  std::vector<__nv_bfloat16*> layer;
  PagedCache(int layers_, int blocks_, int block_size_, int kv_heads_)
      : layers(layers_), blocks(blocks_), block_size(block_size_), kv_heads(kv_heads_) {
    layer_elems = size_t(blocks) * 2 * block_size * kv_heads * kHeadDim;
    layer.resize(layers);
    for (auto*& l : layer) CHECK(cudaMalloc(&l, layer_elems * 2));
  }
  // Layer l's K (keys) or V part.
  __nv_bfloat16* Base(int l, bool keys) const {
    return layer[l] + (keys ? 0 : size_t(block_size) * kv_heads * kHeadDim);
  }
  void Clear() {
    for (auto* l : layer) CHECK(cudaMemset(l, 0, layer_elems * 2));
  }
  std::vector<uint16_t> Host() const {
    std::vector<uint16_t> h(layer_elems * layers);
    for (int l = 0; l < layers; ++l)
      CHECK(cudaMemcpy(h.data() + l * layer_elems, layer[l], layer_elems * 2, cudaMemcpyDeviceToHost));
    return h;
  }
};

float Bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Element-by-element agreement of two caches: every slot the reference wrote, and only those.
struct Agreement {
  double max_abs = 0;
  size_t compared = 0, off = 0, misplaced = 0;  // off: beyond 2 bf16 ulps (+ 1e-3); misplaced: written on one side only
  bool ok() const { return compared > 0 && off == 0 && misplaced == 0; }
};
Agreement Compare(const PagedCache& got, const PagedCache& want) {
  const std::vector<uint16_t> a = got.Host(), b = want.Host();
  Agreement g;
  for (size_t i = 0; i < a.size(); ++i) {
    if ((a[i] == 0) != (b[i] == 0)) {
      ++g.misplaced;
      continue;
    }
    if (b[i] == 0) continue;
    const double x = Bf16(a[i]), y = Bf16(b[i]), d = std::abs(x - y);
    ++g.compared;
    g.max_abs = std::max(g.max_abs, d);
    if (d > std::abs(y) * (2.0 / 128) + 1e-3) ++g.off;
  }
  return g;
}

int main(int argc, char** argv) {
  const int T = argc > 1 ? std::atoi(argv[1]) : 2048, p = argc > 2 ? std::atoi(argv[2]) : 32768,
            r = argc > 3 ? std::atoi(argv[3]) : 2048;
  const int kv_heads = 8, reps = std::getenv("PROBE_REPS") ? std::max(1, std::atoi(std::getenv("PROBE_REPS"))) : 9;
  if (T <= 0 || r <= 0 || p <= 0 || p % (kv_heads * kHeadDim) != 0 ||
      p / (kv_heads * kHeadDim) > kvtc::cuda::kFusedMaxLayers) {
    std::fprintf(stderr, "usage: probe T p r (p a multiple of %d)\n", kv_heads * kHeadDim);
    return 2;
  }
  __nv_bfloat16 *d, *v, *x, *y;
  float* yf;
  CHECK(cudaMalloc(&d, size_t(T) * r * 2));
  CHECK(cudaMalloc(&v, size_t(p) * r * 2));
  CHECK(cudaMalloc(&x, size_t(T) * p * 2));
  CHECK(cudaMalloc(&y, size_t(T) * p * 2));
  CHECK(cudaMalloc(&yf, size_t(T) * p * 4));
  Fill<<<1024, 256>>>(d, size_t(T) * r, 1);
  Fill<<<1024, 256>>>(v, size_t(p) * r, 2);
  CHECK(cudaDeviceSynchronize());

  // cuBLAS: column-major X^T [p, T] = V [p, r] (stored as r x p column-major: op T) x D^T (r x T).
  cublasHandle_t h;
  cublasCreate(&h);
  const float one = 1.f, zero = 0.f;
  auto cublas = [&](void* out, cudaDataType type) {
    return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p, T, r, &one, v, CUDA_R_16BF, r, d, CUDA_R_16BF, r, &zero, out,
                        type, p, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  };
  const float cublas_ms = MedianMs([&] { return cublas(y, CUDA_R_16BF); }, reps);
  if (cublas_ms < 0 || !cublas(yf, CUDA_R_32F)) {
    std::fprintf(stderr, "cuBLAS refused the GEMM\n");
    return 1;
  }
  const double flops = 2.0 * T * double(p) * r;
  std::printf("shape T=%d p=%d r=%d (kv heads %d x %d)\n", T, p, r, kv_heads, kHeadDim);
  std::printf("cublas                             %8.3f ms %7.1f TFLOP/s\n", cublas_ms, flops / cublas_ms / 1e9);

  auto line = [&](const char* name, float t, const char* check) {
    if (t < 0) {
      std::printf("%-34s refused (%.0f)\n", name, t);
      return;
    }
    std::printf("%-34s %8.3f ms %7.1f TFLOP/s  %.3fx cuBLAS  %s\n", name, t, flops / t / 1e9, t / cublas_ms, check);
  };
  // Plain GEMMs: agreement with cuBLAS over a sample of elements.
  auto plain = [&](const char* name, float t) {
    char check[64] = "";
    if (t >= 0) {
      std::vector<__nv_bfloat16> hx(size_t(T) * p), hy(size_t(T) * p);
      CHECK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
      float worst = 0;
      for (size_t i = 0; i < hx.size(); i += 997)
        worst = std::max(worst, std::abs(__bfloat162float(hx[i]) - __bfloat162float(hy[i])));
      std::snprintf(check, sizeof check, "max |diff| %.3g", worst);
    }
    line(name, t, check);
  };
  using E = ElementA;
  auto* dd = reinterpret_cast<const E*>(d);
  auto* vv = reinterpret_cast<const E*>(v);
  auto* xx = reinterpret_cast<ElementC*>(x);
  plain("cutlass 128x256x64 c1x1", Probe<Shape<_128, _256, _64>, Shape<_1, _1, _1>>::Time(T, p, r, dd, vv, xx, reps));
  plain("cutlass 128x256x64 c2x1", Probe<Shape<_128, _256, _64>, Shape<_2, _1, _1>>::Time(T, p, r, dd, vv, xx, reps));
  plain("cutlass 128x128x64 c1x2", Probe<Shape<_128, _128, _64>, Shape<_1, _2, _1>>::Time(T, p, r, dd, vv, xx, reps));
  // Call 67 had every CUTLASS tile above at about 1.4x cuBLAS. What else could close it: a tile
  // whose two consumer warp groups each hold 128 x 128 (less shared-memory traffic per MMA), the
  // other orientation, another walk over the tiles. (Ping-pong 128 x 256 is not among them: one
  // warp group's 128 x 256 fp32 accumulators leave ptxas too few registers, and it serializes the
  // wgmma pipeline.)
  using Coop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Pingpong = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  plain("cutlass coop 256x128x64 c1x1", Probe<Shape<_256, _128, _64>, Shape<_1, _1, _1>, Coop>::Time(T, p, r, dd, vv, xx, reps));
  plain("cutlass coop 256x128x64 c1x2", Probe<Shape<_256, _128, _64>, Shape<_1, _2, _1>, Coop>::Time(T, p, r, dd, vv, xx, reps));
  plain("transposed coop 256x128x64 c2x1",
        Probe<Shape<_256, _128, _64>, Shape<_2, _1, _1>, Coop, true>::Time(T, p, r, dd, vv, xx, reps));
  plain("transposed coop 128x256x64 c1x1",
        Probe<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, true>::Time(T, p, r, dd, vv, xx, reps));
  plain("transposed pingpong 128x128x64 c1x1",
        Probe<Shape<_128, _128, _64>, Shape<_1, _1, _1>, Pingpong, true>::Time(T, p, r, dd, vv, xx, reps));
  // The tile walks (along M or N, swizzles) ran in calls 68, 71 and 72: none better than the default.

  // The restore's target: T rows in shuffled blocks of 16 slots, positions 0..T-1.
  const int block_size = 16, layers = p / (kv_heads * kHeadDim);
  const int blocks = (T + block_size - 1) / block_size + 16;
  std::vector<int> order(blocks);
  for (int i = 0; i < blocks; ++i) order[i] = i;
  uint32_t rng = 12345;
  for (int i = blocks - 1; i > 0; --i) {
    rng = rng * 1664525u + 1013904223u;
    std::swap(order[i], order[rng % uint32_t(i + 1)]);
  }
  const int64_t slot_stride = int64_t(kv_heads) * kHeadDim, block_stride = 2 * int64_t(block_size) * slot_stride;
  std::vector<int64_t> offsets(T), positions(T);
  for (int t = 0; t < T; ++t) {
    offsets[t] = order[t / block_size] * block_stride + (t % block_size) * slot_stride;
    positions[t] = t;
  }
  const int half = kHeadDim / 2;
  std::vector<float2> rope(size_t(T) * half);
  for (int t = 0; t < T; ++t)
    for (int f = 0; f < half; ++f) {
      const double a = t * std::pow(500000.0, -2.0 * f / kHeadDim);  // Llama 3's theta
      rope[size_t(t) * half + f] = make_float2(float(std::cos(a)), float(std::sin(a)));
    }
  std::vector<float> mean(p);
  for (int f = 0; f < p; ++f) mean[f] = 0.25f * std::sin(0.37f * f);
  int64_t *d_offsets, *d_positions;
  float2* d_rope;
  float* d_mean;
  CHECK(cudaMalloc(&d_offsets, T * 8));
  CHECK(cudaMalloc(&d_positions, T * 8));
  CHECK(cudaMalloc(&d_rope, rope.size() * 8));
  CHECK(cudaMalloc(&d_mean, p * 4));
  CHECK(cudaMemcpy(d_offsets, offsets.data(), T * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_positions, positions.data(), T * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_rope, rope.data(), rope.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_mean, mean.data(), p * 4, cudaMemcpyHostToDevice));
  PagedCache want(layers, blocks, block_size, kv_heads), got(layers, blocks, block_size, kv_heads);
  auto target = [&](const PagedCache& c, bool keys) {
    kvtc::cuda::RestoreTarget t;
    t.mean = d_mean;
    t.rope = keys ? d_rope : nullptr;
    t.row_offset = d_offsets;
    t.row_position = d_positions;
    for (int l = 0; l < c.layers; ++l) t.layer_base[l] = c.Base(l, keys);
    t.head_stride = kHeadDim;
    t.kv_heads = kv_heads;
    return t;
  };
  const size_t elems = size_t(T) * p;
  const unsigned grid = unsigned((elems + 255) / 256);
  __nv_bfloat16* vperm;
  CHECK(cudaMalloc(&vperm, size_t(p) * r * 2));
  PermuteRows<<<unsigned((size_t(p) * r + 255) / 256), 256>>>(v, vperm, p, r);
  CHECK(cudaGetLastError());
  auto* vp = reinterpret_cast<const E*>(vperm);

  // Today's design is two passes: the bf16 GEMM, then an epilogue kernel that reads X back and
  // writes the cache. Its floor: a device-to-device copy of X (the same bytes read and written).
  const float copy_ms =
      MedianMs([&] { return cudaMemcpyAsync(x, y, size_t(T) * p * 2, cudaMemcpyDeviceToDevice) == cudaSuccess; }, reps);
  line("separate pass floor (copy of X)", copy_ms, "");

  for (const bool keys : {true, false}) {
    const char* stream = keys ? "keys" : "values";
    std::printf("-- %s: mean%s, paged scatter (%d blocks of %d, shuffled)\n", stream, keys ? ", neox RoPE" : "", blocks,
                block_size);
    // The reference: fp32 GEMM output, then the epilogue.
    want.Clear();
    ReferenceFinish<<<grid, 256>>>(yf, T, p, target(want, keys));
    CHECK(cudaDeviceSynchronize());

    auto fused = [&](const char* name, float t) {
      char check[128] = "";
      if (t >= 0) {
        CHECK(cudaDeviceSynchronize());
        const Agreement g = Compare(got, want);
        std::snprintf(check, sizeof check, "%s: %zu compared, max |diff| %.3g, %zu off, %zu misplaced",
                      g.ok() ? "agrees" : "DISAGREES", g.compared, g.max_abs, g.off, g.misplaced);
      }
      line(name, t, check);
    };
    // The three tile shapes, each from a cleared cache.
    auto run_all = [&](auto rope) {
      constexpr bool kRope = decltype(rope)::value;
      const auto tk = target(got, keys);
      got.Clear();
      fused("fused coop 128x256x64 c1x1",
            Fused<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, kRope>::Time(T, p, r, dd, vv, tk, reps));
      got.Clear();
      fused("fused coop 128x256x64 c2x1",
            Fused<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, kRope>::Time(T, p, r, dd, vv, tk, reps));
      got.Clear();
      fused("fused coop 256x128x64 c1x1",
            Fused<Shape<_256, _128, _64>, Shape<_1, _1, _1>, Coop, kRope>::Time(T, p, r, dd, vv, tk, reps));
      got.Clear();
      fused("fused pingpong 128x128x64 c1x1",
            Fused<Shape<_128, _128, _64>, Shape<_1, _1, _1>, Pingpong, kRope>::Time(T, p, r, dd, vv, tk, reps));
      got.Clear();
      fused("by feature coop 128x256x64 c1x1",
            FusedByFeature<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, kRope>::Time(T, p, r, dd, vp, tk, reps));
      got.Clear();
      fused("by feature coop 256x128x64 c2x1",
            FusedByFeature<Shape<_256, _128, _64>, Shape<_2, _1, _1>, Coop, kRope>::Time(T, p, r, dd, vp, tk, reps));
      // Call 72: the 128 x 256 tile's epilogue by part (73: the ping-pong schedule dropped, 1.54-2.12x);
      // call 73: the slots' loads batched ahead of the transposes, with each schedule.
      using S = ByFeatureStores;
      got.Clear();
      fused("by feature coop 128x256 direct stores",
            FusedByFeature<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, kRope, S::kDirect>::Time(T, p, r, dd, vp, tk,
                                                                                                  reps));
      line("by feature coop 128x256 no stores",
           FusedByFeature<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, kRope, S::kNoStores>::Time(T, p, r, dd, vp,
                                                                                                   tk, reps),
           "timing only (writes nothing)");
      got.Clear();
      fused("by feature coop 128x256 batched",
            FusedByFeature<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, kRope, S::kBatched>::Time(T, p, r, dd, vp,
                                                                                                   tk, reps));
      got.Clear();
      fused("by feature coop 256x128 c2x1 batched",
            FusedByFeature<Shape<_256, _128, _64>, Shape<_2, _1, _1>, Coop, kRope, S::kBatched>::Time(T, p, r, dd, vp,
                                                                                                   tk, reps));
      got.Clear();
      fused("by feature pingpong 128x128 batched",
            FusedByFeature<Shape<_128, _128, _64>, Shape<_1, _1, _1>, Pingpong, kRope, S::kBatched>::Time(T, p, r, dd,
                                                                                                       vp, tk, reps));
    };
    if (keys)
      run_all(std::true_type{});
    else
      run_all(std::false_type{});
  }
  return 0;
}
