#include "kvtc/format.h"

#include <algorithm>
#include <cstring>

#include "kvtc/crc32c.h"
#include "kvtc/error.h"

namespace kvtc {
namespace {

template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

size_t HeaderBytes(size_t sections) { return kHeaderBytes + kSectionEntryBytes * sections; }

void WriteHeader(const RecordHeader& h, uint8_t* out) {
  const size_t n = HeaderBytes(h.sections.size());
  std::memset(out, 0, n);
  std::memcpy(out, kRecordMagic, 4);
  Put<uint16_t>(out + 4, h.format_version);
  Put<uint16_t>(out + 6, static_cast<uint16_t>(n));
  std::memcpy(out + 8, h.calibration_id.data(), 16);
  std::memcpy(out + 24, h.model_fingerprint.data(), 16);
  Put<uint32_t>(out + 40, h.token_start);
  Put<uint32_t>(out + 44, h.token_count);
  Put<uint32_t>(out + 48, h.feature_dim);
  Put<uint16_t>(out + 52, h.plan_id);
  out[54] = static_cast<uint8_t>(h.kv_dtype);
  out[55] = static_cast<uint8_t>(h.sections.size());
  Put<uint32_t>(out + 56, h.sink_tokens);
  Put<uint32_t>(out + 60, h.window_tokens);
  Put<uint64_t>(out + 64, h.record_bytes);
  Put<uint32_t>(out + 72, h.deflate_chunk_bytes);
  for (size_t i = 0; i < h.sections.size(); ++i) {
    const Section& s = h.sections[i];
    uint8_t* e = out + kHeaderBytes + kSectionEntryBytes * i;
    e[0] = static_cast<uint8_t>(s.kind);
    e[1] = static_cast<uint8_t>(s.encoding);
    Put<uint32_t>(e + 4, s.token_offset);
    Put<uint32_t>(e + 8, s.token_count);
    Put<uint32_t>(e + 12, s.crc32c);
    Put<uint64_t>(e + 16, s.offset);
    Put<uint64_t>(e + 24, s.stored_bytes);
  }
  uint32_t crc = Crc32c(out, kHeaderCrcOffset);
  crc = Crc32c(out + kHeaderBytes, n - kHeaderBytes, crc);
  Put<uint32_t>(out + kHeaderCrcOffset, crc);
}

RecordHeader ReadHeader(const uint8_t* data, size_t size) {
  KVTC_CHECK(size > 0, kRecordEmpty, "record is empty (0 bytes)");
  KVTC_CHECK(size >= kHeaderBytes, kRecordTruncated,
             "record is " << size << " bytes, shorter than the " << kHeaderBytes << "-byte header");
  KVTC_CHECK(std::memcmp(data, kRecordMagic, 4) == 0, kRecordBadMagic, "record does not start with magic 'KVTC'");
  RecordHeader h;
  h.format_version = Get<uint16_t>(data + 4);
  KVTC_CHECK(h.format_version == kFormatVersion, kRecordVersion,
             "record format version " << h.format_version << " is not supported (this build reads "
                                      << kFormatVersion << ")");
  const size_t header_bytes = Get<uint16_t>(data + 6);
  const size_t sections = data[55];
  KVTC_CHECK(sections <= kMaxSections && header_bytes == HeaderBytes(sections), kRecordCorrupt,
             "record header declares " << sections << " sections and " << header_bytes << " header bytes");
  KVTC_CHECK(size >= header_bytes, kRecordTruncated,
             "record is " << size << " bytes, shorter than its " << header_bytes << "-byte header");
  uint32_t crc = Crc32c(data, kHeaderCrcOffset);
  crc = Crc32c(data + kHeaderBytes, header_bytes - kHeaderBytes, crc);
  KVTC_CHECK(crc == Get<uint32_t>(data + kHeaderCrcOffset), kRecordCorrupt, "record header CRC32C mismatch");

  std::memcpy(h.calibration_id.data(), data + 8, 16);
  std::memcpy(h.model_fingerprint.data(), data + 24, 16);
  h.token_start = Get<uint32_t>(data + 40);
  h.token_count = Get<uint32_t>(data + 44);
  h.feature_dim = Get<uint32_t>(data + 48);
  h.plan_id = Get<uint16_t>(data + 52);
  KVTC_CHECK(data[54] <= 2, kRecordCorrupt, "record kv_dtype " << int{data[54]} << " is unknown");
  h.kv_dtype = static_cast<KvDtype>(data[54]);
  h.sink_tokens = Get<uint32_t>(data + 56);
  h.window_tokens = Get<uint32_t>(data + 60);
  h.record_bytes = Get<uint64_t>(data + 64);
  h.deflate_chunk_bytes = Get<uint32_t>(data + 72);
  KVTC_CHECK(h.record_bytes <= size, kRecordTruncated,
             "record declares " << h.record_bytes << " bytes but only " << size << " were given");
  KVTC_CHECK(h.record_bytes == size, kRecordLength,
             "record declares " << h.record_bytes << " bytes but " << size << " were given");
  KVTC_CHECK(static_cast<uint64_t>(h.sink_tokens) + h.window_tokens <= h.token_count, kRecordCorrupt,
             "record sink and window tokens exceed its token count");

  uint64_t keys_covered = 0, values_covered = 0;
  for (size_t i = 0; i < sections; ++i) {
    const uint8_t* e = data + kHeaderBytes + kSectionEntryBytes * i;
    Section s{};
    KVTC_CHECK(e[0] >= 1 && e[0] <= 4 && e[1] <= 2, kRecordCorrupt, "section " << i << " has an unknown kind or encoding");
    s.kind = static_cast<SectionKind>(e[0]);
    s.encoding = static_cast<SectionEncoding>(e[1]);
    s.token_offset = Get<uint32_t>(e + 4);
    s.token_count = Get<uint32_t>(e + 8);
    s.crc32c = Get<uint32_t>(e + 12);
    s.offset = Get<uint64_t>(e + 16);
    s.stored_bytes = Get<uint64_t>(e + 24);
    KVTC_CHECK(s.offset >= header_bytes && s.offset <= size && s.stored_bytes <= size - s.offset, kRecordLength,
               "section " << i << " (offset " << s.offset << ", " << s.stored_bytes
                          << " bytes) lies outside the " << size << "-byte record");
    KVTC_CHECK(s.token_count > 0 && static_cast<uint64_t>(s.token_offset) + s.token_count <= h.token_count,
               kRecordCorrupt, "section " << i << " covers tokens outside the record");
    const bool keys = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kCodedKeys;
    (keys ? keys_covered : values_covered) += s.token_count;
    h.sections.push_back(s);
  }
  KVTC_CHECK(keys_covered == h.token_count && values_covered == h.token_count, kRecordCorrupt,
             "record sections do not cover its " << h.token_count << " tokens exactly once");
  // Same total per stream is not enough: each stream is laid out as the format says, a raw head of
  // sink_tokens tokens, a coded middle and a raw tail of window_tokens tokens, each present when it
  // has tokens. (Tiling alone let a stream hold, say, two coded sections: no encoder writes them, the
  // CPU decoder took them and the CUDA decoder, which keeps one coded section's reconstruction per
  // stream, did not.)
  struct Part {
    bool coded;
    uint32_t first, count;
  };
  const uint32_t middle = h.token_count - h.sink_tokens - h.window_tokens;
  std::vector<Part> layout;
  if (h.sink_tokens) layout.push_back({false, 0, h.sink_tokens});
  if (middle) layout.push_back({true, h.sink_tokens, middle});
  if (h.window_tokens) layout.push_back({false, h.sink_tokens + middle, h.window_tokens});
  for (int keys = 1; keys >= 0; --keys) {
    std::vector<const Section*> stream;
    for (const Section& s : h.sections) {
      const bool is_keys = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kCodedKeys;
      if (is_keys == (keys == 1)) stream.push_back(&s);
    }
    std::sort(stream.begin(), stream.end(),
              [](const Section* a, const Section* b) { return a->token_offset < b->token_offset; });
    bool as_declared = stream.size() == layout.size();
    for (size_t i = 0; as_declared && i < layout.size(); ++i) {
      const bool coded = stream[i]->kind == SectionKind::kCodedKeys || stream[i]->kind == SectionKind::kCodedValues;
      as_declared = coded == layout[i].coded && stream[i]->token_offset == layout[i].first &&
                    stream[i]->token_count == layout[i].count;
    }
    KVTC_CHECK(as_declared, kRecordCorrupt,
               "record's " << (keys ? "keys" : "values") << " sections are not a raw head of " << h.sink_tokens
                           << " tokens, a coded middle of " << middle << " and a raw tail of " << h.window_tokens);
  }
  return h;
}

void VerifySections(const RecordHeader& header, const uint8_t* data) {
  for (size_t i = 0; i < header.sections.size(); ++i) {
    const Section& s = header.sections[i];
    KVTC_CHECK(Crc32cParallel(data + s.offset, s.stored_bytes) == s.crc32c, kRecordCorrupt,
               "section " << i << " CRC32C mismatch");
  }
}

}  // namespace kvtc
