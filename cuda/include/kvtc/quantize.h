// Per-token, per-group quantization of PCA coefficients (paper section 3.2, Appendix B.17).
//
// A plan splits the leading `rank` coefficients into groups of consecutive components. Each group
// has a size in {1, 16, 64, 256, 1024} and a type: dropped (0 bits; reconstructs as the mean),
// int2, int4 (KIVI's asymmetric uniform scheme) or fp8 e4m3. Every kept group stores, per token,
// a 16-bit shift and a 16-bit scale (fp16):
//   intB: shift = fp16(min), scale = fp16((max - min) / (2^B - 1)),
//         q = clamp(rint((x - shift) / scale), 0, 2^B - 1),   x' = q * scale + shift
//   fp8:  shift = fp16((max + min) / 2), scale = fp16((max - min) / 2 / 448),
//         q = e4m3((x - shift) / scale),                      x' = e4m3^-1(q) * scale + shift
// so a token costs sum over kept groups of (size * bits + 32) bits: the budget the DP fills.
//
// Payload layout (what DEFLATE sees), group-major so that alike symbols sit together:
//   for each kept group g in plan order:
//     shift[T] fp16 LE, scale[T] fp16 LE, codes: T * size codes of `bits` bits, LSB-first,
//     code k of the plane (token t, component j: k = t * size + j) at bit k * bits,
//     padded with zero bits to a whole byte.
// Every offset is a closed-form function of (plan, T): GPU kernels write planes in parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvtc {

enum class GroupType : uint8_t { kDropped = 0, kInt2 = 1, kInt4 = 2, kFp8 = 3 };

constexpr int kGroupSizes[] = {1, 16, 64, 256, 1024};
constexpr int kGroupOverheadBits = 32;  // fp16 shift + fp16 scale per token per kept group

inline int TypeBits(GroupType t) {
  switch (t) {
    case GroupType::kInt2:
      return 2;
    case GroupType::kInt4:
      return 4;
    case GroupType::kFp8:
      return 8;
    default:
      return 0;
  }
}

// Bits one token spends on a group, overhead included: the DP's cost.
inline int GroupCostBits(GroupType t, int size) {
  return t == GroupType::kDropped ? 0 : size * TypeBits(t) + kGroupOverheadBits;
}

struct Group {
  uint32_t start;
  uint32_t size;
  GroupType type;
};

struct Plan {
  std::vector<Group> groups;  // contiguous from component 0, ending at `rank`
  uint32_t rank = 0;          // components the plan reads: end of the last kept group
  double ratio = 0.0;         // the target ratio it was fitted for (16 * p / budget bits)
  uint32_t budget_bits = 0;   // bits per token the DP was allowed
  double expected_error = 0;  // calibration-data squared error / squared norm
};

void ValidatePlan(const Plan& plan, uint32_t basis_rank);

// Bits per token the plan spends (payload + overhead), excluding byte padding of planes.
uint64_t PlanBitsPerToken(const Plan& plan);

// Exact payload size for `tokens` tokens.
size_t PayloadBytes(const Plan& plan, int64_t tokens);

// d: [tokens, ld] float32, coefficient j of token t at d[t * ld + j], ld >= plan.rank.
void Quantize(const float* d, int64_t ld, int64_t tokens, const Plan& plan, uint8_t* payload);
// Writes every one of the first plan.rank columns of d (dropped groups as 0).
void Dequantize(const uint8_t* payload, int64_t tokens, const Plan& plan, float* d, int64_t ld);

// Simulated quantization of one group of one token, in place (the DP's error model; the same
// arithmetic as Quantize/Dequantize).
void QuantizeDequantizeGroup(float* x, int size, GroupType type);

// Bit-packing of `count` codes of `bits` in {2, 4, 8}, LSB-first.
void PackBits(const uint8_t* codes, size_t count, int bits, uint8_t* out);
void UnpackBits(const uint8_t* packed, size_t count, int bits, uint8_t* codes);

}  // namespace kvtc
