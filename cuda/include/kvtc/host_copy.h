// Host copies of records, spread over OpenMP threads: the CUDA backend assembles each record
// once, from pinned staging straight into its final buffer, and stages inflate input the same way.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtc {

// memcpy in 256 KiB pieces over the OpenMP threads (serial below 512 KiB) that also returns the
// CRC32C of the bytes, each piece checksummed right after its copy while it is still in cache (one
// pass over memory instead of two).
uint32_t ParallelCopyCrc(void* dst, const void* src, size_t size);

// Many copies with their CRC32Cs (a fused encode group's records, read back together): all jobs
// in 256 KiB pieces over the threads, each piece checksummed right after its copy; a job without
// `src` is only checksummed (a page-locked record the device wrote into).
struct CopyCrcJob {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t size = 0;
  uint32_t crc = 0;  // out
};
void CopyCrcMany(CopyCrcJob* jobs, size_t n);

// n independent copies (dst + dst_off[i] <- src + src_off[i], size[i] bytes), over the threads.
void ParallelCopyChunks(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                        const size_t* size, size_t n);

// ParallelCopyChunks of chunks that lie back to back in the source (src_off[i + 1] ==
// src_off[i] + size[i]; kInternal otherwise) that also returns the CRC32C of that source span,
// each 256 KiB block checksummed right after its copy (a record's restore staging verifies its
// sections in the same pass over memory).
uint32_t ParallelCopyChunksCrc(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                               const size_t* size, size_t n);

// Many ParallelCopyChunksCrc in one parallel loop (a decode group's sections): every copy's
// source span in 256 KiB blocks, the blocks of all copies over the threads; each copy's `crc` is
// the CRC32C of its source span (0 for a copy of no chunks).
struct ChunkCopy {
  uint8_t* dst = nullptr;
  const size_t* dst_off = nullptr;
  const uint8_t* src = nullptr;
  const size_t* src_off = nullptr;
  const size_t* size = nullptr;
  size_t n = 0;
  uint32_t crc = 0;  // out
};
void ParallelCopyChunksCrcMany(ChunkCopy* copies, size_t n);

}  // namespace kvtc
