// CUDA backend of the kvtc codec. Same record bytes as the CPU backend (format.h, quantize.h,
// entropy.h); a record written here inflates on the CPU and the reverse.
#include "kvtc/cuda_codec.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <nvcomp/deflate.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "cuda_common.cuh"
#include "kvtc/crc32c.h"
#include "kvtc/cuda_huffman.h"
#include "kvtc/error.h"
#include "kvtc/host_copy.h"

namespace kvtc::cuda {

#define KVTC_NVCOMP_CALL(expr)                                                                        \
  do {                                                                                                \
    nvcompStatus_t kvtc_n_ = (expr);                                                                  \
    KVTC_CHECK(kvtc_n_ == nvcompSuccess, kDeflate, "nvCOMP status " << int(kvtc_n_) << " at " #expr); \
  } while (0)

namespace {

// ---- kernels -------------------------------------------------------------------------------

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

// Encode prologue. in: [tokens, heads, head_dim] (heads = layers x kv_heads); out bf16, centred,
// RoPE removed when `table` is set. One thread per output element; each reads its pair partner.
template <typename T>
__global__ void PrepareKernel(const T* __restrict__ in, int64_t tokens, int heads, int head_dim, int rotary_dim,
                              bool neox, const float2* __restrict__ table, const float* __restrict__ mean,
                              __nv_bfloat16* __restrict__ out) {
  const int64_t p = int64_t(heads) * head_dim;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= tokens * p) return;
  const int64_t t = i / p;
  const int64_t f = i % p;
  const int j = int(f % head_dim);
  float x = LoadAsFloat(in, i);
  if (table && j < rotary_dim) {
    const int half = rotary_dim / 2;
    int freq, partner;
    bool first;
    if (neox) {
      first = j < half;
      freq = first ? j : j - half;
      partner = first ? j + half : j - half;
    } else {
      first = (j & 1) == 0;
      freq = j >> 1;
      partner = first ? j + 1 : j - 1;
    }
    const float2 cs = table[t * half + freq];
    const float y = LoadAsFloat(in, i - j + partner);
    // inverse rotation: a = a' c + b' s ; b = b' c - a' s
    x = first ? x * cs.x + y * cs.y : x * cs.x - y * cs.y;
  }
  out[i] = __float2bfloat16_rn(x - mean[f]);
}

// Decode epilogue. in: fp32 reconstruction without the mean; out: + mean, RoPE re-applied.
template <typename T>
__global__ void FinishKernel(const float* __restrict__ in, int64_t tokens, int heads, int head_dim, int rotary_dim,
                             bool neox, const float2* __restrict__ table, const float* __restrict__ mean,
                             T* __restrict__ out) {
  const int64_t p = int64_t(heads) * head_dim;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= tokens * p) return;
  const int64_t t = i / p;
  const int64_t f = i % p;
  const int j = int(f % head_dim);
  float x = in[i] + mean[f];
  if (table && j < rotary_dim) {
    const int half = rotary_dim / 2;
    int freq, partner;
    bool first;
    if (neox) {
      first = j < half;
      freq = first ? j : j - half;
      partner = first ? j + half : j - half;
    } else {
      first = (j & 1) == 0;
      freq = j >> 1;
      partner = first ? j + 1 : j - 1;
    }
    const float2 cs = table[t * half + freq];
    const float y = in[i - j + partner] + mean[f - j + partner];
    // apply: a' = a c - b s ; b' = b c + a s
    x = first ? x * cs.x - y * cs.y : x * cs.x + y * cs.y;
  }
  StoreFromFloat(out, i, x);
}

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

// One warp per (token, kept group). Lanes stride over the group's components; min/max by
// shuffles; codes written as whole bytes: a lane owns `8 / bits` consecutive codes per byte.
// Groups of one component (size 1) take the same path with one active lane per token.
__global__ void QuantizeKernel(const float* __restrict__ d, int64_t ld, int64_t tokens,
                               const GroupDesc* __restrict__ groups, int num_groups, uint8_t* __restrict__ payload) {
  const int warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int g = blockIdx.y;
  if (t >= tokens || g >= num_groups) return;
  const GroupDesc gd = groups[g];
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

// Groups of 1 or 16 components: one thread per token, elements in a loop. Size 16 fills whole
// bytes for every width; size 1 with 2 or 4 bits has only zero codes (scale 0, see above).
__global__ void QuantizeSmallKernel(const float* __restrict__ d, int64_t ld, int64_t tokens,
                                    const GroupDesc* __restrict__ groups, uint8_t* __restrict__ payload) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const GroupDesc gd = groups[blockIdx.y];
  const float* x = d + t * ld + gd.start;
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

// One warp per (token, group) of the whole plan (dropped groups write zeros). Output bf16 [T, ld].
__global__ void DequantizeKernel(const uint8_t* __restrict__ payload, int64_t tokens, const GroupDesc* __restrict__ groups,
                                 int num_groups, __nv_bfloat16* __restrict__ out, int64_t ld) {
  const int warps_per_block = blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int g = blockIdx.y;
  if (t >= tokens || g >= num_groups) return;
  const GroupDesc gd = groups[g];
  __nv_bfloat16* x = out + t * ld + gd.start;
  if (gd.bits == 0) {
    for (uint32_t j = lane; j < gd.size; j += 32) x[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  const uint8_t* plane = payload + gd.plane;
  const uint16_t sh = uint16_t(plane[2 * t] | (plane[2 * t + 1] << 8));
  const uint16_t sc = uint16_t(plane[2 * tokens + 2 * t] | (plane[2 * tokens + 2 * t + 1] << 8));
  const float shift = __half2float(__ushort_as_half(sh));
  const float scale = __half2float(__ushort_as_half(sc));
  const uint8_t* codes = plane + 4 * tokens;
  const bool fp8 = gd.fp8 != 0;
  const uint8_t mask = uint8_t((1u << gd.bits) - 1u);
  for (uint32_t j = lane; j < gd.size; j += 32) {
    const uint64_t pos = (uint64_t(t) * gd.size + j) * gd.bits;
    const uint8_t q = gd.bits == 8 ? codes[pos / 8] : uint8_t((codes[pos / 8] >> (pos % 8)) & mask);
    x[j] = __float2bfloat16_rn(DecodeOne(q, shift, scale, fp8));
  }
}

// Packs variable-size chunks back to back at `offsets`: chunk c's `sizes[c]` bytes come from
// `srcs[c]` (its compressed slot, or the payload itself for a chunk stored uncompressed).
__global__ void CompactKernel(const uint8_t* const* __restrict__ srcs, const size_t* __restrict__ sizes,
                              const uint64_t* __restrict__ offsets, uint8_t* __restrict__ out) {
  const size_t c = blockIdx.x;
  const uint8_t* src = srcs[c];
  uint8_t* dst = out + offsets[c];
  const size_t n = sizes[c];
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// ---- host helpers --------------------------------------------------------------------------

std::vector<GroupDesc> PlanDescs(const Plan& plan, int64_t tokens, bool kept_only) {
  std::vector<GroupDesc> out;
  uint64_t plane = 0;
  for (const Group& g : plan.groups) {
    const int bits = TypeBits(g.type);
    if (bits == 0 && kept_only) continue;
    out.push_back({g.start, g.size, uint32_t(bits), g.type == GroupType::kFp8 ? 1u : 0u, plane});
    if (bits) plane += uint64_t(tokens) * 4 + (uint64_t(tokens) * g.size * bits + 7) / 8;
  }
  return out;
}

size_t Elem(KvDtype d) { return DtypeBytes(d); }

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  PinnedBuffer pinned;
  Context() {
    KVTC_CUDA_CALL(cudaGetDevice(&device));
    KVTC_CUDA_CALL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    KVTC_CUBLAS_CALL(cublasCreate(&cublas));
    KVTC_CUBLAS_CALL(cublasSetStream(cublas, stream));
  }
  ~Context() {
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
  }
};

// One context per host thread (libuv pool threads run jobs concurrently, one stream each).
Context& ThreadContext() {
  thread_local Context ctx;
  return ctx;
}

// KVTC_CUDA_PROFILE=1 prints per-stage device-timeline durations of each encode/decode to stderr.
struct Profiler {
  bool on = false;
  cudaStream_t stream = nullptr;
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  explicit Profiler(cudaStream_t s) : stream(s) {
    static const bool enabled = std::getenv("KVTC_CUDA_PROFILE") != nullptr;
    on = enabled;
    mark("start");
  }
  void mark(const char* name) {
    if (!on) return;
    cudaEvent_t e;
    cudaEventCreate(&e);
    cudaEventRecord(e, stream);
    marks.emplace_back(name, e);
  }
  void report(const char* what) {
    if (!on || marks.size() < 2) return;
    cudaEventSynchronize(marks.back().second);
    std::string line = std::string("[kvtc-profile] ") + what + ":";
    for (size_t i = 1; i < marks.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second);
      char buf[64];
      std::snprintf(buf, sizeof(buf), " %s %.3f", marks[i].first, ms);
      line += buf;
    }
    std::fprintf(stderr, "%s ms\n", line.c_str());
    for (auto& m : marks) cudaEventDestroy(m.second);
    marks.clear();
  }
};

int NvcompAlgorithm() {
  static const int algo = [] {
    const char* v = std::getenv("KVTC_NVCOMP_ALGO");
    return v ? std::atoi(v) : 1;
  }();
  return algo;
}

// KVTC_CUDA_ENTROPY=kvtc|nvcomp picks the DEFLATE coder of both directions: kvtc's own
// (cuda_huffman.h: literal-only dynamic Huffman encode, a warp-per-chunk inflater) or nvCOMP's
// batched DEFLATE. Unset: the faster one per direction, as measured on an H200 (smollm2 shape,
// 24 MiB payload per stream, 16 KiB chunks): encode kvtc (0.54 ms per stream against nvCOMP's
// ~7 ms), decode nvCOMP (its inflate kernel 2.2 ms against kvtc's one-warp-per-chunk 2.7 ms).
enum class EntropyCoder { kKvtc, kNvcomp };
constexpr EntropyCoder kDefaultEncodeCoder = EntropyCoder::kKvtc;
constexpr EntropyCoder kDefaultDecodeCoder = EntropyCoder::kNvcomp;
EntropyCoder Coder(bool encode) {
  static const int forced = [] {
    const char* v = std::getenv("KVTC_CUDA_ENTROPY");
    if (!v || !*v) return -1;
    if (std::strcmp(v, "kvtc") == 0) return int(EntropyCoder::kKvtc);
    if (std::strcmp(v, "nvcomp") == 0) return int(EntropyCoder::kNvcomp);
    return -2;
  }();
  KVTC_CHECK(forced != -2, kInvalidArgument, "KVTC_CUDA_ENTROPY must be kvtc or nvcomp");
  if (forced >= 0) return EntropyCoder(forced);
  return encode ? kDefaultEncodeCoder : kDefaultDecodeCoder;
}

constexpr int kThreads = 256;
inline unsigned Blocks(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

}  // namespace

cudaStream_t JobStream() { return ThreadContext().stream; }

// Leading dimension of a [*, n] bf16/fp32 matrix for cuBLAS: n rounded up to 8 elements.
inline uint32_t PadLd(uint32_t n) { return (n + 7) / 8 * 8; }

class DeviceCalibration {
 public:
  int device = 0;
  DeviceBuffer<float> mean_keys, mean_values;
  DeviceBuffer<__nv_bfloat16> basis_keys, basis_values;
  DeviceBuffer<double> inv_freq;
  uint32_t rank_keys = 0, rank_values = 0;
  // Leading dimensions of the device bases: the rank rounded up to 8 (16-byte rows of bf16),
  // which cuBLAS needs for its tensor-core kernels (an odd rank measured 5.6x slower).
  uint32_t ld_keys = 0, ld_values = 0;
  int half = 0;

  // cos/sin for absolute positions [0, table_positions), computed once (in double) and grown on
  // demand: RoPE costs jobs one table read per element instead of trigonometry per token.
  const float2* RopeTable(int64_t end, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end > table_positions_) {
      int64_t n = std::max<int64_t>(end, 2 * table_positions_);
      n = std::max<int64_t>(n, 8192);
      DeviceBuffer<float2> grown(size_t(n) * half);
      RopeTableKernel<<<Blocks(n * half), kThreads, 0, stream>>>(inv_freq.ptr, half, 0, n, grown.ptr);
      KVTC_CUDA_CALL(cudaGetLastError());
      KVTC_CUDA_CALL(cudaStreamSynchronize(stream));
      std::swap(table_.ptr, grown.ptr);
      std::swap(table_.count, grown.count);
      table_positions_ = n;
    }
    return table_.ptr;
  }

 private:
  std::mutex mu_;
  DeviceBuffer<float2> table_;
  int64_t table_positions_ = 0;
};

bool Available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string DeviceName(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unknown";
  return prop.name;
}

std::shared_ptr<DeviceCalibration> Upload(const Calibration& c, int device) {
  KVTC_CHECK(Available(), kBackendUnavailable, "no CUDA device is available");
  KVTC_CUDA_CALL(cudaSetDevice(device));
  auto dev = std::make_shared<DeviceCalibration>();
  dev->device = device;
  auto upload_stream = [](const StreamBasis& s, DeviceBuffer<float>& mean, DeviceBuffer<__nv_bfloat16>& basis) {
    mean.resize(s.mean.size());
    KVTC_CUDA_CALL(cudaMemcpy(mean.ptr, s.mean.data(), s.mean.size() * 4, cudaMemcpyHostToDevice));
    // Row-major [p, rank] on the host; [p, ld] on the device, the padding columns zero.
    const size_t rank = s.rank, ld = PadLd(s.rank), rows = rank ? s.basis.size() / rank : 0;
    std::vector<__nv_bfloat16> b(rows * ld, __float2bfloat16_rn(0.0f));
    for (size_t j = 0; j < rows; ++j)
      for (size_t i = 0; i < rank; ++i) b[j * ld + i] = __float2bfloat16_rn(s.basis[j * rank + i]);
    basis.resize(std::max<size_t>(1, b.size()));
    if (!b.empty()) KVTC_CUDA_CALL(cudaMemcpy(basis.ptr, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  };
  upload_stream(c.keys, dev->mean_keys, dev->basis_keys);
  upload_stream(c.values, dev->mean_values, dev->basis_values);
  dev->rank_keys = c.keys.rank;
  dev->rank_values = c.values.rank;
  dev->ld_keys = PadLd(c.keys.rank);
  dev->ld_values = PadLd(c.values.rank);
  const std::vector<double> inv = RopeInvFreq(c.rope);
  dev->half = int(inv.size());
  dev->inv_freq.resize(inv.size());
  KVTC_CUDA_CALL(cudaMemcpy(dev->inv_freq.ptr, inv.data(), inv.size() * 8, cudaMemcpyHostToDevice));
  return dev;
}

namespace {

// The GPU work of one stream (keys or values) of one job: device input rows -> payload bytes
// (entropy coded, host). Scratch buffers persist per thread.
struct StreamScratch {
  DeviceBuffer<__nv_bfloat16> x;
  DeviceBuffer<float> d;
  DeviceBuffer<uint8_t> payload;
  DeviceBuffer<float2> table;
  DeviceBuffer<GroupDesc> groups;
  DeviceBuffer<uint8_t> slots;
  DeviceBuffer<uint8_t> packed;
  DeviceBuffer<uint8_t> temp;
  DeviceBuffer<void*> in_ptrs, out_ptrs;
  DeviceBuffer<size_t> in_sizes, out_sizes;
  DeviceBuffer<uint64_t> offsets;
  DeviceBuffer<nvcompStatus_t> statuses;
  DeviceBuffer<float> xf;
  DeviceBuffer<__nv_bfloat16> dq;
  PinnedBuffer pinned;  // this stream's compressed chunks, read back for the record
};

// One coded section, waiting in pinned memory to be copied into the record.
struct CodedSection {
  std::vector<uint8_t> table;  // u32 chunk count + (raw, stored) per chunk
  const uint8_t* chunks = nullptr;
  uint64_t chunk_bytes = 0;
  uint64_t size() const { return table.size() + chunk_bytes; }
};

StreamScratch& Scratch(int which) {
  thread_local StreamScratch s[2];
  return s[which];
}

template <typename F>
void DispatchDtype(KvDtype dt, F&& f) {
  switch (dt) {
    case KvDtype::kFloat32:
      f(float{});
      break;
    case KvDtype::kFloat16:
      f(__half{});
      break;
    case KvDtype::kBfloat16:
      f(__nv_bfloat16{});
      break;
  }
}

// Groups of fewer than 32 components: one thread per token; larger: one warp per token.
void LaunchQuantize(Context& ctx, StreamScratch& s, const Plan& plan, uint32_t tokens, uint32_t ld) {
  const std::vector<GroupDesc> all = PlanDescs(plan, tokens, /*kept_only=*/true);
  std::vector<GroupDesc> groups;
  for (const GroupDesc& g : all) if (g.size < 32) groups.push_back(g);
  const size_t small = groups.size();
  for (const GroupDesc& g : all) if (g.size >= 32) groups.push_back(g);
  if (groups.empty()) return;
  s.groups.resize(groups.size());
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.groups.ptr, groups.data(), groups.size() * sizeof(GroupDesc), cudaMemcpyHostToDevice,
                                 ctx.stream));
  if (small > 0) {
    QuantizeSmallKernel<<<dim3(unsigned((tokens + 255) / 256), unsigned(small)), 256, 0, ctx.stream>>>(
        s.d.ptr, ld, tokens, s.groups.ptr, s.payload.ptr);
  }
  if (groups.size() > small) {
    QuantizeKernel<<<dim3(unsigned((tokens + 7) / 8), unsigned(groups.size() - small)), 256, 0, ctx.stream>>>(
        s.d.ptr, ld, tokens, s.groups.ptr + small, int(groups.size() - small), s.payload.ptr);
  }
  KVTC_CUDA_CALL(cudaGetLastError());
}

CodedSection EncodeStream(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const Plan& plan,
                          bool keys, const void* dev_rows, KvDtype dtype, uint32_t tokens, int64_t pos0,
                                  size_t chunk_bytes, int which) {
  StreamScratch& s = Scratch(which);
  Profiler prof(ctx.stream);
  const int64_t p = c.feature_dim();
  const int heads = int(c.layers * c.kv_heads);
  const int half = c.rope.rotary_dim / 2;
  s.x.resize(size_t(tokens) * p);
  const float2* table = keys ? const_cast<DeviceCalibration&>(dev).RopeTable(pos0 + tokens, ctx.stream) + pos0 * half : nullptr;
  const float* mean = keys ? dev.mean_keys.ptr : dev.mean_values.ptr;
  const bool neox = c.rope.layout == RopeLayout::kNeox;
  DispatchDtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    PrepareKernel<T><<<Blocks(int64_t(tokens) * p), kThreads, 0, ctx.stream>>>(
        static_cast<const T*>(dev_rows), tokens, heads, int(c.head_dim), c.rope.rotary_dim, neox, table, mean, s.x.ptr);
  });
  KVTC_CUDA_CALL(cudaGetLastError());
  prof.mark("prepare");
  const uint32_t r = plan.rank;
  const uint32_t basis_ld = keys ? dev.ld_keys : dev.ld_values;
  const uint32_t d_ld = PadLd(r);  // D rows padded too: ldc must keep 16-byte alignment
  s.d.resize(std::max<size_t>(1, size_t(tokens) * d_ld));
  if (r > 0) {
    const float one = 1.0f, zero = 0.0f;
    // Row-major D[T, r] = X[T, p] V[p, :r]  <=>  column-major D^T = V^T X^T.
    // M = d_ld, not r: the padding columns of the basis are zero, and an M that is not a multiple
    // of 8 measured 6x slower (4.6 ms vs 0.74 ms, SmolLM2 shape, 32K tokens, rank 1447 vs 1448).
    KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, int(std::min(d_ld, basis_ld)), int(tokens),
                                  int(p), &one, keys ? dev.basis_keys.ptr : dev.basis_values.ptr, CUDA_R_16BF, int(basis_ld),
                                  s.x.ptr, CUDA_R_16BF, int(p), &zero, s.d.ptr, CUDA_R_32F, int(d_ld),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  prof.mark("gemm");
  const size_t payload_bytes = PayloadBytes(plan, tokens);
  s.payload.resize(std::max<size_t>(4, payload_bytes + 4));
  KVTC_CUDA_CALL(cudaMemsetAsync(s.payload.ptr, 0, payload_bytes + 4, ctx.stream));
  LaunchQuantize(ctx, s, plan, tokens, d_ld);
  prof.mark("quantize");
  // nvCOMP batched DEFLATE over chunk_bytes chunks of the payload.
  const size_t chunks = (payload_bytes + chunk_bytes - 1) / chunk_bytes;
  CodedSection out;
  std::vector<uint8_t>& body = out.table;
  body.resize(4 + 8 * chunks);
  const uint32_t n32 = uint32_t(chunks);
  std::memcpy(body.data(), &n32, 4);
  if (chunks == 0) {
    KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
    return out;
  }
  const bool own_coder = Coder(/*encode=*/true) == EntropyCoder::kKvtc;
  nvcompBatchedDeflateCompressOpts_t opts = nvcompBatchedDeflateCompressDefaultOpts;
  opts.algorithm = NvcompAlgorithm();
  size_t max_out = 0, temp_bytes = 0;
  if (own_coder) {
    max_out = (chunk_bytes + 255) / 256 * 256;  // kvtc's coder never writes more than the chunk
  } else {
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressGetMaxOutputChunkSize(chunk_bytes, opts, &max_out));
    max_out = (max_out + 255) / 256 * 256;  // slots stay aligned for nvCOMP
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressGetTempSize(chunks, chunk_bytes, opts, &temp_bytes, payload_bytes,
                                                             ctx.stream));
    s.temp.resize(std::max<size_t>(1, temp_bytes));
  }
  s.slots.resize(chunks * max_out);
  std::vector<void*> in_ptrs(chunks), out_ptrs(chunks);
  std::vector<size_t> in_sizes(chunks);
  for (size_t i = 0; i < chunks; ++i) {
    in_ptrs[i] = s.payload.ptr + i * chunk_bytes;
    out_ptrs[i] = s.slots.ptr + i * max_out;
    in_sizes[i] = std::min(chunk_bytes, payload_bytes - i * chunk_bytes);
  }
  s.out_sizes.resize(chunks);
  s.offsets.resize(chunks);
  if (own_coder) {
    // sizes[c] = the chunk's own size when it did not shrink: the stored rule below applies.
    huff::LaunchEncode(s.payload.ptr, payload_bytes, chunk_bytes, s.slots.ptr, max_out, s.out_sizes.ptr, ctx.stream);
    KVTC_CUDA_CALL(cudaGetLastError());
  } else {
    s.in_ptrs.resize(chunks);
    s.out_ptrs.resize(chunks);
    s.in_sizes.resize(chunks);
    s.statuses.resize(chunks);
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.in_ptrs.ptr, in_ptrs.data(), chunks * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.out_ptrs.ptr, out_ptrs.data(), chunks * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.in_sizes.ptr, in_sizes.data(), chunks * sizeof(size_t), cudaMemcpyHostToDevice, ctx.stream));
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressAsync(s.in_ptrs.ptr, s.in_sizes.ptr, chunk_bytes, chunks, s.temp.ptr,
                                                       temp_bytes, s.out_ptrs.ptr, s.out_sizes.ptr, opts, s.statuses.ptr,
                                                       ctx.stream));
  }
  prof.mark("deflate");
  std::vector<size_t> out_sizes(chunks);
  KVTC_CUDA_CALL(cudaMemcpyAsync(out_sizes.data(), s.out_sizes.ptr, chunks * sizeof(size_t), cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));  // the one host sync: sizes decide the layout
  // A chunk that did not shrink is stored (same rule as the CPU encoder): compact from the
  // payload for those, from the slots for the others.
  std::vector<uint64_t> offsets(chunks);
  uint64_t total = 0;
  for (size_t i = 0; i < chunks; ++i) {
    const bool stored = out_sizes[i] >= in_sizes[i];
    const size_t n = stored ? in_sizes[i] : out_sizes[i];
    const uint32_t raw32 = uint32_t(in_sizes[i]), st32 = uint32_t(n);
    std::memcpy(body.data() + 4 + 8 * i, &raw32, 4);
    std::memcpy(body.data() + 8 + 8 * i, &st32, 4);
    offsets[i] = total;
    total += n;
    if (stored) {
      out_ptrs[i] = in_ptrs[i];
      out_sizes[i] = in_sizes[i];
    }
  }
  s.packed.resize(std::max<uint64_t>(1, total));
  // One compaction kernel for every chunk, stored or compressed (a copy call per stored chunk
  // cost ~5 us of API time each: ~10 ms for an 8K-token 8B-shape stream of random-like payload).
  s.out_ptrs.resize(chunks);
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.out_ptrs.ptr, out_ptrs.data(), chunks * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.out_sizes.ptr, out_sizes.data(), chunks * sizeof(size_t), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.offsets.ptr, offsets.data(), chunks * 8, cudaMemcpyHostToDevice, ctx.stream));
  CompactKernel<<<unsigned(chunks), 256, 0, ctx.stream>>>(reinterpret_cast<const uint8_t* const*>(s.out_ptrs.ptr),
                                                          s.out_sizes.ptr, s.offsets.ptr, s.packed.ptr);
  KVTC_CUDA_CALL(cudaGetLastError());
  prof.mark("compact");
  s.pinned.resize(std::max<uint64_t>(1, total));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.pinned.ptr, s.packed.ptr, total, cudaMemcpyDeviceToHost, ctx.stream));
  prof.mark("d2h");
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  prof.report(keys ? "encode keys" : "encode values");
  out.chunks = s.pinned.ptr;
  out.chunk_bytes = total;
  return out;
}

// Inflates a DEFLATE-chunks body (already validated by the caller's table walk) into s.payload.
void InflateToDevice(Context& ctx, StreamScratch& s, const uint8_t* body, size_t body_size, size_t payload_bytes) {
  // Validate the table exactly as the CPU decoder does, before any device allocation.
  KVTC_CHECK(body_size >= 4, kRecordLength, "entropy section has no chunk table");
  uint32_t chunks;
  std::memcpy(&chunks, body, 4);
  KVTC_CHECK(chunks <= (body_size - 4) / 8, kRecordLength, "entropy section declares too many chunks");
  std::vector<size_t> raw(chunks), stored(chunks), src(chunks), dst(chunks);
  size_t at = 4 + 8 * size_t(chunks), out = 0, max_raw = 0;
  for (uint32_t i = 0; i < chunks; ++i) {
    uint32_t r, st;
    std::memcpy(&r, body + 4 + 8 * i, 4);
    std::memcpy(&st, body + 8 + 8 * i, 4);
    KVTC_CHECK(r <= kMaxChunkBytes && st <= r, kRecordLength, "chunk " << i << " declares invalid sizes");
    KVTC_CHECK(st <= body_size - at, kRecordLength, "chunk " << i << " runs past its section");
    KVTC_CHECK(r <= payload_bytes - out, kRecordSizeMismatch, "chunks inflate past the plan's payload size");
    raw[i] = r;
    stored[i] = st;
    src[i] = at;
    dst[i] = out;
    at += st;
    out += r;
    max_raw = std::max<size_t>(max_raw, r);
  }
  KVTC_CHECK(at == body_size, kRecordLength, "entropy section has trailing bytes");
  KVTC_CHECK(out == payload_bytes, kRecordSizeMismatch, "chunks inflate to " << out << " bytes, the plan implies " << payload_bytes);
  s.payload.resize(std::max<size_t>(4, payload_bytes));
  // Compressed chunks go to the device at 16-byte aligned offsets (nvCOMP's input alignment),
  // staged through pinned memory: one host-to-device copy for the section.
  std::vector<size_t> staged(chunks);
  size_t staged_bytes = 0;
  for (uint32_t i = 0; i < chunks; ++i) {
    staged[i] = staged_bytes;
    staged_bytes += (stored[i] + 15) / 16 * 16;
  }
  s.packed.resize(std::max<size_t>(1, staged_bytes));
  ctx.pinned.resize(std::max<size_t>(1, staged_bytes));
  ParallelCopyChunks(ctx.pinned.ptr, staged.data(), body, src.data(), stored.data(), chunks);
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.packed.ptr, ctx.pinned.ptr, staged_bytes, cudaMemcpyHostToDevice, ctx.stream));
  std::vector<void*> in_ptrs, out_ptrs;
  std::vector<size_t> in_sizes, out_caps;
  for (uint32_t i = 0; i < chunks; ++i) {
    if (stored[i] == raw[i]) {
      KVTC_CUDA_CALL(cudaMemcpyAsync(s.payload.ptr + dst[i], s.packed.ptr + staged[i], raw[i], cudaMemcpyDeviceToDevice, ctx.stream));
      continue;
    }
    in_ptrs.push_back(s.packed.ptr + staged[i]);
    out_ptrs.push_back(s.payload.ptr + dst[i]);
    in_sizes.push_back(stored[i]);
    out_caps.push_back(raw[i]);
  }
  const size_t n = in_ptrs.size();
  if (n == 0) return;
  if (Coder(/*encode=*/false) == EntropyCoder::kKvtc) {
    // One warp per chunk; jobs and statuses share the temp buffer; one sync to read statuses.
    std::vector<huff::InflateJob> jobs(n);
    for (size_t i = 0; i < n; ++i) {
      jobs[i] = {uint64_t(static_cast<uint8_t*>(in_ptrs[i]) - s.packed.ptr),
                 uint64_t(static_cast<uint8_t*>(out_ptrs[i]) - s.payload.ptr), uint32_t(in_sizes[i]), uint32_t(out_caps[i])};
    }
    s.temp.resize(n * sizeof(huff::InflateJob) + n * sizeof(int32_t));
    auto* djobs = reinterpret_cast<huff::InflateJob*>(s.temp.ptr);
    auto* dstatus = reinterpret_cast<int32_t*>(s.temp.ptr + n * sizeof(huff::InflateJob));
    KVTC_CUDA_CALL(cudaMemcpyAsync(djobs, jobs.data(), n * sizeof(huff::InflateJob), cudaMemcpyHostToDevice, ctx.stream));
    huff::LaunchInflate(s.packed.ptr, s.payload.ptr, djobs, uint32_t(n), dstatus, ctx.stream);
    KVTC_CUDA_CALL(cudaGetLastError());
    std::vector<int32_t> st(n);
    KVTC_CUDA_CALL(cudaMemcpyAsync(st.data(), dstatus, n * sizeof(int32_t), cudaMemcpyDeviceToHost, ctx.stream));
    KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
    for (size_t i = 0; i < n; ++i) {
      KVTC_CHECK(st[i] == huff::kInflateOk, kDeflate, "a DEFLATE chunk is malformed or inflates to the wrong size");
    }
    return;
  }
  nvcompBatchedDeflateDecompressOpts_t opts{};
  opts.backend = NVCOMP_DECOMPRESS_BACKEND_CUDA;
  size_t temp_bytes = 0;
  KVTC_NVCOMP_CALL(nvcompBatchedDeflateDecompressGetTempSize(n, max_raw, opts, &temp_bytes, payload_bytes, ctx.stream));
  s.temp.resize(std::max<size_t>(1, temp_bytes));
  s.in_ptrs.resize(n);
  s.out_ptrs.resize(n);
  s.in_sizes.resize(n);
  s.out_sizes.resize(2 * n);
  s.statuses.resize(n);
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.in_ptrs.ptr, in_ptrs.data(), n * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.out_ptrs.ptr, out_ptrs.data(), n * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.in_sizes.ptr, in_sizes.data(), n * sizeof(size_t), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.out_sizes.ptr, out_caps.data(), n * sizeof(size_t), cudaMemcpyHostToDevice, ctx.stream));
  KVTC_NVCOMP_CALL(nvcompBatchedDeflateDecompressAsync(s.in_ptrs.ptr, s.in_sizes.ptr, s.out_sizes.ptr, s.out_sizes.ptr + n,
                                                       n, s.temp.ptr, temp_bytes, s.out_ptrs.ptr, opts, s.statuses.ptr,
                                                       ctx.stream));
  std::vector<nvcompStatus_t> st(n);
  std::vector<size_t> got(n);
  KVTC_CUDA_CALL(cudaMemcpyAsync(st.data(), s.statuses.ptr, n * sizeof(nvcompStatus_t), cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(got.data(), s.out_sizes.ptr + n, n * sizeof(size_t), cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  for (size_t i = 0; i < n; ++i) {
    KVTC_CHECK(st[i] == nvcompSuccess && got[i] == out_caps[i], kDeflate,
               "a DEFLATE chunk is malformed or inflates to the wrong size");
  }
}

// payload (device, s.payload) -> rows of dtype on the device at dev_out.
void DecodeStream(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const Plan& plan, bool keys,
                  uint32_t tokens, int64_t pos0, KvDtype dtype, void* dev_out, StreamScratch& s) {
  const int64_t p = c.feature_dim();
  const uint32_t r = plan.rank;
  const uint32_t dq_ld = PadLd(r);
  const std::vector<GroupDesc> groups = PlanDescs(plan, tokens, /*kept_only=*/false);
  s.dq.resize(std::max<size_t>(1, size_t(tokens) * dq_ld));
  const uint32_t basis_ld = keys ? dev.ld_keys : dev.ld_values;
  const uint32_t k_dim = std::min(dq_ld, basis_ld);  // padded like M on encode (zero columns)
  if (k_dim != r) {
    // The GEMM reads the padding columns: zeros, never stale bytes (0 x NaN is NaN).
    KVTC_CUDA_CALL(cudaMemsetAsync(s.dq.ptr, 0, size_t(tokens) * dq_ld * 2, ctx.stream));
  }
  if (!groups.empty()) {
    s.groups.resize(groups.size());
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.groups.ptr, groups.data(), groups.size() * sizeof(GroupDesc),
                                   cudaMemcpyHostToDevice, ctx.stream));
    const dim3 grid(unsigned((tokens + 7) / 8), unsigned(groups.size()));
    DequantizeKernel<<<grid, 256, 0, ctx.stream>>>(s.payload.ptr, tokens, s.groups.ptr, int(groups.size()), s.dq.ptr,
                                                   dq_ld);
    KVTC_CUDA_CALL(cudaGetLastError());
  }
  s.xf.resize(size_t(tokens) * p);
  if (r > 0) {
    const float one = 1.0f, zero = 0.0f;
    // Row-major X[T, p] = D[T, r] V[:, :r]^T  <=>  column-major X^T = V[:, :r] D^T, where the
    // stored row-major V[p, R] is column-major V^T (R x p): op T selects its first r rows.
    KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(p), int(tokens), int(k_dim), &one,
                                  keys ? dev.basis_keys.ptr : dev.basis_values.ptr, CUDA_R_16BF,
                                  int(keys ? dev.ld_keys : dev.ld_values), s.dq.ptr, CUDA_R_16BF, int(dq_ld), &zero,
                                  s.xf.ptr, CUDA_R_32F, int(p), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    KVTC_CUDA_CALL(cudaMemsetAsync(s.xf.ptr, 0, size_t(tokens) * p * 4, ctx.stream));
  }
  const int half = c.rope.rotary_dim / 2;
  const float2* table = keys ? const_cast<DeviceCalibration&>(dev).RopeTable(pos0 + tokens, ctx.stream) + pos0 * half : nullptr;
  const float* mean = keys ? dev.mean_keys.ptr : dev.mean_values.ptr;
  const bool neox = c.rope.layout == RopeLayout::kNeox;
  DispatchDtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    FinishKernel<T><<<Blocks(int64_t(tokens) * p), kThreads, 0, ctx.stream>>>(
        s.xf.ptr, tokens, int(c.layers * c.kv_heads), int(c.head_dim), c.rope.rotary_dim, neox, table, mean,
        static_cast<T*>(dev_out));
  });
  KVTC_CUDA_CALL(cudaGetLastError());
}

}  // namespace

HostBytes Encode(const Calibration& c, const DeviceCalibration& dev, const EncodeJob& job, bool device_input) {
  KVTC_CHECK(job.tokens > 0, kInvalidArgument, "Expected at least one token to encode but received 0");
  KVTC_CHECK(job.plan_id < c.plans.size(), kPlanUnknown, "plan " << job.plan_id << " does not exist");
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  const PlanPair& plan = c.plans[job.plan_id];
  const uint32_t p = c.feature_dim();
  const size_t row_bytes = size_t(p) * Elem(job.dtype);
  const uint32_t sinks = job.token_start < job.sink_tokens ? std::min(job.sink_tokens - job.token_start, job.tokens) : 0;
  const uint32_t window = std::min(job.window_tokens, job.tokens - sinks);
  const uint32_t middle = job.tokens - sinks - window;

  // Host copies of raw sections; device rows of the middle.
  thread_local DeviceBuffer<uint8_t> staged_keys, staged_values;
  // Device pointers to the first middle token of each stream.
  const uint8_t* mid_keys = job.keys + size_t(sinks) * row_bytes;
  const uint8_t* mid_values = job.values + size_t(sinks) * row_bytes;
  if (!device_input) {
    staged_keys.resize(std::max<size_t>(1, size_t(middle) * row_bytes));
    staged_values.resize(std::max<size_t>(1, size_t(middle) * row_bytes));
    if (middle) {
      KVTC_CUDA_CALL(cudaMemcpyAsync(staged_keys.ptr, job.keys + sinks * row_bytes, middle * row_bytes,
                                     cudaMemcpyHostToDevice, ctx.stream));
      KVTC_CUDA_CALL(cudaMemcpyAsync(staged_values.ptr, job.values + sinks * row_bytes, middle * row_bytes,
                                     cudaMemcpyHostToDevice, ctx.stream));
    }
    mid_keys = staged_keys.ptr;
    mid_values = staged_values.ptr;
  }
  auto raw_span = [&](const uint8_t* base, uint32_t first, uint32_t count) {
    std::vector<uint8_t> out(size_t(count) * row_bytes);
    if (count == 0) return out;
    if (device_input) {
      // On the job's stream: device input may have just been written there (a paged gather).
      KVTC_CUDA_CALL(cudaMemcpyAsync(out.data(), base + first * row_bytes, out.size(), cudaMemcpyDeviceToHost,
                                     ctx.stream));
      KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
    } else {
      std::memcpy(out.data(), base + first * row_bytes, out.size());
    }
    return out;
  };
  // A section is raw rows (host vector) or a coded stream (its table plus chunks in pinned memory).
  struct Part {
    Section section;
    std::vector<uint8_t> raw;
    CodedSection coded;
    uint64_t size() const { return raw.empty() ? coded.size() : raw.size(); }
  };
  std::vector<Part> parts;
  auto add_raw = [&](SectionKind kind, uint32_t first, uint32_t count, std::vector<uint8_t>&& bytes) {
    if (count == 0) return;
    Part part;
    part.section = {kind, SectionEncoding::kRaw, first, count, 0, 0, bytes.size()};
    part.raw = std::move(bytes);
    parts.push_back(std::move(part));
  };
  auto add_coded = [&](SectionKind kind, uint32_t first, uint32_t count, CodedSection&& coded) {
    Part part;
    part.section = {kind, SectionEncoding::kDeflateChunks, first, count, 0, 0, coded.size()};
    part.coded = std::move(coded);
    parts.push_back(std::move(part));
  };
  add_raw(SectionKind::kRawKeys, 0, sinks, raw_span(job.keys, 0, sinks));
  add_raw(SectionKind::kRawValues, 0, sinks, raw_span(job.values, 0, sinks));
  if (middle) {
    // Each stream keeps its chunks in its own pinned buffer until the record is assembled.
    add_coded(SectionKind::kCodedKeys, sinks, middle,
              EncodeStream(ctx, c, dev, plan.keys, true, mid_keys, job.dtype, middle,
                           int64_t(job.token_start) + sinks, job.chunk_bytes, 0));
    add_coded(SectionKind::kCodedValues, sinks, middle,
              EncodeStream(ctx, c, dev, plan.values, false, mid_values, job.dtype, middle,
                           int64_t(job.token_start) + sinks, job.chunk_bytes, 1));
  }
  add_raw(SectionKind::kRawKeys, sinks + middle, window, raw_span(job.keys, sinks + middle, window));
  add_raw(SectionKind::kRawValues, sinks + middle, window, raw_span(job.values, sinks + middle, window));

  RecordHeader h;
  h.calibration_id = c.id;
  h.model_fingerprint = c.model_fingerprint;
  h.token_start = job.token_start;
  h.token_count = job.tokens;
  h.feature_dim = p;
  h.plan_id = job.plan_id;
  h.kv_dtype = job.dtype;
  h.sink_tokens = sinks;
  h.window_tokens = window;
  h.deflate_chunk_bytes = uint32_t(job.chunk_bytes);
  uint64_t offset = HeaderBytes(parts.size());
  for (Part& part : parts) {
    part.section.offset = offset;
    offset += part.size();
  }
  h.record_bytes = offset;
  // One uninitialised allocation, written once: pinned chunks are copied (and the fresh pages
  // first touched) by all cores; CRCs are taken from the record's own bytes.
  HostBytes record;
  record.data.reset(new uint8_t[offset]);
  record.size = offset;
  for (Part& part : parts) {
    uint8_t* at = record.data.get() + part.section.offset;
    if (!part.raw.empty()) {
      std::memcpy(at, part.raw.data(), part.raw.size());
    } else {
      std::memcpy(at, part.coded.table.data(), part.coded.table.size());
      ParallelCopy(at + part.coded.table.size(), part.coded.chunks, part.coded.chunk_bytes);
    }
    part.section.crc32c = Crc32cParallel(at, part.size());
    h.sections.push_back(part.section);
  }
  WriteHeader(h, record.data.get());
  return record;
}

RecordHeader DecodeToDevice(const Calibration& c, const DeviceCalibration& dev, const uint8_t* record, size_t size,
                            uint64_t expected_bytes, void* keys_out, void* values_out) {
  RecordHeader h = ReadHeader(record, size);
  KVTC_CHECK(h.calibration_id == c.id, kCalibrationMismatch, "record was written with another calibration");
  KVTC_CHECK(h.model_fingerprint == c.model_fingerprint, kModelMismatch, "record was written for another model");
  KVTC_CHECK(h.feature_dim == c.feature_dim(), kRecordCorrupt, "record feature_dim differs from the calibration's");
  KVTC_CHECK(h.plan_id < c.plans.size(), kPlanUnknown, "record names an unknown plan");
  const size_t row_bytes = size_t(h.feature_dim) * Elem(h.kv_dtype);
  const uint64_t decoded = 2ull * h.token_count * row_bytes;
  KVTC_CHECK(decoded == expected_bytes, kRecordSizeMismatch,
             "record decodes to " << decoded << " bytes, the caller expects " << expected_bytes);
  for (const Section& s : h.sections) {
    const bool raw = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kRawValues;
    KVTC_CHECK(raw == (s.encoding == SectionEncoding::kRaw), kRecordCorrupt, "section encoding does not match its kind");
    KVTC_CHECK(!raw || s.stored_bytes == s.token_count * row_bytes, kRecordLength, "raw section has the wrong size");
  }
  VerifySections(h, record);
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  const PlanPair& plan = c.plans[h.plan_id];
  Profiler prof(ctx.stream);
  for (const Section& s : h.sections) {
    const bool keys = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kCodedKeys;
    uint8_t* dst = static_cast<uint8_t*>(keys ? keys_out : values_out) + size_t(s.token_offset) * row_bytes;
    if (s.encoding == SectionEncoding::kRaw) {
      KVTC_CUDA_CALL(cudaMemcpyAsync(dst, record + s.offset, s.stored_bytes, cudaMemcpyHostToDevice, ctx.stream));
      continue;
    }
    const Plan& pl = keys ? plan.keys : plan.values;
    StreamScratch& scratch = Scratch(keys ? 0 : 1);
    InflateToDevice(ctx, scratch, record + s.offset, s.stored_bytes, PayloadBytes(pl, s.token_count));
    prof.mark(keys ? "inflate-k" : "inflate-v");
    DecodeStream(ctx, c, dev, pl, keys, s.token_count, int64_t(h.token_start) + s.token_offset, h.kv_dtype, dst, scratch);
    prof.mark(keys ? "reconstruct-k" : "reconstruct-v");
  }
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  prof.mark("sync");
  prof.report("decode");
  return h;
}

DecodeResult Decode(const Calibration& c, const DeviceCalibration& dev, const uint8_t* record, size_t size,
                    uint64_t expected_bytes) {
  // Structure first (no device memory is touched for a bad record), then decode on the device.
  const RecordHeader peek = ReadHeader(record, size);
  const size_t half = size_t(expected_bytes / 2);
  thread_local DeviceBuffer<uint8_t> rows;
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  const uint64_t decoded = 2ull * peek.token_count * peek.feature_dim * Elem(peek.kv_dtype);
  KVTC_CHECK(decoded == expected_bytes, kRecordSizeMismatch,
             "record decodes to " << decoded << " bytes, the caller expects " << expected_bytes);
  rows.resize(std::max<size_t>(1, 2 * half));
  DecodeResult out;
  out.header = DecodeToDevice(c, dev, record, size, expected_bytes, rows.ptr, rows.ptr + half);
  out.keys.resize(half);
  out.values.resize(half);
  KVTC_CUDA_CALL(cudaMemcpy(out.keys.data(), rows.ptr, half, cudaMemcpyDeviceToHost));
  KVTC_CUDA_CALL(cudaMemcpy(out.values.data(), rows.ptr + half, half, cudaMemcpyDeviceToHost));
  return out;
}

std::vector<uint8_t> QuantizeOnDevice(const float* d, int64_t tokens, const Plan& plan) {
  Context& ctx = ThreadContext();
  StreamScratch& s = Scratch(0);
  const size_t bytes = PayloadBytes(plan, tokens);
  s.d.resize(std::max<size_t>(1, size_t(tokens) * plan.rank));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.d.ptr, d, size_t(tokens) * plan.rank * 4, cudaMemcpyHostToDevice, ctx.stream));
  s.payload.resize(bytes + 4);
  KVTC_CUDA_CALL(cudaMemsetAsync(s.payload.ptr, 0, bytes + 4, ctx.stream));
  LaunchQuantize(ctx, s, plan, uint32_t(tokens), plan.rank);
  std::vector<uint8_t> out(bytes);
  KVTC_CUDA_CALL(cudaMemcpyAsync(out.data(), s.payload.ptr, bytes, cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  return out;
}

std::vector<float> DequantizeOnDevice(const uint8_t* payload, int64_t tokens, const Plan& plan) {
  Context& ctx = ThreadContext();
  StreamScratch& s = Scratch(0);
  const size_t bytes = PayloadBytes(plan, tokens);
  s.payload.resize(bytes + 4);
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.payload.ptr, payload, bytes, cudaMemcpyHostToDevice, ctx.stream));
  const std::vector<GroupDesc> groups = PlanDescs(plan, tokens, false);
  s.dq.resize(std::max<size_t>(1, size_t(tokens) * plan.rank));
  if (!groups.empty()) {
    s.groups.resize(groups.size());
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.groups.ptr, groups.data(), groups.size() * sizeof(GroupDesc), cudaMemcpyHostToDevice, ctx.stream));
    DequantizeKernel<<<dim3(unsigned((tokens + 7) / 8), unsigned(groups.size())), 256, 0, ctx.stream>>>(
        s.payload.ptr, tokens, s.groups.ptr, int(groups.size()), s.dq.ptr, plan.rank);
    KVTC_CUDA_CALL(cudaGetLastError());
  }
  std::vector<__nv_bfloat16> host(size_t(tokens) * plan.rank);
  KVTC_CUDA_CALL(cudaMemcpyAsync(host.data(), s.dq.ptr, host.size() * 2, cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  std::vector<float> out(host.size());
  for (size_t i = 0; i < host.size(); ++i) out[i] = __bfloat162float(host[i]);
  return out;
}

BenchFigures Bench(const Calibration& c, const DeviceCalibration& dev, const uint16_t* host_keys,
                   const uint16_t* host_values, uint32_t tokens, uint32_t batch, uint16_t plan_id, int reps) {
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  const uint32_t p = c.feature_dim();
  const size_t bytes = size_t(tokens) * p * 2;
  // Device-resident KV of `batch` sequences (the same content each: timing, not statistics).
  DeviceBuffer<uint8_t> kv(2 * bytes * batch);
  for (uint32_t b = 0; b < batch; ++b) {
    KVTC_CUDA_CALL(cudaMemcpy(kv.ptr + 2 * b * bytes, host_keys, bytes, cudaMemcpyHostToDevice));
    KVTC_CUDA_CALL(cudaMemcpy(kv.ptr + (2 * b + 1) * bytes, host_values, bytes, cudaMemcpyHostToDevice));
  }
  DeviceBuffer<uint8_t> restored(2 * bytes * batch);  // decode target, like a paged KV cache
  EncodeJob job;
  job.dtype = KvDtype::kBfloat16;
  job.tokens = tokens;
  job.plan_id = plan_id;
  // 16 KiB chunks: four times the independent DEFLATE streams of the CPU default, which keeps
  // nvCOMP's per-chunk blocks busy on 132 SMs (any chunk size decodes on either backend).
  job.chunk_bytes = 16 * 1024;
  BenchFigures fig;
  std::vector<HostBytes> records(batch);
  auto now = [] { return std::chrono::steady_clock::now(); };
  std::vector<double> enc, dec;
  for (int r = 0; r < reps + 1; ++r) {
    KVTC_CUDA_CALL(cudaDeviceSynchronize());
    auto t0 = now();
    for (uint32_t b = 0; b < batch; ++b) {
      job.keys = kv.ptr + 2 * b * bytes;
      job.values = kv.ptr + (2 * b + 1) * bytes;
      records[b] = Encode(c, dev, job, /*device_input=*/true);
    }
    auto t1 = now();
    for (uint32_t b = 0; b < batch; ++b) {
      DecodeToDevice(c, dev, records[b].data.get(), records[b].size, 2 * bytes, restored.ptr + 2 * b * bytes,
                     restored.ptr + (2 * b + 1) * bytes);
    }
    auto t2 = now();
    if (r == 0) continue;  // warm-up: handles, workspaces, module load
    enc.push_back(std::chrono::duration<double>(t1 - t0).count());
    dec.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  fig.encode_s = median(enc);
  fig.decode_s = median(dec);
  fig.record_bytes = records[0].size;
  const RecordHeader h = ReadHeader(records[0].data.get(), records[0].size);
  for (const Section& s : h.sections) {
    if (s.encoding == SectionEncoding::kDeflateChunks) {
      fig.coded_bytes += s.stored_bytes;
      fig.coded_tokens = s.token_count;
    }
  }
  // Baselines in the same process: cuBLAS GEMMs of the pipeline's shapes, and a raw D2H copy.
  // Sequences are encoded one after another, so the baseline is the GEMM of one sequence's coded
  // tokens, timed and multiplied by the batch (device memory stays bounded at 32K x 8B-shape).
  const PlanPair& plan = c.plans[plan_id];
  const uint32_t m = fig.coded_tokens;
  DeviceBuffer<__nv_bfloat16> a(size_t(std::max<uint32_t>(m, 1)) * p);
  DeviceBuffer<float> out(size_t(std::max<uint32_t>(m, 1)) * p);
  KVTC_CUDA_CALL(cudaMemcpy(a.ptr, kv.ptr, std::min(a.count * 2, kv.count), cudaMemcpyDeviceToDevice));
  cudaEvent_t e0, e1;
  KVTC_CUDA_CALL(cudaEventCreate(&e0));
  KVTC_CUDA_CALL(cudaEventCreate(&e1));
  auto time_gemm = [&](bool encode_dir) {
    std::vector<double> ts;
    for (int r = 0; r < reps + 1; ++r) {
      KVTC_CUDA_CALL(cudaEventRecord(e0, ctx.stream));
      for (int k = 0; k < 2; ++k) {
        const uint32_t rank = k == 0 ? plan.keys.rank : plan.values.rank;
        const __nv_bfloat16* basis = k == 0 ? dev.basis_keys.ptr : dev.basis_values.ptr;
        const int ldb = int(k == 0 ? dev.ld_keys : dev.ld_values);
        if (rank == 0 || m == 0) continue;
        const float one = 1.0f, zero = 0.0f;
        const int padded = std::min(int(PadLd(rank)), ldb);  // the pipeline's own GEMM dimensions
        if (encode_dir) {
          KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, padded, int(m), int(p), &one, basis,
                                        CUDA_R_16BF, ldb, a.ptr, CUDA_R_16BF, int(p), &zero, out.ptr, CUDA_R_32F,
                                        int(PadLd(rank)), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        } else {
          KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(p), int(m), padded, &one, basis,
                                        CUDA_R_16BF, ldb, a.ptr, CUDA_R_16BF, int(PadLd(rank)), &zero, out.ptr, CUDA_R_32F,
                                        int(p), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
      }
      KVTC_CUDA_CALL(cudaEventRecord(e1, ctx.stream));
      KVTC_CUDA_CALL(cudaEventSynchronize(e1));
      float ms = 0;
      KVTC_CUDA_CALL(cudaEventElapsedTime(&ms, e0, e1));
      if (r > 0) ts.push_back(ms / 1e3);
    }
    return median(ts);
  };
  fig.gemm_encode_s = time_gemm(true) * batch;
  fig.gemm_decode_s = time_gemm(false) * batch;
  PinnedBuffer host;
  host.resize(2 * bytes * batch);
  std::vector<double> copies;
  for (int r = 0; r < reps + 1; ++r) {
    KVTC_CUDA_CALL(cudaEventRecord(e0, ctx.stream));
    KVTC_CUDA_CALL(cudaMemcpyAsync(host.ptr, kv.ptr, 2 * bytes * batch, cudaMemcpyDeviceToHost, ctx.stream));
    KVTC_CUDA_CALL(cudaEventRecord(e1, ctx.stream));
    KVTC_CUDA_CALL(cudaEventSynchronize(e1));
    float ms = 0;
    KVTC_CUDA_CALL(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) copies.push_back(ms / 1e3);
  }
  fig.d2h_copy_s = median(copies);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return fig;
}

}  // namespace kvtc::cuda
