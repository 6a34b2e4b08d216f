#include "kvtc/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kvtc/error.h"
#include "kvtc/numeric.h"

namespace kvtc {
namespace {

struct GroupParams {
  uint16_t shift;
  uint16_t scale;
};

GroupParams ComputeParams(const float* x, int64_t stride, int size, GroupType type) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < size; ++j) {
    const float v = x[j * stride];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (type == GroupType::kFp8) {
    return {FloatToHalfSat(0.5f * (hi + lo)), FloatToHalfSat(0.5f * (hi - lo) / kFp8E4m3Max)};
  }
  const float levels = static_cast<float>((1 << TypeBits(type)) - 1);
  return {FloatToHalfSat(lo), FloatToHalfSat((hi - lo) / levels)};
}

inline uint8_t Encode(float v, float shift, float scale, GroupType type, int max_code) {
  if (!(scale > 0.0f)) return type == GroupType::kFp8 ? 0 : 0;
  const float y = (v - shift) / scale;
  if (type == GroupType::kFp8) return FloatToFp8E4m3(y);
  const float q = std::nearbyint(y);
  return static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>(max_code)));
}

inline float Decode(uint8_t q, float shift, float scale, GroupType type) {
  if (!(scale > 0.0f)) return shift;
  if (type == GroupType::kFp8) return Fp8E4m3ToFloat(q) * scale + shift;
  return static_cast<float>(q) * scale + shift;
}

size_t PlaneBytes(const Group& g, int64_t tokens) {
  const int bits = TypeBits(g.type);
  if (bits == 0) return 0;
  const size_t code_bits = static_cast<size_t>(tokens) * g.size * bits;
  return static_cast<size_t>(tokens) * 4 + (code_bits + 7) / 8;
}

}  // namespace

void ValidatePlan(const Plan& plan, uint32_t basis_rank) {
  uint32_t next = 0;
  uint32_t last_kept_end = 0;
  for (const Group& g : plan.groups) {
    KVTC_CHECK(g.start == next, kCalibrationInvalid,
               "plan groups must be contiguous: expected start " << next << ", got " << g.start);
    const bool size_ok = std::find(std::begin(kGroupSizes), std::end(kGroupSizes),
                                   static_cast<int>(g.size)) != std::end(kGroupSizes);
    KVTC_CHECK(size_ok, kCalibrationInvalid, "plan group size " << g.size << " is not one of 1,16,64,256,1024");
    KVTC_CHECK(static_cast<uint8_t>(g.type) <= 3, kCalibrationInvalid,
               "plan group type " << static_cast<int>(g.type) << " is unknown");
    next += g.size;
    if (g.type != GroupType::kDropped) last_kept_end = next;
  }
  KVTC_CHECK(plan.rank == last_kept_end, kCalibrationInvalid,
             "plan rank " << plan.rank << " must equal the end of its last kept group " << last_kept_end);
  KVTC_CHECK(plan.rank <= basis_rank, kCalibrationInvalid,
             "plan reads " << plan.rank << " components but the basis has " << basis_rank);
}

uint64_t PlanBitsPerToken(const Plan& plan) {
  uint64_t bits = 0;
  for (const Group& g : plan.groups) bits += GroupCostBits(g.type, static_cast<int>(g.size));
  return bits;
}

size_t PayloadBytes(const Plan& plan, int64_t tokens) {
  size_t total = 0;
  for (const Group& g : plan.groups) total += PlaneBytes(g, tokens);
  return total;
}

void PackBits(const uint8_t* codes, size_t count, int bits, uint8_t* out) {
  if (bits == 8) {
    std::memcpy(out, codes, count);
    return;
  }
  const int per_byte = 8 / bits;
  const size_t full = count / per_byte;
  for (size_t b = 0; b < full; ++b) {
    uint8_t v = 0;
    for (int k = 0; k < per_byte; ++k) v |= static_cast<uint8_t>(codes[b * per_byte + k] << (k * bits));
    out[b] = v;
  }
  if (full * per_byte < count) {
    uint8_t v = 0;
    for (size_t k = full * per_byte; k < count; ++k) v |= static_cast<uint8_t>(codes[k] << ((k - full * per_byte) * bits));
    out[full] = v;
  }
}

void UnpackBits(const uint8_t* packed, size_t count, int bits, uint8_t* codes) {
  if (bits == 8) {
    std::memcpy(codes, packed, count);
    return;
  }
  const int per_byte = 8 / bits;
  const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1u);
  for (size_t k = 0; k < count; ++k) codes[k] = (packed[k / per_byte] >> ((k % per_byte) * bits)) & mask;
}

void QuantizeDequantizeGroup(float* x, int size, GroupType type) {
  if (type == GroupType::kDropped) {
    std::fill(x, x + size, 0.0f);
    return;
  }
  const GroupParams p = ComputeParams(x, 1, size, type);
  const float shift = HalfToFloat(p.shift), scale = HalfToFloat(p.scale);
  const int max_code = (1 << TypeBits(type)) - 1;
  for (int j = 0; j < size; ++j) x[j] = Decode(Encode(x[j], shift, scale, type, max_code), shift, scale, type);
}

void Quantize(const float* d, int64_t ld, int64_t tokens, const Plan& plan, uint8_t* payload) {
  uint8_t* plane = payload;
  for (const Group& g : plan.groups) {
    const int bits = TypeBits(g.type);
    if (bits == 0) continue;
    auto* shifts = reinterpret_cast<uint8_t*>(plane);
    auto* scales = shifts + 2 * tokens;
    uint8_t* packed = scales + 2 * tokens;
    const int size = static_cast<int>(g.size);
    const int max_code = (1 << bits) - 1;
    // Tokens are packed in runs whose code bits fill whole bytes, so threads never share a byte.
    const int64_t run = std::max<int64_t>(1, 8 / std::min(8, size * bits));
#pragma omp parallel
    {
      std::vector<uint8_t> codes(static_cast<size_t>(size) * run);
#pragma omp for schedule(static)
      for (int64_t t0 = 0; t0 < tokens; t0 += run) {
        const int64_t t1 = std::min(tokens, t0 + run);
        for (int64_t t = t0; t < t1; ++t) {
          const float* x = d + t * ld + g.start;
          const GroupParams p = ComputeParams(x, 1, size, g.type);
          std::memcpy(shifts + 2 * t, &p.shift, 2);  // little-endian host
          std::memcpy(scales + 2 * t, &p.scale, 2);
          const float shift = HalfToFloat(p.shift), scale = HalfToFloat(p.scale);
          uint8_t* c = codes.data() + (t - t0) * size;
          for (int j = 0; j < size; ++j) c[j] = Encode(x[j], shift, scale, g.type, max_code);
        }
        const size_t first_code = static_cast<size_t>(t0) * size;
        PackBits(codes.data(), static_cast<size_t>(t1 - t0) * size, bits, packed + first_code * bits / 8);
      }
    }
    plane += PlaneBytes(g, tokens);
  }
}

void Dequantize(const uint8_t* payload, int64_t tokens, const Plan& plan, float* d, int64_t ld) {
  const uint8_t* plane = payload;
  for (const Group& g : plan.groups) {
    const int bits = TypeBits(g.type);
    const int size = static_cast<int>(g.size);
    if (bits == 0) {
      for (int64_t t = 0; t < tokens; ++t) std::fill(d + t * ld + g.start, d + t * ld + g.start + size, 0.0f);
      continue;
    }
    const uint8_t* shifts = plane;
    const uint8_t* scales = shifts + 2 * tokens;
    const uint8_t* packed = scales + 2 * tokens;
    const int per_byte = 8 / bits;
    const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1u);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      uint16_t sh, sc;
      std::memcpy(&sh, shifts + 2 * t, 2);
      std::memcpy(&sc, scales + 2 * t, 2);
      const float shift = HalfToFloat(sh), scale = HalfToFloat(sc);
      float* x = d + t * ld + g.start;
      const size_t base = static_cast<size_t>(t) * size;
      for (int j = 0; j < size; ++j) {
        const size_t k = base + j;
        const uint8_t q = bits == 8 ? packed[k] : (packed[k / per_byte] >> ((k % per_byte) * bits)) & mask;
        x[j] = Decode(q, shift, scale, g.type);
      }
    }
    plane += PlaneBytes(g, tokens);
  }
}

}  // namespace kvtc
