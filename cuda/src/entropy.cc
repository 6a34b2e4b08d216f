#include "kvtc/entropy.h"

#include <libdeflate.h>

#include <cstring>
#include <memory>

#include "kvtc/error.h"

namespace kvtc {
namespace {

inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline void StoreU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

struct CompressorDeleter {
  void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
};
struct DecompressorDeleter {
  void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

}  // namespace

std::vector<uint8_t> DeflateChunks(const uint8_t* data, size_t size, size_t chunk_bytes, int level) {
  KVTC_CHECK(chunk_bytes > 0 && chunk_bytes <= kMaxChunkBytes, kInvalidArgument,
             "Expected a chunk size in 1.." << kMaxChunkBytes << " but received " << chunk_bytes);
  KVTC_CHECK(level >= 0 && level <= 12, kInvalidArgument, "Expected a DEFLATE level in 0..12 but received " << level);
  const size_t chunks = (size + chunk_bytes - 1) / chunk_bytes;
  KVTC_CHECK(chunks <= UINT32_MAX, kInvalidArgument, "payload too large: " << size << " bytes");
  std::vector<std::vector<uint8_t>> stored(chunks);
#pragma omp parallel
  {
    std::unique_ptr<libdeflate_compressor, CompressorDeleter> c(libdeflate_alloc_compressor(level));
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < chunks; ++i) {
      const size_t off = i * chunk_bytes;
      const size_t n = std::min(chunk_bytes, size - off);
      std::vector<uint8_t>& out = stored[i];
      out.resize(n);
      size_t m = c ? libdeflate_deflate_compress(c.get(), data + off, n, out.data(), n - (n > 0 ? 1 : 0)) : 0;
      if (m == 0) {
        std::memcpy(out.data(), data + off, n);  // incompressible (or tiny): store
      } else {
        out.resize(m);
      }
    }
  }
  size_t total = 4 + 8 * chunks;
  for (const auto& s : stored) total += s.size();
  std::vector<uint8_t> body(total);
  StoreU32(body.data(), static_cast<uint32_t>(chunks));
  uint8_t* table = body.data() + 4;
  uint8_t* dst = table + 8 * chunks;
  for (size_t i = 0; i < chunks; ++i) {
    const size_t n = std::min(chunk_bytes, size - i * chunk_bytes);
    StoreU32(table + 8 * i, static_cast<uint32_t>(n));
    StoreU32(table + 8 * i + 4, static_cast<uint32_t>(stored[i].size()));
    std::memcpy(dst, stored[i].data(), stored[i].size());
    dst += stored[i].size();
  }
  return body;
}

void InflateChunks(const uint8_t* body, size_t body_size, uint8_t* out, size_t expected_size) {
  KVTC_CHECK(body_size >= 4, kRecordLength, "entropy section of " << body_size << " bytes has no chunk table");
  const uint32_t chunks = LoadU32(body);
  KVTC_CHECK(chunks <= (body_size - 4) / 8, kRecordLength,
             "entropy section declares " << chunks << " chunks but holds " << body_size << " bytes");
  const uint8_t* table = body + 4;
  std::vector<size_t> src_off(chunks), dst_off(chunks);
  size_t src = 4 + 8 * static_cast<size_t>(chunks), dst = 0;
  for (uint32_t i = 0; i < chunks; ++i) {
    const uint32_t raw = LoadU32(table + 8 * i), stored = LoadU32(table + 8 * i + 4);
    KVTC_CHECK(raw <= kMaxChunkBytes && stored <= raw, kRecordLength,
               "chunk " << i << " declares " << stored << " stored / " << raw << " raw bytes");
    KVTC_CHECK(stored <= body_size - src, kRecordLength, "chunk " << i << " runs past the end of its section");
    KVTC_CHECK(raw <= expected_size - dst, kRecordSizeMismatch,
               "chunks inflate past the " << expected_size << " bytes the plan implies");
    src_off[i] = src;
    dst_off[i] = dst;
    src += stored;
    dst += raw;
  }
  KVTC_CHECK(src == body_size, kRecordLength, "entropy section has " << body_size - src << " trailing bytes");
  KVTC_CHECK(dst == expected_size, kRecordSizeMismatch,
             "chunks inflate to " << dst << " bytes, the plan implies " << expected_size);
  bool failed = false;
#pragma omp parallel
  {
    std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> d(libdeflate_alloc_decompressor());
#pragma omp for schedule(dynamic, 1) reduction(|| : failed)
    for (uint32_t i = 0; i < chunks; ++i) {
      const uint32_t raw = LoadU32(table + 8 * i), stored = LoadU32(table + 8 * i + 4);
      if (stored == raw) {
        std::memcpy(out + dst_off[i], body + src_off[i], raw);
        continue;
      }
      size_t actual = 0;
      const libdeflate_result r =
          d ? libdeflate_deflate_decompress(d.get(), body + src_off[i], stored, out + dst_off[i], raw, &actual)
            : LIBDEFLATE_BAD_DATA;
      if (r != LIBDEFLATE_SUCCESS || actual != raw) failed = true;
    }
  }
  KVTC_CHECK(!failed, kDeflate, "a DEFLATE chunk is malformed or inflates to the wrong size");
}

}  // namespace kvtc
