// Host check of kvtc's GPU DEFLATE coder (include/kvtc/cuda_huffman.h), run on the CPU with
// plain g++ (no CUDA needed): the encoder's streams inflate with libdeflate to the exact input;
// the decoder inflates libdeflate's streams (levels 0, 1, 6, 12: stored, fixed and dynamic
// blocks with matches) and rejects truncated, bit-flipped and mis-sized streams. Meant to be
// built with -fsanitize=address,undefined: every buffer has its exact size.
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -Icuda/include cuda/tools/huffman_check.cc -ldeflate
#include <libdeflate.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvtc/cuda_huffman.h"

namespace {

using kvtc::huff::BitReader;
using kvtc::huff::EncodeChunkSerial;
using kvtc::huff::EncodeScratch;
using kvtc::huff::InflateChunk;
using kvtc::huff::InflateChunkIndexed;
using kvtc::huff::InflateState;
using kvtc::huff::LitTable;

int failures = 0;
#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      ++failures;                                        \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                 \
      std::fprintf(stderr, "\n");                        \
      if (failures > 20) std::exit(1);                   \
    }                                                    \
  } while (0)

std::mt19937_64 rng(12345);

std::vector<uint8_t> Make(const std::string& kind, size_t n) {
  std::vector<uint8_t> v(n);
  if (kind == "random") {
    for (auto& b : v) b = uint8_t(rng());
  } else if (kind == "zero") {
    // all zero
  } else if (kind == "one") {
    std::fill(v.begin(), v.end(), 0x5a);
  } else if (kind == "two") {
    for (auto& b : v) b = (rng() & 7) ? 3 : 250;
  } else if (kind == "geometric") {  // very skewed: deep Huffman trees, the 15-bit limit
    std::geometric_distribution<int> g(0.6);
    for (auto& b : v) b = uint8_t(std::min(g(rng), 255));
  } else if (kind == "fibonacci") {  // symbol i occurs fib(i) times: depth far beyond 15
    size_t k = 0;
    uint64_t a = 1, b = 1;
    for (int s = 0; k < n; ++s) {
      for (uint64_t j = 0; j < a && k < n; ++j) v[k++] = uint8_t(s % 256);
      const uint64_t c = a + b;
      a = b;
      b = c;
    }
    std::shuffle(v.begin(), v.end(), rng);
  } else if (kind == "nibbles") {  // like a 4-bit quantized payload: two Laplacian codes a byte
    std::normal_distribution<double> g(0.0, 1.6);
    for (auto& b : v) {
      auto q = [&] { return uint8_t(std::clamp(int(std::lround(g(rng))) + 8, 0, 15)); };
      b = uint8_t(q() | (q() << 4));
    }
  } else if (kind == "text") {  // repeats: matches at many distances
    const char* words[] = {"kv ", "cache ", "tensor ", "compress ", "the ", "of ", "quantize ", "pca "};
    size_t k = 0;
    while (k < n) {
      const char* w = words[rng() % 8];
      for (const char* p = w; *p && k < n; ++p) v[k++] = uint8_t(*p);
    }
  } else {
    std::abort();
  }
  return v;
}

// Runs our inflater on exactly-sized heap copies (so ASan sees any stray access).
int Inflate(const std::vector<uint8_t>& comp, size_t out_size, std::vector<uint8_t>* out = nullptr) {
  std::unique_ptr<uint8_t[]> in(new uint8_t[std::max<size_t>(comp.size(), 1)]);
  std::copy(comp.begin(), comp.end(), in.get());
  std::unique_ptr<uint8_t[]> o(new uint8_t[std::max<size_t>(out_size, 1)]);
  std::unique_ptr<InflateState> st(new InflateState);
  const int r = InflateChunk(in.get(), uint32_t(comp.size()), o.get(), uint32_t(out_size), *st, 0, 1);
  if (out) out->assign(o.get(), o.get() + out_size);
  return r;
}

// The indexed inflater (one lane, every run in turn) on exactly-sized heap copies.
int InflateIndexed(const std::vector<uint8_t>& comp, size_t out_size, const std::vector<uint32_t>& entries,
                   uint32_t stride, std::vector<uint8_t>* out = nullptr) {
  std::unique_ptr<uint8_t[]> in(new uint8_t[std::max<size_t>(comp.size(), 1)]);
  std::copy(comp.begin(), comp.end(), in.get());
  std::unique_ptr<uint8_t[]> o(new uint8_t[std::max<size_t>(out_size, 1)]);
  std::unique_ptr<uint32_t[]> e(new uint32_t[std::max<size_t>(entries.size(), 1)]);
  std::copy(entries.begin(), entries.end(), e.get());
  std::unique_ptr<InflateState> st(new InflateState);
  const int r = InflateChunkIndexed(in.get(), uint32_t(comp.size()), o.get(), uint32_t(out_size), e.get(),
                                    uint32_t(entries.size()), stride, *st, 0, 1);
  if (out) out->assign(o.get(), o.get() + out_size);
  return r;
}

// Indexed chunks: the entry points the encoder writes let the indexed inflater reproduce the
// input; libdeflate reads the same stream; a wrong entry point, a wrong count, a truncation or a
// stream with matches (libdeflate's) is an error, never a wrong output accepted silently.
size_t CheckIndexed(const std::string& kind, size_t n, uint32_t stride, libdeflate_decompressor* d,
                    libdeflate_compressor* c6) {
  const std::vector<uint8_t> in = Make(kind, n);
  std::unique_ptr<EncodeScratch> s(new EncodeScratch);
  std::vector<uint8_t> out((n + 3) / 4 * 4 + 4);
  std::vector<uint32_t> entries(kvtc::huff::EntryCount(n, stride));
  const size_t m = EncodeChunkSerial(in.data(), n, out.data(), *s, entries.data(), stride);
  if (m >= n) return 0;  // stored: no index
  out.resize(m);
  std::vector<uint8_t> back(n);
  size_t actual = 0;
  CHECK(libdeflate_deflate_decompress(d, out.data(), m, back.data(), n, &actual) == LIBDEFLATE_SUCCESS &&
            actual == n && back == in,
        "indexed %s n=%zu stride %u: libdeflate disagrees", kind.c_str(), n, stride);
  std::vector<uint8_t> mine;
  const int r = InflateIndexed(out, n, entries, stride, &mine);
  CHECK(r == 0 && mine == in, "indexed %s n=%zu stride %u: status %d", kind.c_str(), n, stride, r);
  if (!entries.empty()) {
    for (int k = 0; k < 8; ++k) {
      std::vector<uint32_t> bad = entries;
      const size_t at = rng() % bad.size();
      bad[at] += (rng() & 1) ? 1 : uint32_t(-1);
      CHECK(InflateIndexed(out, n, bad, stride) != 0, "indexed %s n=%zu: entry %zu moved by one bit accepted",
            kind.c_str(), n, at);
    }
    std::vector<uint32_t> fewer(entries.begin(), entries.end() - 1);
    CHECK(InflateIndexed(out, n, fewer, stride) != 0, "indexed %s n=%zu: too few entry points accepted", kind.c_str(), n);
  }
  CHECK(InflateIndexed(out, n, entries, stride + 16) != 0 || entries.empty(), "indexed %s n=%zu: wrong stride accepted",
        kind.c_str(), n);
  CHECK(n < 2 || InflateIndexed(out, n - 1, entries, stride) != 0, "indexed %s n=%zu: short output accepted",
        kind.c_str(), n);
  const size_t step = m > 200 ? m / 31 + 1 : 1;
  for (size_t k = 0; k < m; k += step) {
    std::vector<uint8_t> cut(out.begin(), out.begin() + k);
    CHECK(InflateIndexed(cut, n, entries, stride) != 0, "indexed %s n=%zu: truncated to %zu of %zu accepted",
          kind.c_str(), n, k, m);
  }
  for (int f = 0; f < 20; ++f) {
    std::vector<uint8_t> bad = out;
    bad[rng() % m] ^= uint8_t(1u << (rng() % 8));
    std::vector<uint8_t> o;
    (void)InflateIndexed(bad, n, entries, stride, &o);
  }
  // A libdeflate stream (matches, several blocks) is not an indexed stream.
  if (kind == "text" && n > 1000) {
    std::vector<uint8_t> lib(n + 64);
    lib.resize(libdeflate_deflate_compress(c6, in.data(), n, lib.data(), lib.size()));
    CHECK(InflateIndexed(lib, n, std::vector<uint32_t>(entries.size(), 8), stride) != 0,
          "indexed: a libdeflate stream with made-up entry points accepted");
  }
  return 1;
}

struct Totals {
  size_t raw = 0, ours = 0, lib6 = 0, stored = 0, streams = 0;
};

void CheckEncoder(const std::string& kind, size_t n, libdeflate_decompressor* d, libdeflate_compressor* c6,
                  Totals& t) {
  const std::vector<uint8_t> in = Make(kind, n);
  std::unique_ptr<EncodeScratch> s(new EncodeScratch);
  std::vector<uint8_t> out((n + 3) / 4 * 4 + 4);
  const size_t m = EncodeChunkSerial(in.data(), n, out.data(), *s);
  CHECK(m <= n, "%s n=%zu: size %zu", kind.c_str(), n, m);
  std::vector<uint8_t> lib(n + 64);
  const size_t l6 = libdeflate_deflate_compress(c6, in.data(), n, lib.data(), lib.size());
  t.raw += n;
  t.ours += m;
  t.lib6 += (l6 && l6 < n) ? l6 : n;
  if (m == n) {
    ++t.stored;
    return;
  }
  ++t.streams;
  out.resize(m);
  std::vector<uint8_t> back(n);
  size_t actual = 0;
  const libdeflate_result r = libdeflate_deflate_decompress(d, out.data(), m, back.data(), n, &actual);
  CHECK(r == LIBDEFLATE_SUCCESS && actual == n && back == in, "%s n=%zu: libdeflate result %d actual %zu", kind.c_str(),
        n, int(r), actual);
  size_t in_used = 0;
  libdeflate_deflate_decompress_ex(d, out.data(), m, back.data(), n, &in_used, &actual);
  CHECK(in_used == m, "%s n=%zu: libdeflate consumed %zu of %zu bytes", kind.c_str(), n, in_used, m);
  std::vector<uint8_t> mine;
  CHECK(Inflate(out, n, &mine) == 0 && mine == in, "%s n=%zu: own inflater disagrees", kind.c_str(), n);
}

void CheckDecoder(const std::string& kind, size_t n, int level, libdeflate_compressor* c, Totals& t) {
  const std::vector<uint8_t> in = Make(kind, n);
  std::vector<uint8_t> comp(n + n / 8 + 256);
  const size_t m = libdeflate_deflate_compress(c, in.data(), n, comp.data(), comp.size());
  CHECK(m > 0, "libdeflate failed");
  comp.resize(m);
  ++t.streams;
  std::vector<uint8_t> out;
  const int r = Inflate(comp, n, &out);
  CHECK(r == 0 && out == in, "decode %s n=%zu level %d: status %d", kind.c_str(), n, level, r);
  // Wrong expected sizes are errors.
  if (n > 0) CHECK(Inflate(comp, n - 1) != 0, "decode %s n=%zu: short output accepted", kind.c_str(), n);
  CHECK(Inflate(comp, n + 1) != 0, "decode %s n=%zu: long output accepted", kind.c_str(), n);
  // Truncations: must fail (a prefix can't hold the whole stream... unless trailing bits were
  // padding only, which the final-block check and exact size catch).
  const size_t step = m > 200 ? m / 97 + 1 : 1;
  for (size_t k = 0; k < m; k += step) {
    std::vector<uint8_t> cut(comp.begin(), comp.begin() + k);
    const int rc = Inflate(cut, n);
    CHECK(rc != 0, "decode %s n=%zu level %d: truncated to %zu of %zu accepted", kind.c_str(), n, level, k, m);
  }
  // Bit flips and garbage: any status, no crash (ASan), no hang. A flip can still give a valid
  // stream of the right size; count those.
  for (int f = 0; f < 40; ++f) {
    std::vector<uint8_t> bad = comp;
    const int flips = 1 + int(rng() % 3);
    for (int j = 0; j < flips; ++j) bad[rng() % m] ^= uint8_t(1u << (rng() % 8));
    std::vector<uint8_t> o;
    (void)Inflate(bad, n, &o);
  }
}

}  // namespace

// The GPU bit reader's word stream (aligned words, one shift, loads two refills ahead) gives
// Load32's bytes at every alignment of the input, start and size, zeros past the end included.
// The buffer has 8 bytes of slack on both sides, so reading whole aligned words stays inside it.
static size_t CheckWordStream() {
  size_t steps = 0;
  std::vector<uint8_t> buf(8 + 300 + 8);
  for (int trial = 0; trial < 20000; ++trial) {
    for (auto& b : buf) b = uint8_t(rng());
    BitReader br{};
    br.in = buf.data() + 8 + rng() % 4;
    br.size = uint32_t(rng() % 300);
    uint32_t p = uint32_t(rng() % (br.size + 24));
    br.StartWords(p);
    for (int k = 0; k < 16; ++k, p += 4, ++steps) {
      br.pos = p;
      const uint32_t want = br.Load32(p), got = br.NextFromWords();
      CHECK(got == want, "word stream: size %u skew %u at %u: %08x, Load32 %08x", br.size,
            unsigned(reinterpret_cast<uintptr_t>(br.in) & 3), p, got, want);
    }
  }
  return steps;
}

// The literal table against the canonical code, exhaustively: every 15-bit pattern decodes to the
// symbol and length a walk over the canonical codes finds (or to -1 for no codeword, where the
// code is incomplete). Counts the long codes (over 12 bits: DecodeSym's slow path).
struct TableStats {
  size_t tables = 0, long_codes = 0;
};
void CheckTable(const char* what, const uint8_t* lens, TableStats& ts) {
  auto t = std::make_unique<LitTable>();
  if (!kvtc::huff::PrepareTable(lens, 288, *t)) {
    CHECK(false, "%s: the code was refused", what);
    return;
  }
  kvtc::huff::FillTable(lens, *t, 0, 1);
  uint16_t codes[288];
  kvtc::huff::CanonicalCodes(lens, 288, codes);
  for (uint32_t p = 0; p < (1u << 15); ++p) {
    int want = -1, want_len = 0;
    for (int s = 0; s < 288; ++s) {
      const int l = lens[s];
      if (l && (p & ((1u << l) - 1)) == codes[s]) {
        want = s;
        want_len = l;
      }
    }
    const uint8_t bytes[4] = {uint8_t(p), uint8_t(p >> 8), 0, 0};
    BitReader br;
    br.in = bytes;
    br.size = 4;
    br.Start(0);
    br.Need(15);
    const uint32_t before = br.count;
    const int got = kvtc::huff::DecodeSym(br, *t);
    CHECK(got == want, "%s: pattern %u decodes to %d, the canonical code to %d", what, p, got, want);
    if (got >= 0) {
      CHECK(int(before - br.count) == want_len, "%s: pattern %u consumed %u bits, not %d", what, p, before - br.count,
            want_len);
    }
  }
  ++ts.tables;
  for (int s = 0; s < 288; ++s) {
    const int l = lens[s];
    if (l > kvtc::huff::kLitTableBits) ++ts.long_codes;
  }
}

size_t CheckTables() {
  TableStats ts;
  // Codes of real chunks: the encoder's lengths for each kind of payload.
  for (const char* k : {"random", "two", "geometric", "fibonacci", "nibbles", "text"}) {
    const std::vector<uint8_t> v = Make(k, 16384);
    uint32_t freq[288] = {0};
    for (uint8_t b : v) freq[b]++;
    freq[256] = 1;
    uint16_t order[288];
    int m = kvtc::huff::SortUsed(freq, 257, order);
    m = kvtc::huff::PadOrder(order, m, 257);
    uint8_t lens[288] = {0};
    auto scratch = std::make_unique<kvtc::huff::TreeScratch>();
    kvtc::huff::LengthsFromSorted(freq, order, m, 15, lens, *scratch);
    CheckTable(k, lens, ts);
  }
  // Many long codes: 256 codes of 13 bits (128 prefixes) and lengths 1..5 completing the code.
  uint8_t many[288] = {0};
  for (int s = 0; s < 5; ++s) many[s] = uint8_t(s + 1);
  for (int s = 5; s < 261; ++s) many[s] = 13;
  CheckTable("128 prefixes", many, ts);
  // Every length from 1 to 15 (a deep, complete code: two codes of 15 bits).
  uint8_t deep[288] = {0};
  for (int s = 0; s < 15; ++s) deep[s] = uint8_t(s + 1);
  deep[256] = 15;
  CheckTable("1..15 bits", deep, ts);
  // An incomplete code of one codeword of length 1 (allowed): half the patterns are no codeword.
  uint8_t one[288] = {0};
  one[256] = 1;
  CheckTable("one code", one, ts);
  CHECK(ts.long_codes > 0, "expected long codes among the tables");
  std::printf("tables: %zu literal tables, every 15-bit pattern as the canonical code; %zu long codes\n", ts.tables,
              ts.long_codes);
  return ts.tables;
}

int main() {
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  libdeflate_compressor* c6 = libdeflate_alloc_compressor(6);
  const char* kinds[] = {"random", "zero", "one", "two", "geometric", "fibonacci", "nibbles", "text"};
  std::vector<size_t> sizes = {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 63, 100, 255, 256, 257, 511, 1000, 1023,
                               4095, 4096, 4097, 9999, 16383, 16384, 16385, 32767, 40000, 65535, 65536};
  for (int i = 0; i < 30; ++i) sizes.push_back(1 + rng() % 65536);
  Totals enc;
  for (const char* k : kinds) {
    Totals t;
    for (size_t n : sizes) CheckEncoder(k, n, d, c6, t);
    std::printf("encode %-9s chunks %3zu (stored %2zu): %9zu -> ours %9zu (%.4f), libdeflate-6 %9zu (%.4f)\n", k,
                sizes.size(), t.stored, t.raw, t.ours, double(t.ours) / t.raw, t.lib6, double(t.lib6) / t.raw);
    enc.raw += t.raw;
    enc.ours += t.ours;
    enc.lib6 += t.lib6;
    enc.streams += t.streams;
  }
  std::printf("encode: %zu DEFLATE streams checked with libdeflate and the own inflater\n", enc.streams);

  Totals dec;
  for (int level : {0, 1, 6, 12}) {
    libdeflate_compressor* c = libdeflate_alloc_compressor(level);
    for (const char* k : kinds) {
      for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(100), size_t(4097), size_t(16384), size_t(65536),
                       size_t(200000)}) {
        CheckDecoder(k, n, level, c, dec);
      }
    }
    libdeflate_free_compressor(c);
  }
  std::printf("decode: %zu libdeflate streams (levels 0/1/6/12) inflated, truncations rejected, flips survived\n",
              dec.streams);
  // Pure garbage.
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> g(1 + rng() % 64);
    for (auto& b : g) b = uint8_t(rng());
    (void)Inflate(g, rng() % 300);
  }
  // A dynamic block whose code-length sequence overruns, and HDIST/HLIT at their maxima.
  std::printf("garbage: 20000 random streams survived\n");
  size_t indexed = 0;
  for (uint32_t stride : {16u, 256u, 2048u}) {
    for (const char* k : kinds) {
      for (size_t n : {size_t(17), size_t(256), size_t(257), size_t(4096), size_t(5000), size_t(65536), size_t(99999)})
        indexed += CheckIndexed(k, n, stride, d, c6);
    }
  }
  std::printf("indexed: %zu streams inflated from their entry points (libdeflate agrees), bad indexes rejected\n",
              indexed);
  std::printf("bit reader: %zu refills from aligned words equal the unaligned loads\n", CheckWordStream());
  CheckTables();
  libdeflate_free_compressor(c6);
  libdeflate_free_decompressor(d);
  if (failures) {
    std::printf("FAILED: %d checks\n", failures);
    return 1;
  }
  std::printf("huffman_check: all checks passed\n");
  return 0;
}
