#include "kvtc/entropy.h"

#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "kvtc/cuda_huffman.h"
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

void CheckDeflateLevel(int level) {
  KVTC_CHECK(level >= 0 && level <= 12, kInvalidArgument, "Expected a DEFLATE level in 0..12 but received " << level);
}

std::vector<uint8_t> DeflateChunks(const uint8_t* data, size_t size, size_t chunk_bytes, int level) {
  KVTC_CHECK(chunk_bytes > 0 && chunk_bytes <= kMaxChunkBytes, kInvalidArgument,
             "Expected a chunk size in 1.." << kMaxChunkBytes << " but received " << chunk_bytes);
  CheckDeflateLevel(level);
  const size_t chunks = (size + chunk_bytes - 1) / chunk_bytes;
  KVTC_CHECK(chunks <= UINT32_MAX, kInvalidArgument, "payload too large: " << size << " bytes");
  std::vector<std::vector<uint8_t>> stored(chunks);
#pragma omp parallel
  {
    // Level 0: libdeflate's stored blocks would be larger than the chunk; store it directly.
    std::unique_ptr<libdeflate_compressor, CompressorDeleter> c(
        StoresChunks(level) ? nullptr : libdeflate_alloc_compressor(level));
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

uint32_t DefaultEntryStride(size_t chunk_bytes, uint32_t runs) {
  const size_t per_run = (chunk_bytes + runs - 1) / runs;
  return uint32_t(std::max<size_t>(8192 / runs, (per_run + 15) / 16 * 16));
}

std::vector<uint8_t> DeflateChunksIndexed(const uint8_t* data, size_t size, size_t chunk_bytes, uint32_t entry_stride,
                                          int level) {
  CheckDeflateLevel(level);
  const bool store = StoresChunks(level);
  KVTC_CHECK(chunk_bytes > 0 && chunk_bytes <= kMaxChunkBytes, kInvalidArgument,
             "Expected a chunk size in 1.." << kMaxChunkBytes << " but received " << chunk_bytes);
  KVTC_CHECK(entry_stride >= 16 && entry_stride % 16 == 0 && entry_stride <= kMaxChunkBytes, kInvalidArgument,
             "Expected an entry stride that is a multiple of 16 in 16.." << kMaxChunkBytes << " but received "
                                                                          << entry_stride);
  const size_t chunks = (size + chunk_bytes - 1) / chunk_bytes;
  KVTC_CHECK(chunks <= UINT32_MAX, kInvalidArgument, "payload too large: " << size << " bytes");
  std::vector<std::vector<uint8_t>> stored(chunks);
  std::vector<std::vector<uint32_t>> entries(chunks);
#pragma omp parallel
  {
    auto scratch = std::make_unique<huff::EncodeScratch>();
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < chunks; ++i) {
      const size_t off = i * chunk_bytes;
      const size_t n = std::min(chunk_bytes, size - off);
      std::vector<uint8_t>& out = stored[i];
      if (store) {
        out.assign(data + off, data + off + n);
        continue;
      }
      out.resize((n + 3) / 4 * 4);
      std::vector<uint32_t> e(huff::EntryCount(n, entry_stride));
      const size_t m = huff::EncodeChunkSerial(data + off, n, out.data(), *scratch, e.data(), entry_stride);
      if (m >= n) {
        out.assign(data + off, data + off + n);  // did not shrink: store
      } else {
        out.resize(m);
        entries[i] = std::move(e);
      }
    }
  }
  size_t total = 8 + 8 * chunks;
  for (size_t i = 0; i < chunks; ++i) total += stored[i].size() + 4 * entries[i].size();
  std::vector<uint8_t> body(total);
  StoreU32(body.data(), static_cast<uint32_t>(chunks));
  StoreU32(body.data() + 4, entry_stride);
  uint8_t* table = body.data() + 8;
  uint8_t* at = table + 8 * chunks;
  for (size_t i = 0; i < chunks; ++i) {
    StoreU32(table + 8 * i, static_cast<uint32_t>(std::min(chunk_bytes, size - i * chunk_bytes)));
    StoreU32(table + 8 * i + 4, static_cast<uint32_t>(stored[i].size()));
    for (uint32_t e : entries[i]) {
      StoreU32(at, e);
      at += 4;
    }
  }
  for (const auto& s : stored) {
    if (!s.empty()) std::memcpy(at, s.data(), s.size());
    at += s.size();
  }
  return body;
}

ChunkTable ParseChunkTable(const uint8_t* body, size_t body_size, SectionEncoding encoding, size_t expected_size) {
  const bool indexed = encoding == SectionEncoding::kDeflateIndexed;
  const size_t fixed = indexed ? 8 : 4;
  KVTC_CHECK(body_size >= fixed, kRecordLength, "entropy section of " << body_size << " bytes has no chunk table");
  ChunkTable t;
  const uint32_t chunks = LoadU32(body);
  KVTC_CHECK(chunks <= (body_size - fixed) / 8, kRecordLength,
             "entropy section declares " << chunks << " chunks but holds " << body_size << " bytes");
  if (indexed) {
    t.entry_stride = LoadU32(body + 4);
    KVTC_CHECK(t.entry_stride > 0, kRecordCorrupt, "indexed entropy section has an entry stride of 0");
  }
  const uint8_t* table = body + fixed;
  t.raw.resize(chunks);
  t.stored.resize(chunks);
  t.src.resize(chunks);
  t.dst.resize(chunks);
  t.entry_count.assign(chunks, 0);
  t.entries_at.assign(chunks, 0);
  size_t dst = 0, total_entries = 0;
  for (uint32_t i = 0; i < chunks; ++i) {
    const uint32_t raw = LoadU32(table + 8 * i), stored = LoadU32(table + 8 * i + 4);
    KVTC_CHECK(raw <= kMaxChunkBytes && stored <= raw, kRecordLength,
               "chunk " << i << " declares " << stored << " stored / " << raw << " raw bytes");
    KVTC_CHECK(raw <= expected_size - dst, kRecordSizeMismatch,
               "chunks inflate past the " << expected_size << " bytes the plan implies");
    t.raw[i] = raw;
    t.stored[i] = stored;
    t.dst[i] = dst;
    dst += raw;
    t.max_raw = std::max<size_t>(t.max_raw, raw);
    if (indexed && stored < raw) {
      t.entry_count[i] = huff::EntryCount(raw, t.entry_stride);
      t.entries_at[i] = total_entries;
      total_entries += t.entry_count[i];
    }
  }
  KVTC_CHECK(dst == expected_size, kRecordSizeMismatch,
             "chunks inflate to " << dst << " bytes, the plan implies " << expected_size);
  size_t src = fixed + 8 * static_cast<size_t>(chunks);
  KVTC_CHECK(total_entries <= (body_size - src) / 4, kRecordLength, "entropy section's entry points run past its end");
  t.entries.resize(total_entries);
  for (size_t k = 0; k < total_entries; ++k) t.entries[k] = LoadU32(body + src + 4 * k);
  src += 4 * total_entries;
  for (uint32_t i = 0; i < chunks; ++i) {
    // Entry points strictly increase inside their chunk (every code is at least one bit long).
    for (uint32_t k = 0; k < t.entry_count[i]; ++k) {
      const uint32_t e = t.entries[t.entries_at[i] + k];
      KVTC_CHECK(e < uint64_t(t.stored[i]) * 8 && (k == 0 || e > t.entries[t.entries_at[i] + k - 1]), kRecordCorrupt,
                 "chunk " << i << " has an entry point outside its stream or out of order");
    }
    KVTC_CHECK(t.stored[i] <= body_size - src, kRecordLength, "chunk " << i << " runs past the end of its section");
    t.src[i] = src;
    src += t.stored[i];
  }
  KVTC_CHECK(src == body_size, kRecordLength, "entropy section has " << body_size - src << " trailing bytes");
  t.payload_bytes = expected_size;
  return t;
}

void InflateChunks(const uint8_t* body, size_t body_size, SectionEncoding encoding, uint8_t* out,
                   size_t expected_size) {
  const ChunkTable t = ParseChunkTable(body, body_size, encoding, expected_size);
  const size_t chunks = t.raw.size();
  bool failed = false;
#pragma omp parallel
  {
    std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> d(libdeflate_alloc_decompressor());
    std::unique_ptr<huff::InflateState> st;
#pragma omp for schedule(dynamic, 1) reduction(|| : failed)
    for (size_t i = 0; i < chunks; ++i) {
      if (t.Stored(i)) {
        std::memcpy(out + t.dst[i], body + t.src[i], t.raw[i]);
        continue;
      }
      if (t.entry_stride) {
        // The GPU's inflater, run serially: CPU and GPU accept exactly the same indexed chunks.
        if (!st) st = std::make_unique<huff::InflateState>();
        failed |= huff::InflateChunkIndexed(body + t.src[i], t.stored[i], out + t.dst[i], t.raw[i],
                                            t.entries.data() + t.entries_at[i], t.entry_count[i], t.entry_stride, *st,
                                            0, 1) != huff::kInflateOk;
        continue;
      }
      size_t actual = 0;
      const libdeflate_result r =
          d ? libdeflate_deflate_decompress(d.get(), body + t.src[i], t.stored[i], out + t.dst[i], t.raw[i], &actual)
            : LIBDEFLATE_BAD_DATA;
      if (r != LIBDEFLATE_SUCCESS || actual != t.raw[i]) failed = true;
    }
  }
  KVTC_CHECK(!failed, kDeflate, "a DEFLATE chunk is malformed or inflates to the wrong size");
}

}  // namespace kvtc
