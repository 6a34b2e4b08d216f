// Probe, not product code: a CUTLASS sm90 warp-specialized bf16 GEMM of the restore's shape,
// X[T, p] = D[T, r] V[p, r]^T (fp32 accumulation, bf16 out), timed against cuBLAS's of the same
// shape in the same process, with the largest difference between the two outputs over a sample.
// The first step towards a GEMM with the restore's epilogue (mean, RoPE, paged scatter) fused,
// which the 1.25x target needs (docs/benchmarks.md, run q, "What 1.25x would take").
// Status: compiled on the development VM (nvcc 13 from PyPI, CUTLASS 4.2.0.0), NOT YET RUN on a GPU.
//
// CUTLASS's headers come from PyPI (no other download reaches these machines):
//   pip download nvidia-cutlass==4.2.0.0 --no-deps -d /tmp/cutlass
//   unzip -q /tmp/cutlass/*.whl 'cutlass_library/source/include/*' 'cutlass_library/source/tools/util/include/*' -d .cache/cutlass
// Compile here (about 85 s on 2 cores; -DNDEBUG, or device asserts serialize the wgmma pipeline):
//   I=.cache/cutlass/cutlass_library/source
//   .cache/cudatk/nvidia/cu13/bin/nvcc -O3 -DNDEBUG -std=c++17 -arch=sm_90a --expt-relaxed-constexpr \
//     -I$I/include -I$I/tools/util/include -c bench/cutlass_gemm_probe.cu -o .gpu/cutlass_gemm_probe.o
// then link and run on the GPU machine (.gpu carried):
//   nvcc .gpu/cutlass_gemm_probe.o -lcublas -o /tmp/probe && /tmp/probe 2048 32768 2048
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                  \
    }                                                                                \
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

template <class TileShape, class ClusterShape>
struct Probe {
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator, ElementC, LayoutC,
      kAlign, ElementC, LayoutC, kAlign, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlign, ElementB, LayoutB, kAlign,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Median time (ms) of `reps` runs of X = D V^T, or a negative value if CUTLASS refuses the shape.
  static float Time(int T, int p, int r, const ElementA* d, const ElementB* v, ElementC* x, int reps) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideC = typename Gemm::GemmKernel::StrideC;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, make_shape(T, r, 1));
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, make_shape(p, r, 1));
    StrideC sc = cutlass::make_cute_packed_stride(StrideC{}, make_shape(T, p, 1));
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, make_shape(T, p, 1));
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {T, p, r, 1},
                                  {d, sa, v, sb},
                                  {{1.0f, 0.0f}, x, sc, x, sd}};
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
};

__global__ void Fill(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    p[i] = __float2bfloat16(float(h & 0xffff) / 65536.f - 0.5f);
  }
}

int main(int argc, char** argv) {
  const int T = argc > 1 ? std::atoi(argv[1]) : 2048, p = argc > 2 ? std::atoi(argv[2]) : 32768,
            r = argc > 3 ? std::atoi(argv[3]) : 2048;
  const int reps = 9;
  __nv_bfloat16 *d, *v, *x, *y;
  CHECK(cudaMalloc(&d, size_t(T) * r * 2));
  CHECK(cudaMalloc(&v, size_t(p) * r * 2));
  CHECK(cudaMalloc(&x, size_t(T) * p * 2));
  CHECK(cudaMalloc(&y, size_t(T) * p * 2));
  Fill<<<1024, 256>>>(d, size_t(T) * r, 1);
  Fill<<<1024, 256>>>(v, size_t(p) * r, 2);
  CHECK(cudaDeviceSynchronize());

  // cuBLAS: column-major X^T [p, T] = V [p, r] (stored as r x p column-major: op T) x D^T (r x T).
  cublasHandle_t h;
  cublasCreate(&h);
  const float one = 1.f, zero = 0.f;
  const float cublas_ms = MedianMs(
      [&] {
        return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p, T, r, &one, v, CUDA_R_16BF, r, d, CUDA_R_16BF, r, &zero,
                            y, CUDA_R_16BF, p, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
      },
      reps);
  if (cublas_ms < 0) {
    std::fprintf(stderr, "cuBLAS refused the GEMM\n");
    return 1;
  }
  const double flops = 2.0 * T * double(p) * r;
  std::printf("shape T=%d p=%d r=%d\n", T, p, r);
  std::printf("cublas                    %8.3f ms %7.1f TFLOP/s\n", cublas_ms, flops / cublas_ms / 1e9);

  auto report = [&](const char* name, float t) {
    if (t < 0) {
      std::printf("%-25s refused (%.0f)\n", name, t);
      return;
    }
    // Agreement with cuBLAS: the largest difference over a sample of elements.
    std::vector<__nv_bfloat16> hx(size_t(T) * p), hy(size_t(T) * p);
    CHECK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
    float worst = 0;
    for (size_t i = 0; i < hx.size(); i += 997)
      worst = std::max(worst, std::abs(__bfloat162float(hx[i]) - __bfloat162float(hy[i])));
    std::printf("%-25s %8.3f ms %7.1f TFLOP/s  %.2fx cuBLAS  max |diff| %.3g\n", name, t, flops / t / 1e9,
                t / cublas_ms, worst);
  };
  using E = ElementA;
  auto* dd = reinterpret_cast<const E*>(d);
  auto* vv = reinterpret_cast<const E*>(v);
  auto* xx = reinterpret_cast<ElementC*>(x);
  report("cutlass 128x256x64 c1x1", Probe<Shape<_128, _256, _64>, Shape<_1, _1, _1>>::Time(T, p, r, dd, vv, xx, reps));
  report("cutlass 128x256x64 c2x1", Probe<Shape<_128, _256, _64>, Shape<_2, _1, _1>>::Time(T, p, r, dd, vv, xx, reps));
  report("cutlass 128x128x64 c1x2", Probe<Shape<_128, _128, _64>, Shape<_1, _2, _1>>::Time(T, p, r, dd, vv, xx, reps));
  return 0;
}
