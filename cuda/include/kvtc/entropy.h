// Entropy coding: raw DEFLATE (RFC 1951) over the payload, in independent chunks so that chunks
// compress and inflate in parallel and a record written on a GPU inflates on a CPU.
//
// Body layout: u32 chunk_count, then chunk_count x {u32 raw_bytes, u32 stored_bytes}, then the
// chunks back to back. stored_bytes == raw_bytes means the chunk is stored as is (DEFLATE did
// not shrink it); otherwise it is a raw DEFLATE stream that inflates to exactly raw_bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvtc {

constexpr size_t kDefaultChunkBytes = 64 * 1024;
constexpr size_t kMaxChunkBytes = 16 * 1024 * 1024;

std::vector<uint8_t> DeflateChunks(const uint8_t* data, size_t size, size_t chunk_bytes, int level);

// Validates the chunk table against `body_size` and `expected_size` before touching `out`.
void InflateChunks(const uint8_t* body, size_t body_size, uint8_t* out, size_t expected_size);

}  // namespace kvtc
