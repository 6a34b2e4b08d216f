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
// most twice it) is free, else a fresh one.
//
// The idle pool's bound: KVTC_RECORD_POOL_MB when set (0 disables pooling). Unset, it is 512 MiB
// plus the largest batch of records an encode has written (NoteRecordBatch), up to an eighth of
// physical memory: a sidecar encodes batches of the same few sizes again and again, and a batch the
// pool cannot hold pays a fault per 2 MiB page of every record, every time (an H200, 8B shape, 32K
// tokens, batch 8 at DEFLATE level 0: 156-181 GB/s against 270 with the batch pooled;
// docs/benchmarks.md, run w).
RecordMemory AllocateRecordMemory(size_t size);

// An encode wrote a batch of records taking `bytes` of record memory in all: with no
// KVTC_RECORD_POOL_MB, the pool may keep that much idle from now on (within its cap).
void NoteRecordBatch(size_t bytes);

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
  size_t limit_bytes = 0;         // the most it may hold now
};
RecordPoolStats RecordPoolStatistics();

}  // namespace kvtc
