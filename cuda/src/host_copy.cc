#include "kvtc/host_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvtc/crc32c.h"

namespace kvtc {

void ParallelCopy(void* dst, const void* src, size_t size) {
  constexpr size_t kPiece = size_t(1) << 20;
  if (size < 2 * kPiece) {
    if (size) std::memcpy(dst, src, size);
    return;
  }
  const auto pieces = static_cast<int64_t>((size + kPiece - 1) / kPiece);
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t at = size_t(i) * kPiece;
    std::memcpy(d + at, s + at, at + kPiece <= size ? kPiece : size - at);
  }
}

uint32_t ParallelCopyCrc(void* dst, const void* src, size_t size) {
  constexpr size_t kPiece = size_t(1) << 20;
  if (size < 2 * kPiece) {
    if (size) std::memcpy(dst, src, size);
    return Crc32c(dst, size);
  }
  const auto pieces = static_cast<int64_t>((size + kPiece - 1) / kPiece);
  std::vector<uint32_t> crcs(static_cast<size_t>(pieces));
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t at = size_t(i) * kPiece;
    const size_t n = at + kPiece <= size ? kPiece : size - at;
    std::memcpy(d + at, s + at, n);
    crcs[size_t(i)] = Crc32c(d + at, n);
  }
  uint32_t crc = crcs[0];
  for (int64_t i = 1; i < pieces; ++i) {
    const size_t at = size_t(i) * kPiece;
    crc = Crc32cCombine(crc, crcs[size_t(i)], at + kPiece <= size ? kPiece : size - at);
  }
  return crc;
}

void ParallelCopyChunks(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                        const size_t* size, size_t n) {
  // Chunks larger than a piece (a record's raw sections, megabytes each) are cut into pieces, so
  // one big chunk does not leave the other threads idle.
  constexpr size_t kPiece = size_t(1) << 20;
  struct Piece {
    size_t chunk, at, bytes;
  };
  std::vector<Piece> pieces;
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    total += size[i];
    for (size_t at = 0; at < size[i]; at += kPiece) pieces.push_back({i, at, std::min(kPiece, size[i] - at)});
  }
#pragma omp parallel for schedule(dynamic, 16) if (total >= (size_t(2) << 20))
  for (int64_t k = 0; k < static_cast<int64_t>(pieces.size()); ++k) {
    const Piece& p = pieces[size_t(k)];
    std::memcpy(dst + dst_off[p.chunk] + p.at, src + src_off[p.chunk] + p.at, p.bytes);
  }
}

}  // namespace kvtc
