// The quantize and dequantize kernels of the CUDA codec: per token and group of PCA components,
// shift and scale as fp16 and codes of the group's bit width, in the record's payload planes,
// with the CPU quantizer's exact arithmetic (quantize.h), so both backends write the same bits.
// Internal to cuda_codec.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace kvtc::cuda {
// Internal linkage: this header belongs to the one translation unit that includes it.
namespace {

struct GroupDesc {
  uint32_t start;       // first component
  uint32_t size;        // components
  uint32_t bits;        // 2, 4, 8
  uint32_t fp8;         // 1 for fp8 e4m3
  uint64_t plane;       // byte offset of the group's plane in the payload
};

__device__ __forceinline__ uint16_t HalfBitsSat(float v) {
  v = fminf(fmaxf(v, -65504.0f), 65504.0f);
  return __half_as_ushort(__float2half_rn(v));
}

__device__ __forceinline__ uint8_t EncodeOne(float x, float shift, float scale, bool fp8, int max_code) {
  if (!(scale > 0.0f)) return 0;
  const float y = __fdiv_rn(__fsub_rn(x, shift), scale);
  if (fp8) return __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
  const float q = rintf(y);
  return uint8_t(fminf(fmaxf(q, 0.0f), float(max_code)));
}

__device__ __forceinline__ float DecodeOne(uint8_t q, float shift, float scale, bool fp8) {
  if (!(scale > 0.0f)) return shift;
  if (fp8) {
    __half_raw h = __nv_cvt_fp8_to_halfraw(q, __NV_E4M3);
    return __fadd_rn(__fmul_rn(__half2float(__half(h)), scale), shift);
  }
  return __fadd_rn(__fmul_rn(float(q), scale), shift);
}

// A token's shift and scale for one group, as fp16 bits (the CPU quantizer's exact arithmetic):
// fp8 centres on the midpoint of [lo, hi], integer codes start at lo.
__device__ __forceinline__ void ShiftScale(float lo, float hi, int bits, bool fp8, uint16_t& sh, uint16_t& sc) {
  if (fp8) {
    sh = HalfBitsSat(__fmul_rn(0.5f, __fadd_rn(hi, lo)));
    sc = HalfBitsSat(__fdiv_rn(__fmul_rn(0.5f, __fsub_rn(hi, lo)), 448.0f));
  } else {
    sh = HalfBitsSat(lo);
    sc = HalfBitsSat(__fdiv_rn(__fsub_rn(hi, lo), float((1 << bits) - 1)));
  }
}

// Token t's shift and scale in a group's plane (shifts, then scales, then codes). Planes start at
// any byte offset (their sizes are not even in general): byte stores.
__device__ __forceinline__ void StoreShiftScale(uint8_t* plane, int64_t t, int64_t tokens, uint16_t sh, uint16_t sc) {
  plane[2 * t] = uint8_t(sh & 0xff);
  plane[2 * t + 1] = uint8_t(sh >> 8);
  plane[2 * tokens + 2 * t] = uint8_t(sc & 0xff);
  plane[2 * tokens + 2 * t + 1] = uint8_t(sc >> 8);
}

// One sequence of a quantize launch (blockIdx.z picks it): its coefficient rows, payload, token
// count and plan tables (group planes are placed by its own token count).
struct SmallSegment;
struct QuantizeJob {
  const float* d;
  uint8_t* payload;
  int64_t tokens;
  const GroupDesc* groups;
  const SmallSegment* segments;
};

// One warp per (token, kept group). Lanes stride over the group's components; min/max by
// shuffles; codes written as whole bytes: a lane owns `8 / bits` consecutive codes per byte.
// Groups of one component (size 1) take the same path with one active lane per token.
__global__ void QuantizeKernel(const QuantizeJob* __restrict__ jobs, int64_t ld, int first_group, int num_groups) {
  const QuantizeJob job = jobs[blockIdx.z];
  const float* d = job.d;
  const int64_t tokens = job.tokens;
  uint8_t* payload = job.payload;
  const int warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int g = blockIdx.y;
  if (t >= tokens || g >= num_groups) return;
  const GroupDesc gd = job.groups[first_group + g];
  const float* x = d + t * ld + gd.start;
  const bool fp8 = gd.fp8 != 0;
  float lo = INFINITY, hi = -INFINITY;
  for (uint32_t j = lane; j < gd.size; j += 32) {
    lo = fminf(lo, x[j]);
    hi = fmaxf(hi, x[j]);
  }
  for (int o = 16; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  uint16_t sh, sc;
  ShiftScale(lo, hi, gd.bits, fp8, sh, sc);
  uint8_t* plane = payload + gd.plane;
  if (lane == 0) StoreShiftScale(plane, t, tokens, sh, sc);
  const float shift = __half2float(__ushort_as_half(sh)), scale = __half2float(__ushort_as_half(sc));
  const int max_code = (1 << gd.bits) - 1;
  uint8_t* codes = plane + 4 * tokens;
  const int per_byte = 8 / gd.bits;
  if (gd.size * gd.bits % 8 == 0) {
    // This token's codes fill whole bytes: lanes own bytes.
    const uint64_t first_byte = uint64_t(t) * gd.size * gd.bits / 8;
    const uint32_t bytes = gd.size * gd.bits / 8;
    for (uint32_t b = lane; b < bytes; b += 32) {
      uint8_t v = 0;
      for (int k = 0; k < per_byte; ++k) {
        v |= uint8_t(EncodeOne(x[b * per_byte + k], shift, scale, fp8, max_code) << (k * gd.bits));
      }
      codes[first_byte + b] = v;
    }
  }
  // Otherwise the group is a single component with 2 or 4 bits (the only sizes whose codes do
  // not fill whole bytes): max == min, so scale is 0 and every code is 0, which the zeroed
  // payload already holds. Tokens sharing a byte never race.
}

// One token's quantization of one small group (1 or 16 components) from its components x[0,
// size): shift, scale and codes into the group's plane. Size 16 fills whole bytes for every width;
// size 1 with 2 or 4 bits has only zero codes (scale 0, see above).
__device__ __forceinline__ void QuantizeSmallOne(const float* x, int64_t t, int64_t tokens, const GroupDesc& gd,
                                                 uint8_t* __restrict__ payload) {
  const bool fp8 = gd.fp8 != 0;
  float lo = x[0], hi = x[0];
  for (uint32_t j = 1; j < gd.size; ++j) {
    lo = fminf(lo, x[j]);
    hi = fmaxf(hi, x[j]);
  }
  uint16_t sh, sc;
  ShiftScale(lo, hi, gd.bits, fp8, sh, sc);
  uint8_t* plane = payload + gd.plane;
  StoreShiftScale(plane, t, tokens, sh, sc);
  if (gd.size * gd.bits % 8 != 0) return;
  const float shift = __half2float(__ushort_as_half(sh)), scale = __half2float(__ushort_as_half(sc));
  const int max_code = (1 << gd.bits) - 1;
  const int per_byte = 8 / gd.bits;
  uint8_t* codes = plane + 4 * tokens + uint64_t(t) * gd.size * gd.bits / 8;
  for (uint32_t b = 0; b < gd.size * gd.bits / 8; ++b) {
    uint8_t v = 0;
    for (int k = 0; k < per_byte; ++k) v |= uint8_t(EncodeOne(x[b * per_byte + k], shift, scale, fp8, max_code) << (k * gd.bits));
    codes[b] = v;
  }
}

// Groups of 1 or 16 components: one thread per token, elements in a loop
// (KVTC_SMALL_GROUPS=threads; QuantizeTileKernel below is the default).
__global__ void QuantizeSmallKernel(const QuantizeJob* __restrict__ jobs, int64_t ld) {
  const QuantizeJob job = jobs[blockIdx.z];
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= job.tokens) return;
  const GroupDesc gd = job.groups[blockIdx.y];
  QuantizeSmallOne(job.d + t * ld + gd.start, t, job.tokens, gd, job.payload);
}

// Token t's fp16 shift or scale from a group's plane (byte loads: planes start at any offset).
__device__ __forceinline__ float PlaneHalf(const uint8_t* halves, int64_t t) {
  return __half2float(__ushort_as_half(uint16_t(halves[2 * t] | (halves[2 * t + 1] << 8))));
}

// Component j of token t of a kept group, from its codes (code k = t * size + j at bit k * bits).
__device__ __forceinline__ float DecodeAt(const GroupDesc& gd, const uint8_t* codes, int64_t t, uint32_t j, float shift,
                                          float scale) {
  const uint64_t pos = (uint64_t(t) * gd.size + j) * gd.bits;
  const uint8_t q = gd.bits == 8 ? codes[pos / 8] : uint8_t((codes[pos / 8] >> (pos % 8)) & ((1u << gd.bits) - 1u));
  return DecodeOne(q, shift, scale, gd.fp8 != 0);
}

// One sequence of a dequantize launch (blockIdx.z picks it): its payload, token count, plan
// tables (planes placed by its own token count) and its first coefficient row.
struct DequantizeJob {
  const uint8_t* payload;
  int64_t tokens;
  const GroupDesc* groups;
  const SmallSegment* segments;
  __nv_bfloat16* out;
};

// One warp per (token, group) of the whole plan (dropped groups write zeros). Output bf16 [T, ld].
__global__ void DequantizeKernel(const DequantizeJob* __restrict__ jobs, int64_t ld, int first_group, int num_groups) {
  const DequantizeJob job = jobs[blockIdx.z];
  const uint8_t* payload = job.payload;
  const int64_t tokens = job.tokens;
  const int warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int g = blockIdx.y;
  if (t >= tokens || g >= num_groups) return;
  const GroupDesc gd = job.groups[first_group + g];
  __nv_bfloat16* x = job.out + t * ld + gd.start;
  if (gd.bits == 0) {
    for (uint32_t j = lane; j < gd.size; j += 32) x[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  const uint8_t* plane = payload + gd.plane;
  const float shift = PlaneHalf(plane, t), scale = PlaneHalf(plane + 2 * tokens, t);
  for (uint32_t j = lane; j < gd.size; j += 32) x[j] = __float2bfloat16_rn(DecodeAt(gd, plane + 4 * tokens, t, j, shift, scale));
}

// One token's components of one small group (zeros for a dropped group) into x[0, size).
__device__ __forceinline__ void DequantizeSmallOne(const uint8_t* __restrict__ payload, int64_t tokens,
                                                   const GroupDesc& gd, int64_t t, __nv_bfloat16* x) {
  if (gd.bits == 0) {
    for (uint32_t j = 0; j < gd.size; ++j) x[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  const uint8_t* plane = payload + gd.plane;
  const float shift = PlaneHalf(plane, t), scale = PlaneHalf(plane + 2 * tokens, t);
  for (uint32_t j = 0; j < gd.size; ++j) x[j] = __float2bfloat16_rn(DecodeAt(gd, plane + 4 * tokens, t, j, shift, scale));
}

// Groups of fewer than 32 components (the DP's single-component groups, by the hundreds: 526 of
// 614 in the 8B shape's rank-2048 plan at 16x): one thread per (token, group), elements in a
// loop, as QuantizeSmallKernel encodes them. The warp kernel above would idle 31 lanes of 32 on
// each; here a warp reads 32 tokens' shifts and scales in two coalesced loads
// (KVTC_SMALL_GROUPS=threads; DequantizeTileKernel below is the default).
__global__ void DequantizeSmallKernel(const DequantizeJob* __restrict__ jobs, int64_t ld) {
  const DequantizeJob job = jobs[blockIdx.z];
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= job.tokens) return;
  const GroupDesc gd = job.groups[blockIdx.y];
  DequantizeSmallOne(job.payload, job.tokens, gd, t, job.out + t * ld + gd.start);
}

// ---- small groups in tiles -----------------------------------------------------------------------
// The kernels above give each thread one token of one small group, so a warp touches 32 rows of
// the coefficient matrix a row apart: 2-byte writes (dequantize) or 4-byte reads (quantize) each
// in a sector of its own. On an H200 the small-group dequantize of an 8B 8K stream took 183 us at
// 86 % of L2 throughput, the quantize 125 us (run i call 16). The small groups of a plan lie
// side by side (the 8B rank-2048 plan: 600 of them over components 0-1439), so a block takes
// kTileTokens tokens of a segment of adjacent small groups (at most kTileComps components) and
// moves the coefficients through shared memory in whole rows, a warp per group and a lane per
// token in between (the shifts, scales and codes of consecutive tokens lie together in a plane).
// Same per-token arithmetic (QuantizeSmallOne, DequantizeSmallOne), so the same bits.
constexpr int kTileTokens = 32;
constexpr int kTileComps = 64;

struct SmallSegment {
  uint32_t first;   // its first group (index into the group table)
  uint32_t count;   // groups
  uint32_t start;   // first component
  uint32_t comps;   // components, <= kTileComps
};

// Grid: ((tokens + kTileTokens - 1) / kTileTokens, segments), 256 threads.
__global__ void DequantizeTileKernel(const DequantizeJob* __restrict__ jobs, int64_t ld) {
  __shared__ __nv_bfloat16 tile[kTileTokens][kTileComps + 2];  // rows 33 words apart: no bank conflicts
  const DequantizeJob job = jobs[blockIdx.z];
  const uint8_t* payload = job.payload;
  const int64_t tokens = job.tokens;
  const GroupDesc* groups = job.groups;
  __nv_bfloat16* out = job.out;
  const SmallSegment sg = job.segments[blockIdx.y];
  const int64_t t0 = int64_t(blockIdx.x) * kTileTokens;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (t0 + lane < tokens) {
    for (uint32_t g = warp; g < sg.count; g += warps) {
      const GroupDesc gd = groups[sg.first + g];
      DequantizeSmallOne(payload, tokens, gd, t0 + lane, &tile[lane][gd.start - sg.start]);
    }
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < kTileTokens * sg.comps; i += blockDim.x) {
    const uint32_t r = i / sg.comps, c = i % sg.comps;
    if (t0 + r < tokens) out[(t0 + r) * ld + sg.start + c] = tile[r][c];
  }
}

// Grid: ((tokens + kTileTokens - 1) / kTileTokens, segments), 256 threads.
__global__ void QuantizeTileKernel(const QuantizeJob* __restrict__ jobs, int64_t ld) {
  __shared__ float tile[kTileTokens][kTileComps + 1];  // rows 65 words apart: no bank conflicts
  const QuantizeJob job = jobs[blockIdx.z];
  const float* d = job.d;
  const int64_t tokens = job.tokens;
  const GroupDesc* groups = job.groups;
  uint8_t* payload = job.payload;
  const SmallSegment sg = job.segments[blockIdx.y];
  const int64_t t0 = int64_t(blockIdx.x) * kTileTokens;
  for (uint32_t i = threadIdx.x; i < kTileTokens * sg.comps; i += blockDim.x) {
    const uint32_t r = i / sg.comps, c = i % sg.comps;
    if (t0 + r < tokens) tile[r][c] = d[(t0 + r) * ld + sg.start + c];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (t0 + lane >= tokens) return;
  for (uint32_t g = warp; g < sg.count; g += warps) {
    const GroupDesc gd = groups[sg.first + g];
    QuantizeSmallOne(&tile[lane][gd.start - sg.start], t0 + lane, tokens, gd, payload);
  }
}

// The segments of groups[0, small) (small groups in component order): runs of adjacent groups cut
// at kTileComps components.
std::vector<SmallSegment> SmallSegments(const std::vector<GroupDesc>& groups, size_t small) {
  std::vector<SmallSegment> out;
  for (size_t i = 0; i < small; ++i) {
    const GroupDesc& g = groups[i];
    if (out.empty() || out.back().start + out.back().comps != g.start || out.back().comps + g.size > kTileComps)
      out.push_back({uint32_t(i), 0, g.start, 0});
    out.back().count++;
    out.back().comps += g.size;
  }
  return out;
}

}  // namespace
}  // namespace kvtc::cuda
