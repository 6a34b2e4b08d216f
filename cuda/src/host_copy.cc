#include "kvtc/host_copy.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvtc/crc32c.h"
#include "kvtc/error.h"

namespace kvtc {
namespace {

// Pieces of 256 KiB (a thread's copy and checksum of one stay in its L2), spread over the threads
// from 512 KiB on: a record's raw windows (1-2 MiB each for the smaller shapes) were copied by one
// thread under the former 2 MiB cut, 0.4-0.5 ms each on an H200 host (run h, SmolLM2 8K).
constexpr size_t kPiece = size_t(256) << 10;
constexpr size_t kParallelCut = size_t(512) << 10;

// memcpy, in calls of at most 2 KiB where the destination lies 1 to 63 bytes past the source
// modulo 4 KiB. glibc copies larger blocks with `rep movsb`, which the development VM's AMD EPYC
// runs several times slower there (`bench host`: copy + CRC32C 2.6-5.0 GB/s 16 bytes past, 13-21
// at whole pages); calls under its threshold (2112 bytes with FSRM) take the vector loop
// (8.9-16.4). One copy in ~65 lands there by chance: a restore stages chunks from any offset of a
// record.
void CopyBytes(uint8_t* dst, const uint8_t* src, size_t n) {
  const uintptr_t skew = (reinterpret_cast<uintptr_t>(dst) - reinterpret_cast<uintptr_t>(src)) & 4095;
  if (skew == 0 || skew >= 64) {
    std::memcpy(dst, src, n);
    return;
  }
  constexpr size_t kStep = 2048;
  for (; n > kStep; n -= kStep, dst += kStep, src += kStep) std::memcpy(dst, src, kStep);
  std::memcpy(dst, src, n);
}

}  // namespace

uint32_t ParallelCopyCrc(void* dst, const void* src, size_t size) {
  if (size < kParallelCut) {
    if (size) CopyBytes(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), size);
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
    CopyBytes(d + at, s + at, n);
    crcs[size_t(i)] = Crc32c(d + at, n);
  }
  return Crc32cConcat(crcs.data(), crcs.size(), kPiece, size - size_t(pieces - 1) * kPiece);
}

void CopyCrcMany(CopyCrcJob* jobs, size_t n) {
  // Every job in pieces of kPiece, all pieces over the threads (a group's parts range from a few
  // KiB to a record's megabytes of raw window: one thread per part left those to one thread, 1K x
  // 8 of the 8B shape encoded at half the speed: run o, call 52), then each job's CRC from its
  // pieces'.
  struct Piece {
    size_t job, at, bytes;
  };
  std::vector<Piece> pieces;
  std::vector<size_t> first(n + 1);
  size_t total = 0;
  for (size_t j = 0; j < n; ++j) {
    first[j] = pieces.size();
    for (size_t at = 0; at < jobs[j].size; at += kPiece) pieces.push_back({j, at, std::min(kPiece, jobs[j].size - at)});
    total += jobs[j].size;
  }
  first[n] = pieces.size();
  std::vector<uint32_t> crcs(pieces.size());
#pragma omp parallel for schedule(dynamic, 1) if (total >= kParallelCut)
  for (int64_t i = 0; i < static_cast<int64_t>(pieces.size()); ++i) {
    const Piece& p = pieces[size_t(i)];
    uint8_t* dst = static_cast<uint8_t*>(jobs[p.job].dst) + p.at;
    if (jobs[p.job].src) CopyBytes(dst, static_cast<const uint8_t*>(jobs[p.job].src) + p.at, p.bytes);
    crcs[size_t(i)] = Crc32c(dst, p.bytes);
  }
  for (size_t j = 0; j < n; ++j) {
    const size_t count = first[j + 1] - first[j];
    jobs[j].crc = count == 0 ? Crc32c(jobs[j].dst, 0)
                             : Crc32cConcat(crcs.data() + first[j], count, kPiece, jobs[j].size - (count - 1) * kPiece);
  }
}

void ParallelCopyChunks(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                        const size_t* size, size_t n) {
  // Work items of about kItem bytes, handed out one at a time: runs of consecutive small chunks
  // (a coded section: thousands of ~16 KiB chunks), or pieces of a large one (a raw window:
  // megabytes), so every thread has work either way. (Pieces of 1 MiB handed out 16 at a time
  // left a record's 8 MiB raw window to one thread: 1.9 ms of an 8B-shape restore, H200 host.)
  constexpr size_t kItem = kPiece;
  struct Piece {
    size_t chunk, at, bytes;
  };
  std::vector<Piece> pieces;
  std::vector<size_t> items{0};  // item k: pieces [items[k], items[k + 1])
  size_t total = 0, item_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    total += size[i];
    for (size_t at = 0; at < size[i]; at += kItem) {
      const size_t bytes = std::min(kItem, size[i] - at);
      if (item_bytes > 0 && item_bytes + bytes > kItem) {
        items.push_back(pieces.size());
        item_bytes = 0;
      }
      pieces.push_back({i, at, bytes});
      item_bytes += bytes;
    }
  }
  if (item_bytes > 0) items.push_back(pieces.size());
  const auto count = static_cast<int64_t>(items.size() - 1);
#pragma omp parallel for schedule(dynamic, 1) if (total >= kParallelCut)
  for (int64_t k = 0; k < count; ++k) {
    for (size_t j = items[size_t(k)]; j < items[size_t(k) + 1]; ++j) {
      const Piece& p = pieces[j];
      CopyBytes(dst + dst_off[p.chunk] + p.at, src + src_off[p.chunk] + p.at, p.bytes);
    }
  }
}

uint32_t ParallelCopyChunksCrc(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                               const size_t* size, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 1; i < n; ++i)
    KVTC_CHECK(src_off[i] == src_off[i - 1] + size[i - 1], kInternal, "chunks are not back to back in the source");
  const size_t begin = src_off[0], total = src_off[n - 1] + size[n - 1] - begin;
  if (total == 0) return 0;
  // Fixed blocks of the source span (a block spans chunk boundaries), so that one shift constant
  // combines all their CRCs.
  constexpr size_t kBlock = kPiece;
  const auto blocks = static_cast<int64_t>((total + kBlock - 1) / kBlock);
  std::vector<uint32_t> crcs(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(dynamic, 1) if (total >= kParallelCut)
  for (int64_t k = 0; k < blocks; ++k) {
    const size_t lo = begin + size_t(k) * kBlock, hi = std::min(lo + kBlock, begin + total);
    // The last chunk starting at or before lo, then every chunk starting before hi.
    size_t i = size_t(std::upper_bound(src_off, src_off + n, lo) - src_off) - 1;
    for (; i < n && src_off[i] < hi; ++i) {
      const size_t a = std::max(lo, src_off[i]), b = std::min(hi, src_off[i] + size[i]);
      if (b > a) CopyBytes(dst + dst_off[i] + (a - src_off[i]), src + a, b - a);
    }
    crcs[size_t(k)] = Crc32c(src + lo, hi - lo);
  }
  return Crc32cConcat(crcs.data(), crcs.size(), kBlock, total - size_t(blocks - 1) * kBlock);
}

}  // namespace kvtc
