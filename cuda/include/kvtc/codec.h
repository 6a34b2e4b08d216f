// The kvtc pipeline on the CPU (paper section 3; DESIGN.md section 3):
//   encode: raw head/tail copied; middle tokens -> float32 -> RoPE removed (keys) -> centred ->
//           projected onto the trimmed PCA basis (BLAS sgemm) -> per-group quantized -> DEFLATE
//   decode: inflate -> dequantize -> inverse projection (sgemm) + mean -> RoPE re-applied (keys)
// Keys and values are separate streams with their own mean, basis and plan.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/entropy.h"
#include "kvtc/error.h"
#include "kvtc/format.h"
#include "kvtc/quantize.h"
#include "kvtc/rope.h"

namespace kvtc {

struct StreamBasis {
  std::vector<float> mean;   // [p]
  std::vector<float> basis;  // [p, rank] row-major: column c is principal component c
  uint32_t rank = 0;
};

struct PlanPair {
  Plan keys;
  Plan values;
};

// Immutable once built; shared read-only by concurrent jobs.
struct Calibration {
  Id16 id{};
  Id16 model_fingerprint{};
  uint32_t layers = 0, kv_heads = 0, head_dim = 0;
  RopeParams rope;
  StreamBasis keys, values;
  std::vector<PlanPair> plans;
  uint32_t feature_dim() const { return layers * kv_heads * head_dim; }
};

// Checks shapes, plans against the bases, RoPE parameters and that every number is finite.
void ValidateCalibration(const Calibration& calibration);

// The precision of the projection's operands (the centred KV or the dequantized coefficients,
// and the basis) on the CPU, which rounds them and then multiplies in fp32. kFp32 is the CPU
// default; kBf16 is what the CUDA backend's cuBLAS GEMM reads; kFp8 is e4m3 with a scale per token
// and per basis vector along the reduced dimension, what an fp8 tensor-core GEMM with those scales
// in its epilogue would read. Records do not depend on it: it exists to measure its quality cost.
enum class Projection : uint8_t { kFp32 = 0, kBf16 = 1, kFp8 = 2 };

struct EncodeJob {
  const uint8_t* keys = nullptr;    // [tokens, feature_dim] of dtype, RoPE applied (as the model caches)
  const uint8_t* values = nullptr;  // [tokens, feature_dim] of dtype
  KvDtype dtype = KvDtype::kFloat32;
  uint32_t tokens = 0;
  uint32_t token_start = 0;  // absolute position of the first token
  uint16_t plan_id = 0;
  uint32_t sink_tokens = 4;    // absolute positions [0, sink_tokens) are kept raw
  uint32_t window_tokens = 128;  // the newest tokens of the job are kept raw
  int deflate_level = 6;
  size_t chunk_bytes = kDefaultChunkBytes;
  // 0: kDeflateChunks by libdeflate at deflate_level (the CPU default); > 0 (a multiple of 16):
  // kDeflateIndexed by kvtc's literal coder with entry points every entry_stride bytes, which a
  // GPU inflates many times faster (entropy.h). The CUDA backend always writes indexed sections
  // with its own coder (DefaultEntryStride when this is 0).
  uint32_t entry_stride = 0;
  Projection projection = Projection::kFp32;  // CPU backend only
};

std::vector<uint8_t> Encode(const Calibration& calibration, const EncodeJob& job);

struct DecodeResult {
  RecordHeader header;
  std::vector<uint8_t> keys;    // [tokens, feature_dim] of header.kv_dtype
  std::vector<uint8_t> values;
};

// `expected_bytes` is the decoded size the caller expects (tokens * feature_dim * dtype bytes * 2,
// keys plus values); it is checked before anything is allocated.
DecodeResult Decode(const Calibration& calibration, const uint8_t* record, size_t size, uint64_t expected_bytes,
                    Projection projection = Projection::kFp32);

// Stages, exposed for tests and tools.
void ToFloat(const uint8_t* src, KvDtype dtype, size_t count, float* dst);
void FromFloat(const float* src, size_t count, KvDtype dtype, uint8_t* dst);
// d[tokens, rank] = (x - mean) basis[:, :rank]; x is centred (and rounded to `precision`) in place.
void Project(float* x, int64_t tokens, const StreamBasis& b, uint32_t rank, float* d,
             Projection precision = Projection::kFp32);
// x[tokens, p] = d basis[:, :rank]^T + mean; d is rounded to `precision` in place.
void Reconstruct(float* d, int64_t tokens, const StreamBasis& b, uint32_t rank, float* x,
                 Projection precision = Projection::kFp32);

}  // namespace kvtc
