// The fp8 projection of the CUDA backend (projection 'fp8'): both GEMMs on e4m3 operands, each
// vector along the reduced dimension scaled by its absolute maximum to e4m3's 448 (per token for
// the KV rows and the dequantized coefficients, per basis column to project, per basis row to
// reconstruct), the scales applied to the fp32 product by the kernel that reads it next. This is
// the arithmetic the CPU backend's `Projection::kFp8` rounding simulates (codec.cc RoundVector),
// whose quality cost docs/quality.md measures. Records are unchanged: any decoder reads them.
// Internal to cuda_codec.cu.
#pragma once

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

}  // namespace kvtc::cuda
