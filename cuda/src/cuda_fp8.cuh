// The fp8 projection of the CUDA backend (projection 'fp8'): both GEMMs on e4m3 operands, each
// vector along the reduced dimension scaled by its absolute maximum to e4m3's 448 (per token for
// the KV rows and the dequantized coefficients, per basis column to project, per basis row to
// reconstruct), the scales applied to the fp32 product by the kernel that reads it next. This is
// the arithmetic the CPU backend's `Projection::kFp8` rounding simulates (codec.cc RoundVector),
// whose quality cost docs/quality.md measures. Records are unchanged: any decoder reads them.
// Internal to cuda_codec.cu.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace kvtc::cuda {

// Leading dimension of an e4m3 GEMM operand: 16 elements (16 bytes), which cuBLASLt's fp8
// kernels require of lda, ldb and of the reduced dimension.
inline uint32_t PadFp8(uint32_t n) { return (n + 15) / 16 * 16; }

constexpr float kFp8Max = 448.0f;

namespace fp8 {

constexpr int kRowThreads = 256;

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One block per row of a row-major [rows_padded, *] matrix: the row's absolute maximum over its
// first `cols` values gives scale = amax / 448 (1 for an all-zero row, as the CPU leaves those
// unscaled); out[row, c] = e4m3(in[row, c] / scale) for c < cols, zero for cols <= c < ld_out
// and for rows >= rows (GEMM padding).
template <typename T>
__global__ void RowsKernel(const T* __restrict__ in, int64_t rows, int cols, int64_t ld_in,
                           __nv_fp8_e4m3* __restrict__ out, int64_t ld_out, float* __restrict__ scales) {
  const int64_t row = blockIdx.x;
  __nv_fp8_e4m3* o = out + row * ld_out;
  if (row >= rows) {
    for (int64_t c = threadIdx.x; c < ld_out; c += blockDim.x) o[c] = __nv_fp8_e4m3(0.0f);
    if (threadIdx.x == 0) scales[row] = 1.0f;
    return;
  }
  const T* x = in + row * ld_in;
  float m = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(LoadAsFloat(x, c)));
  __shared__ float warp_max[kRowThreads / 32];
  m = WarpMax(m);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  m = threadIdx.x < blockDim.x / 32 ? warp_max[threadIdx.x] : 0.0f;
  if (threadIdx.x < 32) m = WarpMax(m);
  __shared__ float row_scale;
  if (threadIdx.x == 0) row_scale = m > 0.0f ? m / kFp8Max : 1.0f;
  __syncthreads();
  const float scale = row_scale;
  for (int64_t c = threadIdx.x; c < ld_out; c += blockDim.x)
    o[c] = __nv_fp8_e4m3(c < cols ? LoadAsFloat(x, size_t(c)) / scale : 0.0f);
  if (threadIdx.x == 0) scales[row] = scale;
}

// out = e4m3(in / scale[row]) over a row-major bf16 [rows, cols] matrix whose scales are known
// (cols a multiple of 8), rows in [rows, rows_padded) zero: 8 elements per thread, one 16-byte
// load and one 8-byte store.
__global__ void ScaledRowsKernel(const __nv_bfloat16* __restrict__ in, int64_t rows, int64_t rows_padded, int64_t cols,
                                 const float* __restrict__ scale, __nv_fp8_e4m3* __restrict__ out) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;  // first element
  if (i >= rows_padded * cols) return;
  const int64_t row = i / cols;
  __align__(8) __nv_fp8_e4m3 q[8];
  if (row < rows) {
    const uint4 raw = *reinterpret_cast<const uint4*>(in + i);
    const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw);
    const float sc = scale[row];
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = __nv_fp8_e4m3(__bfloat162float(v[k]) / sc);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = __nv_fp8_e4m3(0.0f);
  }
  *reinterpret_cast<uint2*>(out + i) = *reinterpret_cast<const uint2*>(q);
}

// Absolute maximum of each column of a row-major bf16 [rows, cols] matrix (ld), into amax (zeroed
// before): a thread per column over 1024 rows, combined with atomicMax on the float's bits (which
// order like the values for non-negative floats).
__global__ void ColumnAmaxKernel(const __nv_bfloat16* __restrict__ in, int64_t rows, int cols, int64_t ld,
                                 float* __restrict__ amax) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * 1024, r1 = min(rows, r0 + 1024);
  float m = 0.0f;
  for (int64_t r = r0; r < r1; ++r) m = fmaxf(m, fabsf(__bfloat162float(in[r * ld + c])));
  atomicMax(reinterpret_cast<int*>(amax) + c, __float_as_int(m));
}

__global__ void AmaxToScaleKernel(float* v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = v[i] > 0.0f ? v[i] / kFp8Max : 1.0f;
}

// out[c, r] = e4m3(in[r, c] / scale[c]): the transpose of a row-major bf16 [rows, cols] matrix
// (ld) into row-major e4m3 [cols_out, rows], rows c >= cols zero. 32 x 32 tiles through shared
// memory, so that both sides are read and written along rows.
__global__ void TransposeKernel(const __nv_bfloat16* __restrict__ in, int64_t rows, int cols, int64_t ld,
                                const float* __restrict__ scale, __nv_fp8_e4m3* __restrict__ out, int cols_out) {
  __shared__ float tile[32][33];
  const int64_t r0 = int64_t(blockIdx.x) * 32;
  const int c0 = blockIdx.y * 32;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int64_t r = r0 + k;
    const int c = c0 + threadIdx.x;
    tile[k][threadIdx.x] = r < rows && c < cols ? __bfloat162float(in[r * ld + c]) / scale[c] : 0.0f;
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int c = c0 + k;
    const int64_t r = r0 + threadIdx.x;
    if (c < cols_out && r < rows) out[int64_t(c) * rows + r] = __nv_fp8_e4m3(tile[threadIdx.x][k]);
  }
}

// d[t, j] *= row_scale[t] * col_scale[j] for t < rows, j < cols (row-major, ld): the projection's
// coefficients, before the quantizer reads them. Grid: x over rows, y over 256-column blocks.
__global__ void ScaleOuterKernel(float* __restrict__ d, int64_t rows, int cols, int64_t ld,
                                 const float* __restrict__ row_scale, const float* __restrict__ col_scale) {
  const int64_t t = blockIdx.x;
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (t >= rows || j >= cols) return;
  d[t * ld + j] *= row_scale[t] * col_scale[j];
}

}  // namespace fp8

// cuBLASLt resources of one host thread's context: the handle and a workspace.
struct LtHandle {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer<uint8_t> workspace;
  static constexpr size_t kWorkspace = size_t(32) << 20;
  LtHandle() = default;
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  ~LtHandle() {
    if (handle) cublasLtDestroy(handle);
  }
  void Init() {
    if (handle) return;
    KVTC_CUBLAS_CALL(cublasLtCreate(&handle));
    workspace.resize(kWorkspace);
  }
};

// D[m, n] (column-major fp32, ldd) = A^T B with A e4m3 [k, m] (column-major, lda) and B e4m3
// [k, n] (ldb): the "TN" form Hopper's fp8 tensor cores take; unit scales, fp32 accumulation.
inline void Fp8Gemm(LtHandle& lt, cudaStream_t stream, int m, int n, int k, const __nv_fp8_e4m3* a, int lda,
                    const __nv_fp8_e4m3* b, int ldb, float* d, int ldd) {
  lt.Init();
  // Descriptors of this call, destroyed on every way out.
  struct Descs {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~Descs() {
      if (pref) cublasLtMatmulPreferenceDestroy(pref);
      if (d) cublasLtMatrixLayoutDestroy(d);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (op) cublasLtMatmulDescDestroy(op);
    }
  } x;
  KVTC_CUBLAS_CALL(cublasLtMatmulDescCreate(&x.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  KVTC_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  KVTC_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&x.a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), lda));
  KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&x.b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), ldb));
  KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&x.d, CUDA_R_32F, uint64_t(m), uint64_t(n), ldd));
  KVTC_CUBLAS_CALL(cublasLtMatmulPreferenceCreate(&x.pref));
  const size_t ws = LtHandle::kWorkspace;
  KVTC_CUBLAS_CALL(cublasLtMatmulPreferenceSetAttribute(x.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                        sizeof(ws)));
  cublasLtMatmulHeuristicResult_t best{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt.handle, x.op, x.a, x.b, x.d, x.d, x.pref, 1, &best, &found);
  KVTC_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, kBackendUnavailable,
             "cuBLASLt has no fp8 GEMM for m=" << m << " n=" << n << " k=" << k << " on this device (needs sm_89 or newer)");
  const float one = 1.0f, zero = 0.0f;
  KVTC_CUBLAS_CALL(cublasLtMatmul(lt.handle, x.op, &one, a, x.a, b, x.b, &zero, d, x.d, d, x.d, &best.algo,
                                  lt.workspace.ptr, ws, stream));
}

}  // namespace kvtc::cuda
