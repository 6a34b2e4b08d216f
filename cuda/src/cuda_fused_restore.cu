// The fused restore (cuda_fused_restore.h): CUTLASS sm90 warp-specialized bf16 GEMMs whose epilogue
// (cuda_restore_epilogue.cuh) writes the paged cache. Cooperative tiles 128 x 256 x 64 on one-CTA
// clusters for head dims 64 and 128, keys (RoPE) and values, and 128 x 192 x 64 for layers of 192
// features (SmolLM2: 3 heads of 64); bench/cutlass_gemm_probe.cu times the 256-wide tile and two
// other shapes against cuBLAS. Compiled for sm_90a (wgmma) only.
#include "cuda_common.cuh"
#include "cuda_fused_restore.h"
#include "cuda_restore_epilogue.cuh"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace kvtc::cuda {
namespace {

// The tile width for a layer of `features_per_layer` features of `head_dim`, 0 for none: a tile
// holds whole heads of one layer, 256 wide (head dims 64 and 128), or 192 wide (head dim 64).
int TileN(int features_per_layer, int head_dim) {
  if ((head_dim == 64 || head_dim == 128) && features_per_layer % 256 == 0) return 256;
  if (head_dim == 64 && features_per_layer % 192 == 0) return 192;
  return 0;
}

template <int kHeadDim, bool kRope, int kTileN>
struct FusedGemm {
  using TileShape = cute::Shape<cute::_128, cute::Int<kTileN>, cute::_64>;
  using Bf16 = cutlass::bfloat16_t;
  using CollectiveEpilogue =
      cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<RestoreEpilogue<kHeadDim, kRope>>;
  // A = D [rows, k] row-major; B = V [features, k] row-major, i.e. k x features column-major.
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Bf16, cutlass::layout::RowMajor, 8, Bf16,
      cutlass::layout::ColumnMajor, 8, float, TileShape, cute::Shape<cute::_1, cute::_1, cute::_1>,
      cutlass::gemm::collective::StageCountAuto, cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void Run(const FusedRestore& job, cudaStream_t stream) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    StrideA sa = cute::make_stride(job.ld_dq, cute::Int<1>{}, int64_t(0));
    StrideB sb = cute::make_stride(job.ld_basis, cute::Int<1>{}, int64_t(0));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {job.rows, job.features, job.k, 1},
        {reinterpret_cast<const Bf16*>(job.dq), sa, reinterpret_cast<const Bf16*>(job.basis), sb},
        job.target};
    Gemm gemm;
    KVTC_CHECK(gemm.can_implement(args) == cutlass::Status::kSuccess, kInternal,
               "the fused restore refuses rows=" << job.rows << " features=" << job.features << " k=" << job.k);
    void* workspace = nullptr;
    const size_t ws = Gemm::get_workspace_size(args);
    if (ws) KVTC_CUDA_CALL(cudaMallocAsync(&workspace, ws, stream));
    cutlass::Status st = gemm.initialize(args, workspace, stream);
    if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
    if (workspace) cudaFreeAsync(workspace, stream);
    KVTC_CHECK(st == cutlass::Status::kSuccess, kInternal,
               "the fused restore failed to launch: " << cutlassGetStatusString(st));
  }
};

template <int kHeadDim, int kTileN>
void RunFor(const FusedRestore& job, cudaStream_t stream) {
  if (job.target.rope)
    FusedGemm<kHeadDim, true, kTileN>::Run(job, stream);
  else
    FusedGemm<kHeadDim, false, kTileN>::Run(job, stream);
}

}  // namespace

bool FusedRestoreFits(int features_per_layer, int head_dim) { return TileN(features_per_layer, head_dim) > 0; }

void LaunchFusedRestore(const FusedRestore& job, cudaStream_t stream) {
  const int per_layer = job.target.kv_heads * job.head_dim;
  const int tile = TileN(per_layer, job.head_dim);
  KVTC_CHECK(tile > 0 && job.layers <= kFusedMaxLayers && job.features == job.layers * per_layer, kInternal,
             "the fused restore was given a shape it does not take");
  if (job.rows == 0) return;
  if (job.head_dim == 128)
    RunFor<128, 256>(job, stream);
  else if (tile == 256)
    RunFor<64, 256>(job, stream);
  else
    RunFor<64, 192>(job, stream);
}

}  // namespace kvtc::cuda
