#include "kvtc/record_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace kvtc {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;

size_t PoolLimit() {
  static const size_t limit = [] {
    const char* v = std::getenv("KVTC_RECORD_POOL_MB");
    return (v && *v ? size_t(std::strtoull(v, nullptr, 10)) : size_t(512)) << 20;
  }();
  return limit;
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
  uint64_t hits = 0, misses = 0;
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
    if (pool.idle_bytes + capacity <= PoolLimit()) {
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

RecordPoolStats RecordPoolStatistics() {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return {pool.hits, pool.misses, pool.idle_bytes};
}

}  // namespace kvtc
