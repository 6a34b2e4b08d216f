// Scalar conversions shared by every stage: IEEE fp16, bf16 and OCP fp8 e4m3 (the "fn" variant:
// no infinities, max 448). All conversions round to nearest even so that the CPU backend and the
// CUDA backend (__float2half_rn, __nv_cvt_float_to_fp8 with __NV_SATFINITE) produce the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvtc {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return BitsFloat(sign | 0x7f800000u | (man << 13));
  return BitsFloat(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // result is subnormal (or zero): round abs * 2^24 to an integer, ties to even
    const float v = BitsFloat(abs) * 16777216.0f;  // exact: scaling by a power of two
    return sign | static_cast<uint16_t>(std::nearbyint(v));
  }
  const uint32_t mant_round = abs + 0x00000fffu + ((abs >> 13) & 1u);  // round to nearest even
  return sign | static_cast<uint16_t>((mant_round - 0x38000000u) >> 13);
}

// Clamp to the finite fp16 range first: group minima and scales must never become infinite.
inline uint16_t FloatToHalfSat(float f) {
  if (f > 65504.0f) f = 65504.0f;
  if (f < -65504.0f) f = -65504.0f;
  return FloatToHalf(f);
}

inline float Bf16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBf16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

constexpr float kFp8E4m3Max = 448.0f;

inline float Fp8E4m3ToFloat(uint8_t v) {
  const uint32_t sign = v & 0x80u;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t man = v & 0x7u;
  float out;
  if (exp == 0xf && man == 0x7) {
    out = NAN;
  } else if (exp == 0) {
    out = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
  } else {
    out = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, static_cast<int>(exp) - 7);
  }
  return sign ? -out : out;
}

// Round to nearest even, saturating to +-448 (never produces NaN from a finite input).
inline uint8_t FloatToFp8E4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= kFp8E4m3Max) return sign | 0x7e;
  if (a < std::ldexp(1.0f, -6)) {
    // subnormal range: step 2^-9
    const int m = static_cast<int>(std::nearbyint(a * 512.0f));  // m in 0..8; 8 == smallest normal
    return sign | static_cast<uint8_t>(m);
  }
  int e;
  const float frac = std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  int exp = e - 1;                        // a = (2*frac) * 2^exp, 2*frac in [1, 2)
  int man = static_cast<int>(std::nearbyint((2.0f * frac - 1.0f) * 8.0f));
  if (man == 8) {
    man = 0;
    exp += 1;
  }
  const int biased = exp + 7;
  if (biased > 15 || (biased == 15 && man > 6)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((biased << 3) | man);
}

}  // namespace kvtc
