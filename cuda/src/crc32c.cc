#include "kvtc/crc32c.h"

#include <array>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kvtc {
namespace {

constexpr uint32_t kPoly = 0x82f63b78u;  // reflected Castagnoli polynomial

struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
  }
};

// x^(2^k) mod P, and products mod P, in the reflected bit order (zlib's multmodp / x2nmodp).
uint32_t MultModP(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

struct X2n {
  uint32_t table[32];
  X2n() {
    uint32_t p = 1u << 30;  // x^1
    table[0] = p;
    for (int n = 1; n < 32; ++n) table[n] = p = MultModP(p, p);
  }
};

uint32_t X2nModP(size_t n, unsigned k) {
  static const X2n x2n;
  uint32_t p = 1u << 31;  // x^0
  while (n) {
    if (n & 1) p = MultModP(x2n.table[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

uint32_t Crc32cTable(const uint8_t* p, size_t n, uint32_t crc) {
  static const Tables tables;
  const auto& t = tables.t;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= crc;
    crc = t[7][word & 0xff] ^ t[6][(word >> 8) & 0xff] ^ t[5][(word >> 16) & 0xff] ^
          t[4][(word >> 24) & 0xff] ^ t[3][(word >> 32) & 0xff] ^ t[2][(word >> 40) & 0xff] ^
          t[1][(word >> 48) & 0xff] ^ t[0][word >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xffu];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHw1(const uint8_t* p, size_t n, uint64_t c) {
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// crc32 has a latency of 3 cycles and a throughput of 1 per cycle: one dependency chain runs at a
// third of the instruction's speed. Blocks of 3 lanes are checksummed as three independent chains
// in one loop, then joined: crc(a || b) = a's register times x^(8 |b|) mod P, xor crc(0, b).
__attribute__((target("sse4.2"))) uint32_t Crc32cHw(const uint8_t* p, size_t n, uint32_t crc) {
  constexpr size_t kLane = 8192;
  static const uint32_t shift = X2nModP(kLane, 3);
  uint64_t c = crc;
  while (n >= 3 * kLane) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < kLane; i += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p + i, 8);
      std::memcpy(&w1, p + kLane + i, 8);
      std::memcpy(&w2, p + 2 * kLane + i, 8);
      c = _mm_crc32_u64(c, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    c = MultModP(shift, MultModP(shift, uint32_t(c)) ^ uint32_t(c1)) ^ uint32_t(c2);
    p += 3 * kLane;
    n -= 3 * kLane;
  }
  return Crc32cHw1(p, n, c);
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = hw ? Crc32cHw(p, size, crc) : Crc32cTable(p, size, crc);
#else
  crc = Crc32cTable(p, size, crc);
#endif
  return ~crc;
}

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, size_t size_b) {
  return MultModP(X2nModP(size_b, 3), crc_a) ^ crc_b;
}

uint32_t Crc32cConcat(const uint32_t* crcs, size_t count, size_t block, size_t last) {
  if (count == 0) return 0;
  const uint32_t shift = X2nModP(block, 3);
  uint32_t crc = crcs[0];
  for (size_t i = 1; i + 1 < count; ++i) crc = MultModP(shift, crc) ^ crcs[i];
  return count > 1 ? Crc32cCombine(crc, crcs[count - 1], last) : crc;
}

uint32_t Crc32cParallel(const void* data, size_t size) {
  constexpr size_t kPiece = size_t(1) << 20;
  if (size < 4 * kPiece) return Crc32c(data, size);
  const auto pieces = static_cast<int64_t>((size + kPiece - 1) / kPiece);
  std::vector<uint32_t> crcs(static_cast<size_t>(pieces));
  const auto* p = static_cast<const uint8_t*>(data);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t at = size_t(i) * kPiece;
    crcs[size_t(i)] = Crc32c(p + at, at + kPiece <= size ? kPiece : size - at);
  }
  return Crc32cConcat(crcs.data(), crcs.size(), kPiece, size - size_t(pieces - 1) * kPiece);
}

}  // namespace kvtc
