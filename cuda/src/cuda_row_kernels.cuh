// The prologue and epilogue kernels of the CUDA codec: RoPE tables, and a job's token rows
// gathered from (encode) or scattered into (decode) contiguous rows or paged blocks, with RoPE
// removed or re-applied and the PCA mean taken off or put back, to and from the GEMM's operands.
// Scalar, vector and paired variants (KVTC_ROW_KERNELS picks). Internal to cuda_codec.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "cuda_fp8.cuh"
#include "cuda_rows.cuh"

namespace kvtc::cuda {
// Internal linkage: this header belongs to the one translation unit that includes it.
namespace {

// cos/sin per (token, frequency), computed in double as the CPU backend does.
__global__ void RopeTableKernel(const double* inv_freq, int half, int64_t pos0, int64_t tokens, float2* table) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= tokens * half) return;
  const int64_t t = i / half;
  const int f = int(i % half);
  double s, c;
  sincos(double(pos0 + t) * inv_freq[f], &s, &c);
  table[i] = make_float2(float(c), float(s));
}

// Prologue and epilogue grids: x covers the features of a row, y steps over tokens, each thread
// doing the same feature of kRowsPerThread tokens (one index computation, one mean load; no 64-bit
// division per element, which made the one-thread-per-element version 5x slower than memory).
constexpr int kRowsPerThread = 4;
constexpr int kThreads = 256;  // threads per block of the row kernels

// Feature f's place in its head and its RoPE pair: its frequency, its partner's feature within the
// head and whether f is the pair's first element (rotate: RoPE applies to f at all).
struct RopeFeature {
  int j = 0, freq = 0, partner = 0;
  bool rotate = false, first = true;
  __device__ __forceinline__ RopeFeature(int f, int head_dim, int rotary_dim, bool neox, bool has_table) {
    j = f % head_dim;
    partner = j;
    rotate = has_table && j < rotary_dim;
    if (!rotate) return;
    const int half = rotary_dim / 2;
    if (neox) {
      first = j < half;
      freq = first ? j : j - half;
      partner = first ? j + half : j - half;
    } else {
      first = (j & 1) == 0;
      freq = j >> 1;
      partner = first ? j + 1 : j - 1;
    }
  }
};

// The encode prologues' per-token absolute maxima (the fp8 rows' scales): each thread's maxima of
// tokens [t0, t0 + kRowsPerThread), reduced over the block, one atomicMax per block and token on
// the float's bits (which order like the values for non-negative floats). Every thread of the
// block calls it.
__device__ __forceinline__ void GatherRowMax(const float (&row_max)[kRowsPerThread], int64_t t0, int64_t tokens,
                                             float* amax) {
  __shared__ float warp_max[kThreads / 32][kRowsPerThread];
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const float w = fp8::WarpMax(row_max[k]);
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5][k] = w;
  }
  __syncthreads();
  if (threadIdx.x < kRowsPerThread && t0 + threadIdx.x < tokens) {
    float w = 0.0f;
    for (int i = 0; i < kThreads / 32; ++i) w = fmaxf(w, warp_max[i][threadIdx.x]);
    atomicMax(reinterpret_cast<int*>(amax) + t0 + threadIdx.x, __float_as_int(w));
  }
}

// Encode prologue. in: token rows of [heads, head_dim] (heads = layers x kv_heads), contiguous or
// in a paged cache (cuda_rows.cuh); out bf16 [tokens, p], centred, RoPE removed when `table` is
// set. Each thread reads its pair partner. With `amax` (the fp8 projection; zeroed before), also
// each token's absolute maximum of what it wrote, one atomicMax per block and token, so that the
// e4m3 rows can be written in one more pass instead of two (cuda_fp8.cuh ScaledRowsKernel).
template <typename T, typename Rows>
__global__ void PrepareKernel(Rows in, int64_t tokens, int heads, int head_dim, int rotary_dim, bool neox,
                              const float2* __restrict__ table, const float* __restrict__ mean,
                              __nv_bfloat16* __restrict__ out, float* __restrict__ amax) {
  const int p = heads * head_dim;
  const int f = blockIdx.y * blockDim.x + threadIdx.x;
  const int64_t t0 = int64_t(blockIdx.x) * kRowsPerThread;
  float row_max[kRowsPerThread] = {};
  if (f < p) {
    const RopeFeature r(f, head_dim, rotary_dim, neox, table != nullptr);
    const float m = mean[f];
    const T* x_at = in.FeatureBase(f);
    const T* y_at = in.FeatureBase(f - r.j + r.partner);
    const int half = rotary_dim / 2;
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int64_t t = t0 + k;
      if (t >= tokens) break;
      const int64_t off = in.TokenOffset(t);
      float x = LoadAsFloat(x_at, off);
      if (r.rotate) {
        const float2 cs = table[in.Position(t) * half + r.freq];
        const float y = LoadAsFloat(y_at, off);
        // inverse rotation: a = a' c + b' s ; b = b' c - a' s
        x = r.first ? x * cs.x + y * cs.y : x * cs.x - y * cs.y;
      }
      const __nv_bfloat16 v = __float2bfloat16_rn(x - m);
      out[size_t(t) * p + f] = v;
      row_max[k] = fabsf(__bfloat162float(v));
    }
  }
  if (amax) GatherRowMax(row_max, t0, tokens, amax);
}

// Decode epilogue. in: reconstruction [tokens, p] without the mean (fp32, or bf16 for a bf16
// cache: ReconstructParts); out: + mean, RoPE re-applied, for rows [lo, hi) only (a restore that
// skips a record's leading tokens).
// With the fp8 projection, in[t, f] is still to be multiplied by row_scale[t] * col_scale[f]
// (cuda_fp8.cuh); both null otherwise.
template <typename T, typename In, typename Rows>
__global__ void FinishKernel(const In* __restrict__ in, int64_t lo, int64_t hi, int heads, int head_dim,
                             int rotary_dim, bool neox, const float2* __restrict__ table, const float* __restrict__ mean,
                             const float* __restrict__ row_scale, const float* __restrict__ col_scale, Rows out) {
  const int p = heads * head_dim;
  const int f = blockIdx.y * blockDim.x + threadIdx.x;
  if (f >= p) return;
  const RopeFeature r(f, head_dim, rotary_dim, neox, table != nullptr);
  const float m = mean[f];
  const float m_partner = mean[f - r.j + r.partner];
  const float c = col_scale ? col_scale[f] : 1.0f;
  const float c_partner = col_scale ? col_scale[f - r.j + r.partner] : 1.0f;
  T* at = out.FeatureBase(f);
  const int half = rotary_dim / 2;
  const int64_t t0 = lo + int64_t(blockIdx.x) * kRowsPerThread;
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int64_t t = t0 + k;
    if (t >= hi) break;
    const size_t i = size_t(t) * p + f;
    const float s = row_scale ? row_scale[t] : 1.0f;
    float x = LoadAsFloat(in, i) * (s * c) + m;
    if (r.rotate) {
      const float2 cs = table[out.Position(t) * half + r.freq];
      const float y = LoadAsFloat(in, i - r.j + r.partner) * (s * c_partner) + m_partner;
      // apply: a' = a c - b s ; b' = b c + a s
      x = r.first ? x * cs.x - y * cs.y : x * cs.x + y * cs.y;
    }
    StoreFromFloat(at, size_t(out.TokenOffset(t)), x);
  }
}

// ---- vector row kernels (the default; KVTC_ROW_KERNELS=scalar forces the kernels above) -------
// The prologue and epilogue above move one 2-byte element per thread and load: on an H200 they
// run at 1.5-2 TB/s (run g profiles), under half the memory's bandwidth. These variants give a
// thread kVec adjacent features of one head (16-byte loads and stores of bf16/fp16), with the
// same arithmetic in the same order (-fmad=false), so they write the same bits. Used only where
// every row access is aligned (VecRowsOk) and the RoPE pairs fall inside or beside a vector.
constexpr int kVec = 8;

// kVec elements of T (16-byte aligned) as floats and back, through one or two 16-byte accesses
// and the scalar conversions every kernel uses (LoadAsFloat, StoreFromFloat).
template <typename T>
__device__ __forceinline__ void Load8(const T* p, float (&v)[kVec]) {
  constexpr int kWords = int(sizeof(T)) * kVec / 16;
  uint4 raw[kWords];
#pragma unroll
  for (int w = 0; w < kWords; ++w) raw[w] = reinterpret_cast<const uint4*>(p)[w];
#pragma unroll
  for (int i = 0; i < kVec; ++i) v[i] = LoadAsFloat(reinterpret_cast<const T*>(raw), size_t(i));
}
template <typename T>
__device__ __forceinline__ void Store8(T* p, const float (&v)[kVec]) {
  constexpr int kWords = int(sizeof(T)) * kVec / 16;
  uint4 raw[kWords];
#pragma unroll
  for (int i = 0; i < kVec; ++i) StoreFromFloat(reinterpret_cast<T*>(raw), size_t(i), v[i]);
#pragma unroll
  for (int w = 0; w < kWords; ++w) reinterpret_cast<uint4*>(p)[w] = raw[w];
}

// Features [f0, f0 + kVec) of a head: whether RoPE applies, the partner vector's first feature
// (neox: half a rotation away; interleaved: the pairs are inside the vector) and the first
// frequency. The launch guarantees that a vector is wholly inside or outside the rotary part.
struct RopeVector {
  bool rotate = false, first = true;
  int partner0 = 0, freq0 = 0;
  __device__ __forceinline__ RopeVector(int f0, int head_dim, int rotary_dim, bool neox, bool has_table) {
    const int j0 = f0 % head_dim;
    rotate = has_table && j0 < rotary_dim;
    partner0 = f0;
    if (!rotate) return;
    const int half = rotary_dim / 2;
    if (neox) {
      first = j0 < half;
      freq0 = first ? j0 : j0 - half;
      partner0 = f0 + (first ? half : -half);
    } else {
      freq0 = j0 >> 1;
    }
  }
};

// PrepareKernel, kVec features per thread (grid: RowGrid(tokens, p / kVec)).
template <typename T, typename Rows>
__global__ void PrepareVecKernel(Rows in, int64_t tokens, int heads, int head_dim, int rotary_dim, bool neox,
                                 const float2* __restrict__ table, const float* __restrict__ mean,
                                 __nv_bfloat16* __restrict__ out, float* __restrict__ amax) {
  const int p = heads * head_dim;
  const int f0 = (blockIdx.y * blockDim.x + threadIdx.x) * kVec;
  const int64_t t0 = int64_t(blockIdx.x) * kRowsPerThread;
  float row_max[kRowsPerThread] = {};
  if (f0 < p) {
    const RopeVector r(f0, head_dim, rotary_dim, neox, table != nullptr);
    float m[kVec];
    Load8(mean + f0, m);
    const T* x_at = in.FeatureBase(f0);
    const T* y_at = in.FeatureBase(r.partner0);
    const int half = rotary_dim / 2;
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int64_t t = t0 + k;
      if (t >= tokens) break;
      const int64_t off = in.TokenOffset(t);
      float x[kVec];
      Load8(x_at + off, x);
      if (r.rotate && neox) {
        float y[kVec];
        Load8(y_at + off, y);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float2 cs = table[in.Position(t) * half + r.freq0 + i];
          // inverse rotation: a = a' c + b' s ; b = b' c - a' s
          x[i] = r.first ? x[i] * cs.x + y[i] * cs.y : x[i] * cs.x - y[i] * cs.y;
        }
      } else if (r.rotate) {
#pragma unroll
        for (int i = 0; i < kVec / 2; ++i) {
          const float2 cs = table[in.Position(t) * half + r.freq0 + i];
          const float a = x[2 * i], b = x[2 * i + 1];
          x[2 * i] = a * cs.x + b * cs.y;
          x[2 * i + 1] = b * cs.x - a * cs.y;
        }
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        x[i] = __bfloat162float(__float2bfloat16_rn(x[i] - m[i]));
        row_max[k] = fmaxf(row_max[k], fabsf(x[i]));
      }
      Store8(out + size_t(t) * p + f0, x);
    }
  }
  if (amax) GatherRowMax(row_max, t0, tokens, amax);
}

// An epilogue's per-feature terms of the kVec features from f: the mean, and the fp8
// projection's column scales (ones without them).
__device__ __forceinline__ void LoadMeanScale8(const float* __restrict__ mean, const float* __restrict__ col_scale,
                                               int f, float (&m)[kVec], float (&c)[kVec]) {
  Load8(mean + f, m);
  if (col_scale) {
    Load8(col_scale + f, c);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) c[i] = 1.0f;
  }
}

// FinishKernel, kVec features per thread (grid: RowGrid(hi - lo, p / kVec)).
template <typename T, typename In, typename Rows>
__global__ void FinishVecKernel(const In* __restrict__ in, int64_t lo, int64_t hi, int heads, int head_dim,
                                int rotary_dim, bool neox, const float2* __restrict__ table,
                                const float* __restrict__ mean, const float* __restrict__ row_scale,
                                const float* __restrict__ col_scale, Rows out) {
  const int p = heads * head_dim;
  const int f0 = (blockIdx.y * blockDim.x + threadIdx.x) * kVec;
  if (f0 >= p) return;
  const RopeVector r(f0, head_dim, rotary_dim, neox, table != nullptr);
  const bool pair_vector = r.rotate && neox;  // the partners are another vector
  float m[kVec], mp[kVec], c[kVec], cp[kVec];
  LoadMeanScale8(mean, col_scale, f0, m, c);
  if (pair_vector) LoadMeanScale8(mean, col_scale, r.partner0, mp, cp);
  T* at = out.FeatureBase(f0);
  const int half = rotary_dim / 2;
  const int64_t t0 = lo + int64_t(blockIdx.x) * kRowsPerThread;
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int64_t t = t0 + k;
    if (t >= hi) break;
    const float s = row_scale ? row_scale[t] : 1.0f;
    float x[kVec];
    Load8(in + size_t(t) * p + f0, x);
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = x[i] * (s * c[i]) + m[i];
    if (pair_vector) {
      float y[kVec];
      Load8(in + size_t(t) * p + r.partner0, y);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float2 cs = table[out.Position(t) * half + r.freq0 + i];
        const float yi = y[i] * (s * cp[i]) + mp[i];
        // apply: a' = a c - b s ; b' = b c + a s
        x[i] = r.first ? x[i] * cs.x - yi * cs.y : x[i] * cs.x + yi * cs.y;
      }
    } else if (r.rotate) {
#pragma unroll
      for (int i = 0; i < kVec / 2; ++i) {
        const float2 cs = table[out.Position(t) * half + r.freq0 + i];
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cs.x - b * cs.y;
        x[2 * i + 1] = b * cs.x + a * cs.y;
      }
    }
    Store8(at + out.TokenOffset(t), x);
  }
}

// ---- paired row kernels (neox RoPE over the whole head) -----------------------------------------
// In the vector kernels above every vector of a rotated head loads its partner vector and the
// cos/sin of its 8 frequencies, which the partner's thread loads again: on an H200 the keys'
// prologue ran L1-bound (76 % of L1 throughput, 431 us against 301 us for the values' at 8B 8K;
// the keys' epilogue 597 us against 421, run i call 16). When the rotation covers the whole head
// with the neox layout (Llama, Qwen, SmolLM2), one thread takes a vector of the head's first half
// and its partner half a head away: each row, both vectors and their shared cos/sin are read once
// for both outputs. Same arithmetic in the same order as the vector kernels, so the same bits.

// The cos/sin of kVec consecutive frequencies, 16-byte aligned (PairRowsOk), in 16-byte loads.
__device__ __forceinline__ void LoadRope8(const float2* __restrict__ p, float2 (&cs)[kVec]) {
#pragma unroll
  for (int w = 0; w < kVec / 2; ++w) {
    const float4 v = reinterpret_cast<const float4*>(p)[w];
    cs[2 * w] = make_float2(v.x, v.y);
    cs[2 * w + 1] = make_float2(v.z, v.w);
  }
}

// Thread v of the grid: head v / (head_dim / 2 / kVec), features f0 (first half) and f0 + half.
struct PairVector {
  int f0 = 0, f1 = 0, j0 = 0;
  __device__ __forceinline__ PairVector(int v, int head_dim) {
    const int half = head_dim / 2, per_head = half / kVec;
    j0 = (v % per_head) * kVec;
    f0 = (v / per_head) * head_dim + j0;
    f1 = f0 + half;
  }
};

// PrepareVecKernel for keys under PairRowsOk (grid: RowGrid(tokens, p / (2 * kVec))).
template <typename T, typename Rows>
// At most 80 registers (3 blocks of 256 per SM): unbounded, the compiler took 80-96.
__global__ void __launch_bounds__(kThreads, 3)
    PreparePairKernel(Rows in, int64_t tokens, int heads, int head_dim, const float2* __restrict__ table,
                      const float* __restrict__ mean, __nv_bfloat16* __restrict__ out, float* __restrict__ amax) {
  const int p = heads * head_dim, half = head_dim / 2;
  const int v = blockIdx.y * blockDim.x + threadIdx.x;
  const int64_t t0 = int64_t(blockIdx.x) * kRowsPerThread;
  float row_max[kRowsPerThread] = {};
  if (v < p / (2 * kVec)) {
    const PairVector r(v, head_dim);
    float m0[kVec], m1[kVec];
    Load8(mean + r.f0, m0);
    Load8(mean + r.f1, m1);
    const T* a_at = in.FeatureBase(r.f0);
    const T* b_at = in.FeatureBase(r.f1);
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int64_t t = t0 + k;
      if (t >= tokens) break;
      const int64_t off = in.TokenOffset(t);
      float a[kVec], b[kVec];
      float2 cs[kVec];
      Load8(a_at + off, a);
      Load8(b_at + off, b);
      LoadRope8(table + in.Position(t) * half + r.j0, cs);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        // inverse rotation: a = a' c + b' s ; b = b' c - a' s
        const float na = a[i] * cs[i].x + b[i] * cs[i].y;
        const float nb = b[i] * cs[i].x - a[i] * cs[i].y;
        a[i] = __bfloat162float(__float2bfloat16_rn(na - m0[i]));
        b[i] = __bfloat162float(__float2bfloat16_rn(nb - m1[i]));
        row_max[k] = fmaxf(row_max[k], fmaxf(fabsf(a[i]), fabsf(b[i])));
      }
      Store8(out + size_t(t) * p + r.f0, a);
      Store8(out + size_t(t) * p + r.f1, b);
    }
  }
  if (amax) GatherRowMax(row_max, t0, tokens, amax);
}

// FinishVecKernel for keys under PairRowsOk (grid: RowGrid(hi - lo, p / (2 * kVec))).
template <typename T, typename In, typename Rows>
__global__ void __launch_bounds__(kThreads, 3)
    FinishPairKernel(const In* __restrict__ in, int64_t lo, int64_t hi, int heads, int head_dim,
                     const float2* __restrict__ table, const float* __restrict__ mean,
                     const float* __restrict__ row_scale, const float* __restrict__ col_scale, Rows out) {
  const int p = heads * head_dim, half = head_dim / 2;
  const int v = blockIdx.y * blockDim.x + threadIdx.x;
  if (v >= p / (2 * kVec)) return;
  const PairVector r(v, head_dim);
  float m0[kVec], m1[kVec], c0[kVec], c1[kVec];
  LoadMeanScale8(mean, col_scale, r.f0, m0, c0);
  LoadMeanScale8(mean, col_scale, r.f1, m1, c1);
  T* a_at = out.FeatureBase(r.f0);
  T* b_at = out.FeatureBase(r.f1);
  const int64_t t0 = lo + int64_t(blockIdx.x) * kRowsPerThread;
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int64_t t = t0 + k;
    if (t >= hi) break;
    const float s = row_scale ? row_scale[t] : 1.0f;
    float a[kVec], b[kVec];
    float2 cs[kVec];
    Load8(in + size_t(t) * p + r.f0, a);
    Load8(in + size_t(t) * p + r.f1, b);
    LoadRope8(table + out.Position(t) * half + r.j0, cs);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      a[i] = a[i] * (s * c0[i]) + m0[i];
      b[i] = b[i] * (s * c1[i]) + m1[i];
    }
    float na[kVec], nb[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      // apply: a' = a c - b s ; b' = b c + a s
      na[i] = a[i] * cs[i].x - b[i] * cs[i].y;
      nb[i] = b[i] * cs[i].x + a[i] * cs[i].y;
    }
    const int64_t off = out.TokenOffset(t);
    Store8(a_at + off, na);
    Store8(b_at + off, nb);
  }
}

}  // namespace
}  // namespace kvtc::cuda
