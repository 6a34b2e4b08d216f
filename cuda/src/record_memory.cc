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

struct Pool {
  std::mutex mu;
  std::multimap<size_t, uint8_t*> idle;  // capacity -> block
  size_t idle_bytes = 0;
  uint64_t hits = 0, misses = 0;
};

Pool& ThePool() {
  static Pool* pool = new Pool;  // never destroyed: records may be freed during process exit
  return *pool;
}

uint8_t* FreshBlock(size_t capacity) {
  void* p = nullptr;
  if (posix_memalign(&p, kHugePage, capacity) != 0) throw std::bad_alloc();
  // Advice only: without THP (or with it disabled) the block is ordinary memory.
  madvise(p, capacity, MADV_HUGEPAGE);
  return static_cast<uint8_t*>(p);
}

}  // namespace

void RecordMemoryDeleter::operator()(uint8_t* p) const {
  if (!p) return;
  Pool& pool = ThePool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    if (pool.idle_bytes + capacity <= PoolLimit()) {
      pool.idle.emplace(capacity, p);
      pool.idle_bytes += capacity;
      return;
    }
  }
  std::free(p);
}

RecordMemory AllocateRecordMemory(size_t size) {
  const size_t capacity = (std::max<size_t>(size, 1) + kHugePage - 1) / kHugePage * kHugePage;
  Pool& pool = ThePool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    auto it = pool.idle.lower_bound(capacity);
    if (it != pool.idle.end() && it->first <= 2 * capacity) {
      uint8_t* p = it->second;
      const size_t got = it->first;
      pool.idle_bytes -= got;
      pool.idle.erase(it);
      ++pool.hits;
      return RecordMemory(p, RecordMemoryDeleter{got});
    }
    ++pool.misses;
  }
  return RecordMemory(FreshBlock(capacity), RecordMemoryDeleter{capacity});
}

RecordPoolStats RecordPoolStatistics() {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return {pool.hits, pool.misses, pool.idle_bytes};
}

}  // namespace kvtc
