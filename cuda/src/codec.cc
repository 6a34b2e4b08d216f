#include "kvtc/codec.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kvtc/crc32c.h"
#include "kvtc/entropy.h"
#include "kvtc/error.h"
#include "kvtc/numeric.h"

namespace kvtc {
namespace {

bool AllFinite(const std::vector<float>& v) {
  bool ok = true;
#pragma omp parallel for reduction(&& : ok)
  for (size_t i = 0; i < v.size(); ++i) ok = ok && std::isfinite(v[i]);
  return ok;
}

void ValidateStream(const StreamBasis& s, uint32_t p, const char* name) {
  KVTC_CHECK(s.mean.size() == p, kCalibrationInvalid,
             name << " mean has " << s.mean.size() << " entries, expected feature_dim " << p);
  KVTC_CHECK(s.rank <= p && s.basis.size() == static_cast<size_t>(p) * s.rank, kCalibrationInvalid,
             name << " basis has " << s.basis.size() << " entries, expected " << p << " x " << s.rank);
  KVTC_CHECK(AllFinite(s.mean) && AllFinite(s.basis), kCalibrationInvalid, name << " mean or basis is not finite");
}

struct Span {
  uint32_t first, count;
};

}  // namespace

void ValidateCalibration(const Calibration& c) {
  const uint64_t p = static_cast<uint64_t>(c.layers) * c.kv_heads * c.head_dim;
  KVTC_CHECK(p > 0 && p <= (1u << 24), kCalibrationInvalid,
             "calibration shape " << c.layers << " x " << c.kv_heads << " x " << c.head_dim << " is invalid");
  ValidateRope(c.rope, static_cast<int>(c.head_dim));
  ValidateStream(c.keys, static_cast<uint32_t>(p), "keys");
  ValidateStream(c.values, static_cast<uint32_t>(p), "values");
  KVTC_CHECK(!c.plans.empty() && c.plans.size() <= 65535, kCalibrationInvalid,
             "calibration has " << c.plans.size() << " plans, expected 1..65535");
  for (const PlanPair& pp : c.plans) {
    ValidatePlan(pp.keys, c.keys.rank);
    ValidatePlan(pp.values, c.values.rank);
  }
}

void ToFloat(const uint8_t* src, KvDtype dtype, size_t count, float* dst) {
  if (dtype == KvDtype::kFloat32) {
    std::memcpy(dst, src, count * 4);
    return;
  }
  const bool half = dtype == KvDtype::kFloat16;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; ++i) {
    uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    dst[i] = half ? HalfToFloat(v) : Bf16ToFloat(v);
  }
}

void FromFloat(const float* src, size_t count, KvDtype dtype, uint8_t* dst) {
  if (dtype == KvDtype::kFloat32) {
    std::memcpy(dst, src, count * 4);
    return;
  }
  const bool half = dtype == KvDtype::kFloat16;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; ++i) {
    const uint16_t v = half ? FloatToHalf(src[i]) : FloatToBf16(src[i]);
    std::memcpy(dst + 2 * i, &v, 2);
  }
}

namespace {

// Rounds n values spaced `stride` apart to `precision`; fp8 scales them by their absolute maximum
// first (to e4m3's 448), as a per-token or per-basis-vector fp8 GEMM operand would be.
void RoundVector(float* v, int64_t n, int64_t stride, Projection precision) {
  if (precision == Projection::kBf16) {
    for (int64_t i = 0; i < n; ++i) v[i * stride] = Bf16ToFloat(FloatToBf16(v[i * stride]));
    return;
  }
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(v[i * stride]));
  if (amax == 0) return;
  const float scale = amax / kFp8E4m3Max;
  for (int64_t i = 0; i < n; ++i) v[i * stride] = Fp8E4m3ToFloat(FloatToFp8E4m3(v[i * stride] / scale)) * scale;
}

// Each of `rows` rows of `cols` values (row-major, leading dimension ld) rounded to `precision`.
void RoundRows(float* a, int64_t rows, int64_t cols, int64_t ld, Projection precision) {
  if (precision == Projection::kFp32) return;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) RoundVector(a + r * ld, cols, 1, precision);
}

// The basis as the GEMM's operand: the calibration's own (leading dimension b.rank) in fp32, else
// a copy of its first `rank` columns rounded to `precision` ([p, rank]); fp8 scales each vector
// along the dimension the GEMM reduces: a column (over features) to project, a row (over
// components) to reconstruct.
struct BasisOperand {
  std::vector<float> rounded;
  const float* data;
  int ld;
  BasisOperand(const StreamBasis& b, uint32_t rank, Projection precision, bool reconstruct)
      : data(b.basis.data()), ld(static_cast<int>(b.rank)) {
    if (precision == Projection::kFp32) return;
    const int64_t p = static_cast<int64_t>(b.mean.size());
    rounded.resize(static_cast<size_t>(p) * rank);
    for (int64_t i = 0; i < p; ++i)
      std::memcpy(rounded.data() + i * rank, b.basis.data() + i * b.rank, rank * sizeof(float));
    if (reconstruct) {
      RoundRows(rounded.data(), p, rank, rank, precision);
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < rank; ++c) RoundVector(rounded.data() + c, p, rank, precision);
    }
    data = rounded.data();
    ld = static_cast<int>(rank);
  }
};

}  // namespace

void Project(float* x, int64_t tokens, const StreamBasis& b, uint32_t rank, float* d, Projection precision) {
  const int64_t p = static_cast<int64_t>(b.mean.size());
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = x + t * p;
    for (int64_t j = 0; j < p; ++j) row[j] -= b.mean[j];
  }
  if (rank == 0 || tokens == 0) return;
  RoundRows(x, tokens, p, p, precision);
  const BasisOperand basis(b, rank, precision, /*reconstruct=*/false);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(tokens), static_cast<int>(rank),
              static_cast<int>(p), 1.0f, x, static_cast<int>(p), basis.data, basis.ld, 0.0f, d, static_cast<int>(rank));
}

void Reconstruct(float* d, int64_t tokens, const StreamBasis& b, uint32_t rank, float* x, Projection precision) {
  const int64_t p = static_cast<int64_t>(b.mean.size());
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) std::memcpy(x + t * p, b.mean.data(), p * sizeof(float));
  if (rank == 0 || tokens == 0) return;
  RoundRows(d, tokens, rank, rank, precision);
  const BasisOperand basis(b, rank, precision, /*reconstruct=*/true);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(p),
              static_cast<int>(rank), 1.0f, d, static_cast<int>(rank), basis.data, basis.ld, 1.0f, x, static_cast<int>(p));
}

std::vector<uint8_t> Encode(const Calibration& c, const EncodeJob& job) {
  const uint32_t p = c.feature_dim();
  KVTC_CHECK(job.tokens > 0, kInvalidArgument, "Expected at least one token to encode but received 0");
  KVTC_CHECK(job.keys && job.values, kInvalidArgument, "Expected keys and values buffers");
  KVTC_CHECK(job.plan_id < c.plans.size(), kPlanUnknown,
             "plan " << job.plan_id << " does not exist; the calibration has " << c.plans.size());
  KVTC_CHECK(static_cast<uint64_t>(job.token_start) + job.tokens <= UINT32_MAX, kInvalidArgument,
             "token range exceeds 2^32 positions");
  CheckDeflateLevel(job.deflate_level);
  const PlanPair& plan = c.plans[job.plan_id];
  const size_t elem = DtypeBytes(job.dtype);
  const size_t row_bytes = static_cast<size_t>(p) * elem;

  const uint32_t sinks =
      job.token_start < job.sink_tokens ? std::min(job.sink_tokens - job.token_start, job.tokens) : 0;
  const uint32_t window = std::min(job.window_tokens, job.tokens - sinks);
  const uint32_t middle = job.tokens - sinks - window;

  struct Pending {
    Section section;
    std::vector<uint8_t> owned;  // coded sections
    const uint8_t* raw = nullptr;  // raw sections point into the job
  };
  std::vector<Pending> pending;
  auto add_raw = [&](SectionKind kind, const uint8_t* base, Span span) {
    if (span.count == 0) return;
    Pending pe{};
    pe.section = {kind, SectionEncoding::kRaw, span.first, span.count, 0, 0, span.count * row_bytes};
    pe.raw = base + span.first * row_bytes;
    pending.push_back(std::move(pe));
  };
  auto add_coded = [&](SectionKind kind, const uint8_t* base, const StreamBasis& basis, const Plan& pl, bool keys) {
    if (middle == 0) return;
    std::vector<float> x(static_cast<size_t>(middle) * p);
    ToFloat(base + sinks * row_bytes, job.dtype, x.size(), x.data());
    if (keys) {
      RopeRotate(x.data(), middle, static_cast<int64_t>(c.layers) * c.kv_heads, static_cast<int>(c.head_dim),
                 static_cast<int64_t>(job.token_start) + sinks, c.rope, /*inverse=*/true);
    }
    std::vector<float> d(static_cast<size_t>(middle) * pl.rank);
    Project(x.data(), middle, basis, pl.rank, d.data(), job.projection);
    std::vector<float>().swap(x);
    std::vector<uint8_t> payload(PayloadBytes(pl, middle));
    Quantize(d.data(), pl.rank, middle, pl, payload.data());
    Pending pe{};
    const bool indexed = job.entry_stride > 0;
    pe.owned = indexed ? DeflateChunksIndexed(payload.data(), payload.size(), job.chunk_bytes, job.entry_stride,
                                              job.deflate_level)
                       : DeflateChunks(payload.data(), payload.size(), job.chunk_bytes, job.deflate_level);
    pe.section = {kind, indexed ? SectionEncoding::kDeflateIndexed : SectionEncoding::kDeflateChunks, sinks, middle, 0,
                  0, pe.owned.size()};
    pending.push_back(std::move(pe));
  };

  add_raw(SectionKind::kRawKeys, job.keys, {0, sinks});
  add_raw(SectionKind::kRawValues, job.values, {0, sinks});
  add_coded(SectionKind::kCodedKeys, job.keys, c.keys, plan.keys, true);
  add_coded(SectionKind::kCodedValues, job.values, c.values, plan.values, false);
  add_raw(SectionKind::kRawKeys, job.keys, {sinks + middle, window});
  add_raw(SectionKind::kRawValues, job.values, {sinks + middle, window});

  RecordHeader h;
  h.calibration_id = c.id;
  h.model_fingerprint = c.model_fingerprint;
  h.token_start = job.token_start;
  h.token_count = job.tokens;
  h.feature_dim = p;
  h.plan_id = job.plan_id;
  h.kv_dtype = job.dtype;
  h.sink_tokens = sinks;
  h.window_tokens = window;
  h.deflate_chunk_bytes = static_cast<uint32_t>(job.chunk_bytes);
  uint64_t offset = HeaderBytes(pending.size());
  for (Pending& pe : pending) {
    pe.section.offset = offset;
    const uint8_t* bytes = pe.raw ? pe.raw : pe.owned.data();
    pe.section.crc32c = Crc32cParallel(bytes, pe.section.stored_bytes);
    offset += pe.section.stored_bytes;
    h.sections.push_back(pe.section);
  }
  h.record_bytes = offset;
  std::vector<uint8_t> record(offset);
  WriteHeader(h, record.data());
  for (const Pending& pe : pending) {
    const uint8_t* bytes = pe.raw ? pe.raw : pe.owned.data();
    std::memcpy(record.data() + pe.section.offset, bytes, pe.section.stored_bytes);
  }
  return record;
}

DecodeResult Decode(const Calibration& c, const uint8_t* record, size_t size, uint64_t expected_bytes,
                    Projection projection) {
  DecodeResult out;
  out.header = ReadHeader(record, size);
  const RecordHeader& h = out.header;
  KVTC_CHECK(h.calibration_id == c.id, kCalibrationMismatch,
             "record was written with another calibration; it cannot be decoded with this one");
  KVTC_CHECK(h.model_fingerprint == c.model_fingerprint, kModelMismatch, "record was written for another model");
  KVTC_CHECK(h.feature_dim == c.feature_dim(), kRecordCorrupt,
             "record feature_dim " << h.feature_dim << " differs from the calibration's " << c.feature_dim());
  KVTC_CHECK(h.plan_id < c.plans.size(), kPlanUnknown,
             "record names plan " << h.plan_id << "; the calibration has " << c.plans.size());
  const size_t elem = DtypeBytes(h.kv_dtype);
  const size_t row_bytes = static_cast<size_t>(h.feature_dim) * elem;
  const uint64_t decoded = 2ull * h.token_count * row_bytes;
  KVTC_CHECK(decoded == expected_bytes, kRecordSizeMismatch,
             "record decodes to " << decoded << " bytes (" << h.token_count << " tokens), the caller expects "
                                  << expected_bytes);
  for (const Section& s : h.sections) {
    const bool raw = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kRawValues;
    KVTC_CHECK(raw == (s.encoding == SectionEncoding::kRaw), kRecordCorrupt, "section encoding does not match its kind");
    KVTC_CHECK(!raw || s.stored_bytes == s.token_count * row_bytes, kRecordLength,
               "raw section holds " << s.stored_bytes << " bytes for " << s.token_count << " tokens");
  }
  VerifySections(h, record);

  out.keys.resize(h.token_count * row_bytes);
  out.values.resize(h.token_count * row_bytes);
  const PlanPair& plan = c.plans[h.plan_id];
  for (const Section& s : h.sections) {
    const bool keys = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kCodedKeys;
    uint8_t* dst = (keys ? out.keys : out.values).data() + s.token_offset * row_bytes;
    if (s.encoding == SectionEncoding::kRaw) {
      std::memcpy(dst, record + s.offset, s.stored_bytes);
      continue;
    }
    const Plan& pl = keys ? plan.keys : plan.values;
    const StreamBasis& basis = keys ? c.keys : c.values;
    std::vector<uint8_t> payload(PayloadBytes(pl, s.token_count));
    InflateChunks(record + s.offset, s.stored_bytes, s.encoding, payload.data(), payload.size());
    std::vector<float> d(static_cast<size_t>(s.token_count) * pl.rank);
    Dequantize(payload.data(), s.token_count, pl, d.data(), pl.rank);
    std::vector<float> x(static_cast<size_t>(s.token_count) * h.feature_dim);
    Reconstruct(d.data(), s.token_count, basis, pl.rank, x.data(), projection);
    if (keys) {
      RopeRotate(x.data(), s.token_count, static_cast<int64_t>(c.layers) * c.kv_heads, static_cast<int>(c.head_dim),
                 static_cast<int64_t>(h.token_start) + s.token_offset, c.rope, /*inverse=*/false);
    }
    FromFloat(x.data(), x.size(), h.kv_dtype, dst);
  }
  return out;
}

}  // namespace kvtc
