// The kvtc record format, version 1: the one place in code where it is defined (docs/format.md
// describes the same bytes). All integers are little-endian. One record holds one chunk of a
// sequence: the keys and values of `token_count` consecutive tokens starting at absolute position
// `token_start`, for every layer and KV head (feature_dim = layers * kv_heads * head_dim).
//
//   offset size  field
//   0      4     magic "KVTC"
//   4      2     format_version (1)
//   6      2     header_bytes: 96 + 32 * section_count (the fixed header plus the section table)
//   8      16    calibration_id (the calibration the coded sections need)
//   24     16    model_fingerprint
//   40     4     token_start
//   44     4     token_count
//   48     4     feature_dim
//   52     2     plan_id (index of the plan in the calibration)
//   54     1     kv_dtype: 0 float32, 1 float16, 2 bfloat16 (raw sections and decoded output)
//   55     1     section_count (<= 6)
//   56     4     sink_tokens (raw tokens at the start)
//   60     4     window_tokens (raw tokens at the end)
//   64     8     record_bytes (total size of the record)
//   72     4     deflate_chunk_bytes used by the encoder (informational)
//   76     16    reserved, zero
//   92     4     header_crc32c over bytes [0, 92) and the section table
//   96     32*n  section table, entries:
//                  u8 kind (1 raw keys, 2 raw values, 3 coded keys, 4 coded values)
//                  u8 encoding (0 raw, 1 DEFLATE chunks, 2 indexed DEFLATE chunks, see entropy.h)
//                  u16 reserved (0)
//                  u32 token_offset (relative to token_start)
//                  u32 token_count
//                  u32 crc32c of the section's stored bytes
//                  u64 offset (from the record start)
//                  u64 stored_bytes
//
// Raw sections hold [tokens, feature_dim] elements of kv_dtype (keys with RoPE, as given).
// Coded sections hold the entropy-coded quantization payload of quantize.h for the plan's
// stream (keys or values). Sections tile the token range: raw head (sinks), coded middle, raw
// tail (newest window), each for keys and for values.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvtc {

constexpr char kRecordMagic[4] = {'K', 'V', 'T', 'C'};
constexpr uint16_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 96;
constexpr size_t kSectionEntryBytes = 32;
constexpr size_t kMaxSections = 6;
constexpr size_t kHeaderCrcOffset = 92;

enum class KvDtype : uint8_t { kFloat32 = 0, kFloat16 = 1, kBfloat16 = 2 };
inline size_t DtypeBytes(KvDtype d) { return d == KvDtype::kFloat32 ? 4 : 2; }

enum class SectionKind : uint8_t { kRawKeys = 1, kRawValues = 2, kCodedKeys = 3, kCodedValues = 4 };
enum class SectionEncoding : uint8_t { kRaw = 0, kDeflateChunks = 1, kDeflateIndexed = 2 };
inline bool IsCoded(SectionEncoding e) { return e != SectionEncoding::kRaw; }

using Id16 = std::array<uint8_t, 16>;

struct Section {
  SectionKind kind;
  SectionEncoding encoding;
  uint32_t token_offset;
  uint32_t token_count;
  uint32_t crc32c;
  uint64_t offset;
  uint64_t stored_bytes;
};

struct RecordHeader {
  uint16_t format_version = kFormatVersion;
  Id16 calibration_id{};
  Id16 model_fingerprint{};
  uint32_t token_start = 0;
  uint32_t token_count = 0;
  uint32_t feature_dim = 0;
  uint16_t plan_id = 0;
  KvDtype kv_dtype = KvDtype::kFloat32;
  uint32_t sink_tokens = 0;
  uint32_t window_tokens = 0;
  uint64_t record_bytes = 0;
  uint32_t deflate_chunk_bytes = 0;
  std::vector<Section> sections;
};

// Serializes header and section table (computing the header CRC) into out[0, header_bytes).
void WriteHeader(const RecordHeader& header, uint8_t* out);
size_t HeaderBytes(size_t sections);

// Parses and checks what can be checked without a calibration: length, magic, version, header
// CRC, record_bytes == size, every section inside the record, sections tiling the token range.
// Never reads outside [data, data + size).
RecordHeader ReadHeader(const uint8_t* data, size_t size);

// Checks each section's CRC32C.
void VerifySections(const RecordHeader& header, const uint8_t* data);

}  // namespace kvtc
