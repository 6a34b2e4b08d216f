#include "kvtc/record_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace kvtc {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

constexpr size_t kDefaultLimit = size_t(512) << 20;

// KVTC_RECORD_POOL_MB in bytes, or SIZE_MAX when unset (the bound then adapts to the batches).
size_t ConfiguredLimit() {
  static const size_t limit = [] {
    const char* v = std::getenv("KVTC_RECORD_POOL_MB");
    return v && *v ? size_t(std::strtoull(v, nullptr, 10)) << 20 : SIZE_MAX;
  }();
  return limit;
}

// The most an adaptive pool may grow to: an eighth of physical memory (never below the default).
size_t AdaptiveCap() {
  static const size_t cap = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const size_t eighth = pages > 0 && page > 0 ? size_t(pages) * size_t(page) / 8 : 0;
    return std::max(kDefaultLimit, eighth);
  }();
  return cap;
}

struct Block {
  uint8_t* p;
  bool pinned;
};

struct Pool {
  std::mutex mu;
  std::multimap<size_t, Block> idle;  // capacity -> block
  RecordMemoryPinning pinning;
  size_t idle_bytes = 0;
  size_t largest_batch = 0;  // NoteRecordBatch's largest
  uint64_t hits = 0, misses = 0;
  // The bound on idle_bytes (the header says how it is chosen). Called with mu held.
  size_t Limit() const {
    const size_t configured = ConfiguredLimit();
    if (configured != SIZE_MAX) return configured;
    // The default's room for records of every size, and room for a whole batch beside it.
    return std::min(AdaptiveCap(), kDefaultLimit + largest_batch);
  }
};

Pool& ThePool() {
  static Pool* pool = new Pool;  // never destroyed: records may be freed during process exit
  return *pool;
}

RecordMemory FreshBlock(size_t capacity, const RecordMemoryPinning& pinning) {
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, capacity) != 0) throw std::bad_alloc();
  // Advice only: without THP (or with it disabled) the block is ordinary memory.
  madvise(p, capacity, MADV_HUGEPAGE);
  const bool pinned = pinning.pin && pinning.pin(p, capacity);
  return RecordMemory(static_cast<uint8_t*>(p), RecordMemoryDeleter{capacity, pinned});
}

}  // namespace

void RecordMemoryDeleter::operator()(uint8_t* p) const {
  if (!p) return;
  Pool& pool = ThePool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    if (pool.idle_bytes + capacity <= pool.Limit()) {
      pool.idle.emplace(capacity, Block{p, pinned});
      pool.idle_bytes += capacity;
      return;
    }
    if (pinned && pool.pinning.unpin) pool.pinning.unpin(p);
  }
  std::free(p);
}

RecordMemory AllocateRecordMemory(size_t size) {
  const size_t capacity = (std::max<size_t>(size, 1) + kHugePage - 1) / kHugePage * kHugePage;
  Pool& pool = ThePool();
  RecordMemoryPinning pinning;
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    auto it = pool.idle.lower_bound(capacity);
    if (it != pool.idle.end() && it->first <= 2 * capacity) {
      const Block b = it->second;
      const size_t got = it->first;
      pool.idle_bytes -= got;
      pool.idle.erase(it);
      ++pool.hits;
      return RecordMemory(b.p, RecordMemoryDeleter{got, b.pinned});
    }
    ++pool.misses;
    pinning = pool.pinning;
  }
  return FreshBlock(capacity, pinning);
}

void SetRecordMemoryPinning(RecordMemoryPinning pinning) {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.pinning = pinning;
}

void NoteRecordBatch(size_t bytes) {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.largest_batch = std::max(pool.largest_batch, bytes);
}

RecordPoolStats RecordPoolStatistics() {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return {pool.hits, pool.misses, pool.idle_bytes, pool.Limit()};
}

}  // namespace kvtc
