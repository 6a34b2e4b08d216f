// Entropy coding: raw DEFLATE (RFC 1951) over the payload, in independent chunks so that chunks
// compress and inflate in parallel and a record written on a GPU inflates on a CPU.
//
// Body of a kDeflateChunks section: u32 chunk_count, then chunk_count x {u32 raw_bytes,
// u32 stored_bytes}, then the chunks back to back. stored_bytes == raw_bytes means the chunk is
// stored as is (DEFLATE did not shrink it); otherwise it is a raw DEFLATE stream that inflates to
// exactly raw_bytes.
//
// Body of a kDeflateIndexed section: u32 chunk_count, u32 entry_stride, the same chunk table, then
// per DEFLATE'd chunk (stored ones have none) ceil(raw_bytes / entry_stride) - 1 u32 entry points,
// then the chunks. Each DEFLATE'd chunk is one final Huffman block of literals only (any inflater
// reads it); entry point k - 1 is the bit offset, from the chunk's first byte, of the code of
// literal k * entry_stride. A GPU inflates the runs between entry points in parallel (one warp
// per chunk, a lane per run) and checks that each run ends where the next begins.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvtc/format.h"

namespace kvtc {

constexpr size_t kDefaultChunkBytes = 64 * 1024;
constexpr size_t kMaxChunkBytes = 16 * 1024 * 1024;

// The entry stride the encoders use for `chunk_bytes`: about `runs` runs per chunk (32: one per
// lane of the inflating warp; 64: two per lane, decoded at once), a multiple of 16 (the GPU
// encoder's bytes per thread), at least 8192 / runs (256 bytes a lane).
uint32_t DefaultEntryStride(size_t chunk_bytes, uint32_t runs = 32);

// Level 0 is "no entropy coding": every chunk stored as is, in the same section layout (a chunk
// with stored_bytes == raw_bytes), so that any decoder reads it. The encoders skip their coder and
// a GPU's decode copies the chunks instead of inflating them: the fast end of the ratio-speed
// trade-off (about 10 % larger records at kvtc 16x, docs/benchmarks.md).
constexpr bool StoresChunks(int level) { return level == 0; }
// kInvalidArgument unless 0 <= level <= 12 (libdeflate's levels; kvtc's own coder has one level).
void CheckDeflateLevel(int level);

// kDeflateChunks body by libdeflate at `level` (0..12).
std::vector<uint8_t> DeflateChunks(const uint8_t* data, size_t size, size_t chunk_bytes, int level);
// kDeflateIndexed body by kvtc's literal coder (cuda_huffman.h), bit-identical to the GPU's. The
// coder has one level: any `level` but 0 (every chunk stored) codes the same, 0..12 accepted.
std::vector<uint8_t> DeflateChunksIndexed(const uint8_t* data, size_t size, size_t chunk_bytes, uint32_t entry_stride,
                                          int level = 6);

// A coded section's chunk table, checked against its body and the payload size it must inflate
// to. Offsets are from the body's start.
struct ChunkTable {
  uint32_t entry_stride = 0;  // 0: kDeflateChunks
  std::vector<uint32_t> raw, stored;
  std::vector<size_t> src, dst;       // each chunk's bytes in the body; its place in the payload
  std::vector<uint32_t> entry_count;  // per chunk (0 for stored chunks and kDeflateChunks)
  std::vector<size_t> entries_at;     // per chunk: its first entry point in `entries`
  std::vector<uint32_t> entries;
  size_t payload_bytes = 0, max_raw = 0;
  bool Stored(size_t i) const { return stored[i] == raw[i]; }
};
ChunkTable ParseChunkTable(const uint8_t* body, size_t body_size, SectionEncoding encoding, size_t expected_size);

// Validates the chunk table against `body_size` and `expected_size` before touching `out`.
void InflateChunks(const uint8_t* body, size_t body_size, SectionEncoding encoding, uint8_t* out, size_t expected_size);

}  // namespace kvtc
