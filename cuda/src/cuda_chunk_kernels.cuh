// Kernels around the entropy coder: stored chunks placed into a payload, chunk offsets and
// packing of coded chunks into the record, their sizes published to the host, and a fused
// group's per-row tables of a paged cache. Internal to cuda_codec.cu.
#pragma once

#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "cuda_rows.cuh"

namespace kvtc::cuda {
// Internal linkage: this header belongs to the one translation unit that includes it.
namespace {

// Copies chunk c's sizes[c] bytes from srcs[c] to dsts[c]: a decode's placement of stored chunks
// into the payload, one launch for all.
__global__ void CopyChunksKernel(const uint8_t* const* __restrict__ srcs, uint8_t* const* __restrict__ dsts,
                                 const size_t* __restrict__ sizes) {
  const size_t c = blockIdx.x;
  const uint8_t* src = srcs[c];
  uint8_t* dst = dsts[c];
  const size_t n = sizes[c];
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Record offsets of a stream's chunks, one block: at[c] = the bytes of chunks 0..c-1 as the record
// stores them (the DEFLATE slot, or the raw chunk when coding did not shrink it: LayoutChunks'
// rule, which the host applies to the same sizes), at[chunks] = all of them. chunk_end (optional):
// where each chunk's sequence ends in a fused group's payload (huff::LaunchEncode).
constexpr int kOffsetThreads = 1024;
__device__ __forceinline__ size_t RawChunkBytes(size_t c, size_t chunk_bytes, size_t payload_bytes,
                                                const uint64_t* chunk_end) {
  return min(chunk_bytes, size_t(chunk_end ? chunk_end[c] : payload_bytes) - c * chunk_bytes);
}
__device__ __forceinline__ size_t StoredChunkBytes(const size_t* coded, size_t c, size_t chunk_bytes,
                                                   size_t payload_bytes, const uint64_t* chunk_end) {
  const size_t raw = RawChunkBytes(c, chunk_bytes, payload_bytes, chunk_end);
  return coded[c] >= raw ? raw : coded[c];
}
__global__ void __launch_bounds__(kOffsetThreads) ChunkOffsetsKernel(const size_t* __restrict__ coded, size_t chunks,
                                                                     size_t chunk_bytes, size_t payload_bytes,
                                                                     const uint64_t* __restrict__ chunk_end,
                                                                     uint64_t* __restrict__ at) {
  using Scan = cub::BlockScan<uint64_t, kOffsetThreads>;
  __shared__ typename Scan::TempStorage scan;
  const size_t per = (chunks + kOffsetThreads - 1) / kOffsetThreads;
  const size_t lo = min(chunks, threadIdx.x * per), hi = min(chunks, lo + per);
  uint64_t mine = 0;
  for (size_t c = lo; c < hi; ++c) mine += StoredChunkBytes(coded, c, chunk_bytes, payload_bytes, chunk_end);
  uint64_t before = 0, total = 0;
  Scan(scan).ExclusiveSum(mine, before, total);
  for (size_t c = lo; c < hi; ++c) {
    at[c] = before;
    before += StoredChunkBytes(coded, c, chunk_bytes, payload_bytes, chunk_end);
  }
  if (threadIdx.x == 0) at[chunks] = total;
}

// Packs chunk c = blockIdx.x at dst + at[c] (a chunk as long as its raw bytes is stored: at[]
// applied the rule), on the job's stream right after the coder, so that
// the host's read back is copy-engine transfers that need no SM (a compaction kernel on the copy
// stream waited for the values' GEMM to give up the SMs: run k's 8B encode read its keys back in
// 1.0 ms against 0.6 for the values). The destination's interior words are written whole, each
// from two aligned source words (a slot or a raw chunk at a 4-byte aligned address; the payload's
// and the slots' 4 padding bytes keep the last load inside them; other sources byte by byte); the
// up to 3 bytes at each end, which share a word with the neighbouring chunk, byte by byte.
__global__ void PackChunksKernel(const uint8_t* __restrict__ slots, size_t max_out, const uint8_t* __restrict__ payload,
                                 size_t chunk_bytes, size_t payload_bytes, const uint64_t* __restrict__ chunk_end,
                                 const uint64_t* __restrict__ at, uint8_t* __restrict__ dst) {
  const size_t c = blockIdx.x;
  const uint64_t d0 = at[c], n = at[c + 1] - d0;
  const bool stored = n == RawChunkBytes(c, chunk_bytes, payload_bytes, chunk_end);
  const uint8_t* src = stored ? payload + c * chunk_bytes : slots + c * max_out;
  uint8_t* out = dst + d0;
  if ((reinterpret_cast<uintptr_t>(src) & 3) != 0) {
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = src[i];
    return;
  }
  const uint32_t head = uint32_t(min(n, uint64_t((4 - (d0 & 3)) & 3)));
  const uint64_t words = (n - head) / 4, tail = head + 4 * words;
  if (threadIdx.x < head) out[threadIdx.x] = src[threadIdx.x];
  if (threadIdx.x < n - tail) out[tail + threadIdx.x] = src[tail + threadIdx.x];
  const uint32_t* s32 = reinterpret_cast<const uint32_t*>(src);
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out + head);
  for (uint64_t w = threadIdx.x; w < words; w += blockDim.x) {
    // Destination word w holds source bytes head + 4w .. + 3: the tail of source word w (head < 4)
    // and the head of word w + 1.
    o32[w] = head ? __funnelshift_r(s32[w], s32[w + 1], 8 * head) : s32[w];
  }
}

// An encoded stream's chunk sizes, then its entry points, into page-locked host memory (the
// host reads them after the job's event: SizeChunks, LayoutChunks).
__global__ void PublishSizesKernel(const size_t* __restrict__ sizes, size_t chunks, const uint32_t* __restrict__ entries,
                                   size_t entry_words, uint8_t* __restrict__ host) {
  const size_t step = size_t(gridDim.x) * blockDim.x;
  const size_t first = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  size_t* host_sizes = reinterpret_cast<size_t*>(host);
  uint32_t* host_entries = reinterpret_cast<uint32_t*>(host + chunks * sizeof(size_t));
  for (size_t i = first; i < chunks; i += step) host_sizes[i] = sizes[i];
  for (size_t i = first; i < entry_words; i += step) host_entries[i] = entries[i];
  // Every write is visible to the host before the kernel ends, so before the job's event.
  __threadfence_system();
}

// One span of a fused group's paged prologue (GroupRowsKernel): its block ids, where its rows
// start in the span and in the group, how many, and the first one's absolute position.
struct GroupSpan {
  const uint32_t* block_ids;
  uint32_t first_slot, tokens, row;
  int64_t token0, pos0;
};

// The per-row tables of GroupRowsOf for a group's spans (blockIdx.y: the span): each row's offset
// in the cache (PagedRowsOf::TokenOffset's) and its absolute position.
__global__ void GroupRowsKernel(const GroupSpan* __restrict__ spans, uint32_t block_size, Strides st,
                                int64_t* __restrict__ offsets, int64_t* __restrict__ positions) {
  const GroupSpan sp = spans[blockIdx.y];
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < sp.tokens; i += gridDim.x * blockDim.x) {
    offsets[sp.row + i] = SlotOffset(sp.block_ids, uint64_t(int64_t(sp.first_slot) + sp.token0 + i), block_size, st);
    positions[sp.row + i] = sp.pos0 + i;
  }
}

}  // namespace
}  // namespace kvtc::cuda
