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
  ChunkCopy copy{dst, dst_off, src, src_off, size, n};
  ParallelCopyChunksCrcMany(&copy, 1);
  return copy.crc;
}

void ParallelCopyChunksCrcMany(ChunkCopy* copies, size_t n) {
  // Fixed blocks of each copy's source span (a block spans chunk boundaries), so that one shift
  // constant combines a copy's CRCs; the blocks of all copies over the threads together (a decode
  // group's sections are 0.2-2 MiB each: one parallel loop per section left most threads idle and
  // paid its start each time, 0.1 ms per 1 MiB section on an H200 host, run p call 57).
  constexpr size_t kBlock = kPiece;
  struct Block {
    size_t copy, lo, hi;  // source offsets
  };
  std::vector<Block> blocks;
  std::vector<size_t> first(n + 1);
  size_t total = 0;
  for (size_t c = 0; c < n; ++c) {
    const ChunkCopy& cp = copies[c];
    first[c] = blocks.size();
    if (cp.n == 0) continue;
    for (size_t i = 1; i < cp.n; ++i)
      KVTC_CHECK(cp.src_off[i] == cp.src_off[i - 1] + cp.size[i - 1], kInternal,
                 "chunks are not back to back in the source");
    const size_t begin = cp.src_off[0], end = cp.src_off[cp.n - 1] + cp.size[cp.n - 1];
    for (size_t lo = begin; lo < end; lo += kBlock) blocks.push_back({c, lo, std::min(lo + kBlock, end)});
    total += end - begin;
  }
  first[n] = blocks.size();
  std::vector<uint32_t> crcs(blocks.size());
#pragma omp parallel for schedule(dynamic, 1) if (total >= kParallelCut)
  for (int64_t k = 0; k < static_cast<int64_t>(blocks.size()); ++k) {
    const Block& b = blocks[size_t(k)];
    const ChunkCopy& cp = copies[b.copy];
    // The last chunk starting at or before lo, then every chunk starting before hi.
    size_t i = size_t(std::upper_bound(cp.src_off, cp.src_off + cp.n, b.lo) - cp.src_off) - 1;
    for (; i < cp.n && cp.src_off[i] < b.hi; ++i) {
      const size_t lo = std::max(b.lo, cp.src_off[i]), hi = std::min(b.hi, cp.src_off[i] + cp.size[i]);
      if (hi > lo) CopyBytes(cp.dst + cp.dst_off[i] + (lo - cp.src_off[i]), cp.src + lo, hi - lo);
    }
    crcs[size_t(k)] = Crc32c(cp.src + b.lo, b.hi - b.lo);
  }
  for (size_t c = 0; c < n; ++c) {
    const size_t count = first[c + 1] - first[c];
    if (count == 0) {
      copies[c].crc = 0;
      continue;
    }
    const size_t span = blocks[first[c + 1] - 1].hi - blocks[first[c]].lo;
    copies[c].crc = Crc32cConcat(crcs.data() + first[c], count, kBlock, span - (count - 1) * kBlock);
  }
}

}  // namespace kvtc
