// Adversarial decoder check, built with AddressSanitizer in .ci/run: encodes a real record, then
// feeds the decoder truncations, every single-bit flip, and structurally valid records (CRCs
// recomputed) whose lengths lie. Every case must end in a kvtc::Error with the expected code,
// never a crash, a sanitizer report or an out-of-bounds read.
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>

#include "kvtc/calibrate.h"
#include "kvtc/codec.h"
#include "kvtc/crc32c.h"

using namespace kvtc;

namespace {

int failures = 0, cases = 0;

void Expect(const char* what, const std::vector<uint8_t>& rec, const Calibration& cal, uint64_t expected,
            const char* code) {
  ++cases;
  try {
    Decode(cal, rec.data(), rec.size(), expected);
    if (code) {
      std::printf("FAIL %s: decoded, expected %s\n", what, code);
      ++failures;
    }
  } catch (const kvtc::Error& e) {
    if (!code || (std::strcmp(code, "*") != 0 && std::strcmp(code, e.code_name()) != 0)) {
      std::printf("FAIL %s: %s (%s), expected %s\n", what, e.code_name(), e.what(), code ? code : "success");
      ++failures;
    }
  }
}

// Rewrites header and section CRCs so that structural checks, not CRCs, must catch a lie.
void Reseal(std::vector<uint8_t>& rec) {
  RecordHeader h;
  // Parse the raw table without validation: mirror of format.h offsets.
  std::memcpy(&h.record_bytes, rec.data() + 64, 8);
  const size_t sections = rec[55];
  for (size_t i = 0; i < sections; ++i) {
    uint8_t* e = rec.data() + kHeaderBytes + kSectionEntryBytes * i;
    uint64_t off, len;
    std::memcpy(&off, e + 16, 8);
    std::memcpy(&len, e + 24, 8);
    if (off <= rec.size() && len <= rec.size() - off) {
      const uint32_t crc = Crc32c(rec.data() + off, len);
      std::memcpy(e + 12, &crc, 4);
    }
  }
  uint32_t crc = Crc32c(rec.data(), kHeaderCrcOffset);
  crc = Crc32c(rec.data() + kHeaderBytes, HeaderBytes(sections) - kHeaderBytes, crc);
  std::memcpy(rec.data() + kHeaderCrcOffset, &crc, 4);
}

}  // namespace

// Every truncation, every single-bit flip and resealed lies of one valid record.
void FuzzRecord(const std::vector<uint8_t>& rec, const Calibration& cal, uint64_t expected) {
  Expect("valid record", rec, cal, expected, nullptr);

  Expect("zero length", {}, cal, expected, "ERR_KVTC_RECORD_EMPTY");
  for (size_t n = 1; n < rec.size(); n += (n < 256 ? 1 : 97)) {
    std::vector<uint8_t> t(rec.begin(), rec.begin() + n);
    Expect("truncated", t, cal, expected, "*");
  }
  for (size_t bit = 0; bit < rec.size() * 8; ++bit) {
    std::vector<uint8_t> f = rec;
    f[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Expect("bit flip", f, cal, expected, "*");
  }
  Expect("wrong expected size", rec, cal, expected - 4, "ERR_KVTC_RECORD_SIZE_MISMATCH");
  {
    Calibration other = cal;
    other.id[0] ^= 1;
    Expect("foreign calibration", rec, other, expected, "ERR_KVTC_CALIBRATION_MISMATCH");
  }
  const size_t sections = rec[55];
  for (size_t i = 0; i < sections; ++i) {
    for (uint64_t lie : {uint64_t{1} << 40, uint64_t{0xffffffffffffffff}, uint64_t{rec.size()}}) {
      std::vector<uint8_t> f = rec;
      std::memcpy(f.data() + kHeaderBytes + kSectionEntryBytes * i + 24, &lie, 8);
      Reseal(f);
      Expect("huge section length", f, cal, expected, "*");
      f = rec;
      std::memcpy(f.data() + kHeaderBytes + kSectionEntryBytes * i + 16, &lie, 8);
      Reseal(f);
      Expect("huge section offset", f, cal, expected, "*");
    }
    // Lie inside a coded section's chunk table: huge chunk count, huge chunk sizes.
    uint8_t* e = const_cast<uint8_t*>(rec.data()) + kHeaderBytes + kSectionEntryBytes * i;
    if (e[1] != 1 && e[1] != 2) continue;
    uint64_t off;
    std::memcpy(&off, e + 16, 8);
    const size_t table_at = e[1] == 2 ? 8 : 4;  // indexed: u32 count, u32 entry stride
    for (size_t field = 0; field < table_at + 8; field += 4) {
      for (uint32_t lie : {0xffffffffu, 0x7fffffffu, 0u, 1u}) {
        std::vector<uint8_t> f = rec;
        std::memcpy(f.data() + off + field, &lie, 4);
        Reseal(f);
        Expect("chunk table lie", f, cal, expected, "*");
      }
    }
    uint32_t chunks;
    std::memcpy(&chunks, rec.data() + off, 4);
    if (e[1] == 2) {
      // Entry points that lie: one bit off, out of order, past the chunk (the first chunk's).
      for (uint32_t k = 0; k < 3; ++k) {
        for (uint32_t delta : {1u, 0xffffffffu, 0x80000000u}) {
          std::vector<uint8_t> f = rec;
          uint32_t v;
          std::memcpy(&v, f.data() + off + table_at + 8 * chunks + 4 * k, 4);
          v += delta;
          std::memcpy(f.data() + off + table_at + 8 * chunks + 4 * k, &v, 4);
          Reseal(f);
          Expect("entry point lie", f, cal, expected, "*");
        }
      }
    }
    // Garbage DEFLATE data (or entry points) with intact framing.
    std::vector<uint8_t> f = rec;
    for (size_t b = off + table_at + 8 * chunks; b < off + table_at + 8 * chunks + 64 && b < f.size(); ++b) f[b] = 0xff;
    Reseal(f);
    Expect("garbage deflate", f, cal, expected, "*");
  }
  {
    std::vector<uint8_t> f = rec;
    const uint64_t huge = uint64_t{1} << 50;
    std::memcpy(f.data() + 64, &huge, 8);
    Reseal(f);
    Expect("huge record_bytes", f, cal, expected, "ERR_KVTC_RECORD_TRUNCATED");
    f = rec;
    const uint32_t many = 0xffffffffu;
    std::memcpy(f.data() + 44, &many, 4);
    Reseal(f);
    Expect("huge token count", f, cal, expected, "*");
  }
}

int main() {
  const uint32_t layers = 2, heads = 2, dim = 8, p = layers * heads * dim, tokens = 300;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> samples(2000 * p);
  for (float& v : samples) v = normal(rng);
  PcaResult pca = FitPca(samples.data(), 2000, p, p, 2, 4, 1);
  Calibration cal;
  cal.layers = layers;
  cal.kv_heads = heads;
  cal.head_dim = dim;
  cal.rope.rotary_dim = dim;
  cal.id.fill(0xab);
  cal.model_fingerprint.fill(0xcd);
  cal.keys = {pca.mean, pca.basis, p};
  cal.values = cal.keys;
  std::vector<float> proj(2000 * p);
  std::vector<float> centred = samples;
  Project(centred.data(), 2000, cal.keys, p, proj.data());
  DpResult dp = AllocateBits(proj.data(), 2000, p, {16 * p / 4});
  cal.plans.push_back({dp.plans[0], dp.plans[0]});
  ValidateCalibration(cal);

  std::vector<float> kv(static_cast<size_t>(tokens) * p);
  for (float& v : kv) v = normal(rng);
  EncodeJob job;
  job.keys = reinterpret_cast<const uint8_t*>(kv.data());
  job.values = job.keys;
  job.tokens = tokens;
  job.chunk_bytes = 512;  // several chunks
  job.window_tokens = 16;
  const uint64_t expected = 2ull * tokens * p * 4;
  FuzzRecord(Encode(cal, job), cal, expected);
  job.entry_stride = 64;  // indexed sections (entropy.h), as the CUDA backend writes them
  const std::vector<uint8_t> indexed = Encode(cal, job);
  KVTC_CHECK(indexed[kHeaderBytes + kSectionEntryBytes * 2 + 1] == 2, kInternal, "expected an indexed section");
  FuzzRecord(indexed, cal, expected);
  std::printf("decode_check: %d cases over a plain and an indexed record, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
