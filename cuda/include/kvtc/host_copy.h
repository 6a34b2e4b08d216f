// Host copies of records, spread over OpenMP threads. A fresh multi-megabyte buffer costs a page
// fault per 4 KiB on first touch (measured: ~11 ms for a 24 MB record on the GPU machine when one
// thread touched it); touching it from all cores while copying is what makes the host side of the
// CUDA pipeline cheap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtc {

// memcpy, in 1 MiB pieces over the OpenMP threads (serial below 2 MiB).
void ParallelCopy(void* dst, const void* src, size_t size);

// n independent copies (dst + dst_off[i] <- src + src_off[i], size[i] bytes), over the threads.
void ParallelCopyChunks(uint8_t* dst, const size_t* dst_off, const uint8_t* src, const size_t* src_off,
                        const size_t* size, size_t n);

}  // namespace kvtc
