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

static_assert(kFusedMaxLayers == kRestoreMaxLayers, "one layer limit for the job and the epilogue");

// A tile must hold whole heads of one layer: 256 wide where the layer is a multiple of 256
// features, else 192 wide where it is a multiple of 192.
int TileN(int features_per_layer) {
  return features_per_layer % 256 == 0 ? 256 : features_per_layer % 192 == 0 ? 192 : 0;
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
    RestoreTarget target;
    target.mean = job.mean;
    target.rope = kRope ? job.rope : nullptr;
    target.row_offset = job.row_offset;
    target.row_position = job.row_position;
    for (int l = 0; l < job.layers; ++l) target.layer_base[l] = job.layer_base[l];
    target.head_stride = job.head_stride;
    target.kv_heads = job.kv_heads;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {job.rows, job.features, job.k, 1},
        {reinterpret_cast<const Bf16*>(job.dq), sa, reinterpret_cast<const Bf16*>(job.basis), sb},
        target};
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
  if (job.rope)
    FusedGemm<kHeadDim, true, kTileN>::Run(job, stream);
  else
    FusedGemm<kHeadDim, false, kTileN>::Run(job, stream);
}

}  // namespace

bool FusedRestoreFits(int features_per_layer, int head_dim) {
  return (head_dim == 128 && features_per_layer % 256 == 0) || (head_dim == 64 && TileN(features_per_layer) > 0);
}

void LaunchFusedRestore(const FusedRestore& job, cudaStream_t stream) {
  KVTC_CHECK(FusedRestoreFits(job.kv_heads * job.head_dim, job.head_dim) && job.layers <= kFusedMaxLayers &&
                 job.features == job.layers * job.kv_heads * job.head_dim,
             kInternal, "the fused restore was given a shape it does not take");
  if (job.rows == 0) return;
  if (job.head_dim == 128)
    RunFor<128, 256>(job, stream);
  else if (TileN(job.kv_heads * job.head_dim) == 256)
    RunFor<64, 256>(job, stream);
  else
    RunFor<64, 192>(job, stream);
}

}  // namespace kvtc::cuda
