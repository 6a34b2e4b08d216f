// Host memory for finished records. An encode writes tens of MiB of record once; memory fresh
// from the kernel costs a page fault and a zero fill per 4 KiB page on that first write, which
// made up most of a GPU encode's wall time (docs/benchmarks.md). So records are allocated in
// 2 MiB-aligned blocks advised for transparent huge pages (one fault per 2 MiB), and a freed
// record's block is kept, still mapped, in a bounded pool for the next record of similar size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace kvtc {

// Returns a record's block to the pool (or to the system when the pool is full).
struct RecordMemoryDeleter {
  size_t capacity = 0;
  bool pinned = false;
  void operator()(uint8_t* p) const;
};
using RecordMemory = std::unique_ptr<uint8_t[], RecordMemoryDeleter>;

// Uninitialised host memory for `size` bytes: a pooled block when one of at least `size` (and at
// most twice it) is free, else a fresh one. KVTC_RECORD_POOL_MB bounds the idle pool (default
// 512; 0 disables pooling).
RecordMemory AllocateRecordMemory(size_t size);

// Page-locking of record blocks for a GPU backend, so that a record restores to the device by
// DMA straight from its own memory (no staging copy). Installed once by the CUDA backend when
// KVTC_PIN_RECORDS=1 (cuda_codec.cu says why it is not the default); `pin`
// runs on every fresh block (false: the block stays pageable), `unpin` before a pinned block goes
// back to the system. Pooled blocks stay pinned.
struct RecordMemoryPinning {
  bool (*pin)(void* p, size_t bytes) = nullptr;
  void (*unpin)(void* p) = nullptr;
};
void SetRecordMemoryPinning(RecordMemoryPinning pinning);

struct RecordPoolStats {
  uint64_t hits = 0, misses = 0;  // allocations served from the pool / fresh from the system
  size_t idle_bytes = 0;          // memory held by the pool now
};
RecordPoolStats RecordPoolStatistics();

}  // namespace kvtc
