// CUDA backend of the kvtc codec. Same record bytes as the CPU backend (format.h, quantize.h,
// entropy.h); a record written here inflates on the CPU and the reverse.
#include "kvtc/cuda_codec.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <nvcomp/deflate.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "cuda_chunk_kernels.cuh"
#include "cuda_common.cuh"
#include "cuda_fp8.cuh"
#include "cuda_fused_restore.h"
#include "cuda_gemm.cuh"
#include "cuda_quantize_kernels.cuh"
#include "cuda_row_kernels.cuh"
#include "cuda_rows.cuh"
#include "kvtc/crc32c.h"
#include "kvtc/cuda_huffman.h"
#include "kvtc/error.h"
#include "kvtc/host_copy.h"
#include "kvtc/record_memory.h"

namespace kvtc::cuda {

#define KVTC_NVCOMP_CALL(expr)                                                                        \
  do {                                                                                                \
    nvcompStatus_t kvtc_n_ = (expr);                                                                  \
    KVTC_CHECK(kvtc_n_ == nvcompSuccess, kDeflate, "nvCOMP status " << int(kvtc_n_) << " at " #expr); \
  } while (0)

namespace {

// The A/B switches (KVTC_ROW_KERNELS and the like): the index in `choices` of environment variable
// `name`'s value, or -1 when it is unset or empty; any other value is kInvalidArgument.
int EnvChoice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  int i = 0;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    ++i;
  }
  std::string list;
  i = 0;
  for (const char* c : choices) {
    list += i == 0 ? "" : i + 1 == int(choices.size()) ? " or " : ", ";
    list += c;
    ++i;
  }
  KVTC_CHECK(false, kInvalidArgument, name << " must be " << list);
  return -1;
}

// A token count from environment variable `name` (unset or empty: `fallback`), up to 2^24.
uint32_t EnvTokens(const char* name, uint32_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const unsigned long n = std::strtoul(v, &end, 10);
  KVTC_CHECK(*end == 0 && n <= (1u << 24), kInvalidArgument,
             name << " must be a token count up to 2^24 but is '" << v << "'");
  return uint32_t(n);
}

// KVTC_SMALL_GROUPS=tiles (default) or threads: which small-group kernels run (A/B runs).
bool SmallGroupTiles() {
  static const bool tiles = EnvChoice("KVTC_SMALL_GROUPS", {"tiles", "threads"}) != 1;
  return tiles;
}

// ---- host helpers --------------------------------------------------------------------------

std::vector<GroupDesc> PlanDescs(const Plan& plan, int64_t tokens, bool kept_only) {
  std::vector<GroupDesc> out;
  uint64_t plane = 0;
  for (const Group& g : plan.groups) {
    const int bits = TypeBits(g.type);
    if (bits == 0 && kept_only) continue;
    out.push_back({g.start, g.size, uint32_t(bits), g.type == GroupType::kFp8 ? 1u : 0u, plane});
    if (bits) plane += uint64_t(tokens) * 4 + (uint64_t(tokens) * g.size * bits + 7) / 8;
  }
  return out;
}

// Groups of fewer than kSmallGroup components go to the thread-per-token kernels, larger ones to
// the warp-per-token ones. Reorders `groups` small first (plan order kept within each part) and
// returns how many are small.
constexpr uint32_t kSmallGroup = 32;
size_t SmallGroupsFirst(std::vector<GroupDesc>& groups) {
  const auto end = std::stable_partition(groups.begin(), groups.end(),
                                         [](const GroupDesc& g) { return g.size < kSmallGroup; });
  return size_t(end - groups.begin());
}

size_t Elem(KvDtype d) { return DtypeBytes(d); }

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;   // the job's compute
  // An encode's read back (device-to-host copies, paged raw rows' gathers) of the keys runs here
  // while the values are still being coded on `stream`; events order the two.
  cudaStream_t copy = nullptr;
  cudaEvent_t keys_coded[2] = {}, values_coded[2] = {};  // per pipeline slot
  // A decode's host-to-device copies run on `copy` too, section by section as the host stages
  // them, while `stream` already inflates and reconstructs the keys. Per pipeline slot: the
  // sections copied so far are on the device (staged, recorded again after each), both streams
  // are reconstructed into scratch (reconstructed), the slot's coded image may be overwritten
  // (inflated: its chunks are inflated), its raw rows may be overwritten (slot_free: written).
  cudaEvent_t staged[2] = {}, reconstructed[2] = {}, inflated[2] = {}, slot_free[2] = {};
  cublasHandle_t cublas = nullptr;
  LtHandle lt;  // the projection's GEMMs (cuBLASLt), set up on first use
  // An encode round's read backs, one event each (created as needed; reused every round).
  std::vector<cudaEvent_t> reads;
  cudaEvent_t ReadEvent(size_t k) {
    while (reads.size() <= k) {
      cudaEvent_t e = nullptr;
      KVTC_CUDA_CALL(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      reads.push_back(e);
    }
    return reads[k];
  }
  Context() {
    KVTC_CUDA_CALL(cudaGetDevice(&device));
    KVTC_CUDA_CALL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    // The copy stream's kernels (a paged encode's raw gathers) are short and gate a
    // read back the host waits for: at the highest priority they run as soon as blocks of the
    // job stream's kernels retire, instead of after them (measured on an H200, 2026-11-30: an
    // 8B-shape encode's keys read back waited 4.1 ms behind the values' kernels).
    int least = 0, greatest = 0;
    KVTC_CUDA_CALL(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    KVTC_CUDA_CALL(cudaStreamCreateWithPriority(&copy, cudaStreamNonBlocking, greatest));
    for (cudaEvent_t* e : Events()) KVTC_CUDA_CALL(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    KVTC_CUBLAS_CALL(cublasCreate(&cublas));
    KVTC_CUBLAS_CALL(cublasSetStream(cublas, stream));
  }
  std::vector<cudaEvent_t*> Events() {
    std::vector<cudaEvent_t*> all;
    for (int i = 0; i < 2; ++i)
      for (cudaEvent_t* e : {&keys_coded[i], &values_coded[i], &staged[i], &reconstructed[i], &inflated[i], &slot_free[i]})
        all.push_back(e);
    return all;
  }
  ~Context() {
    cudaSetDevice(device);  // a thread's contexts of every device end together
    if (cublas) cublasDestroy(cublas);
    for (cudaEvent_t* e : Events())
      if (*e) cudaEventDestroy(*e);
    for (cudaEvent_t e : reads) cudaEventDestroy(e);
    if (copy) cudaStreamDestroy(copy);
    if (stream) cudaStreamDestroy(stream);
  }
};

// One context per host thread and device (libuv pool threads run jobs concurrently, one stream
// each), for the current device.
Context& ThreadContext() { return OfCurrentDevice<Context>(); }

// KVTC_CUDA_PROFILE=1 prints, per encode/decode, the device timeline between marks (events on the
// job's stream) and the host wall time between laps, to stderr.
struct Profiler {
  using Clock = std::chrono::steady_clock;
  bool on = false;
  cudaStream_t stream = nullptr;
  std::vector<std::pair<const char*, cudaEvent_t>> marks;
  std::vector<std::pair<const char*, Clock::time_point>> laps;
  explicit Profiler(cudaStream_t s) : stream(s) {
    static const bool enabled = std::getenv("KVTC_CUDA_PROFILE") != nullptr;
    on = enabled;
    mark("start");
    lap("start");
  }
  ~Profiler() {
    for (auto& m : marks) cudaEventDestroy(m.second);
  }
  void mark(const char* name) {
    if (!on) return;
    cudaEvent_t e;
    cudaEventCreate(&e);
    cudaEventRecord(e, stream);
    marks.emplace_back(name, e);
  }
  void lap(const char* name) {
    if (on) laps.emplace_back(name, Clock::now());
  }
  void report(const char* what) {
    if (!on) return;
    std::string line = std::string("[kvtc-profile] ") + what + " device:";
    if (marks.size() >= 2) cudaEventSynchronize(marks.back().second);
    for (size_t i = 1; i < marks.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, marks[i - 1].second, marks[i].second);
      char buf[64];
      std::snprintf(buf, sizeof(buf), " %s %.3f", marks[i].first, ms);
      line += buf;
    }
    line += " | host:";
    for (size_t i = 1; i < laps.size(); ++i) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), " %s %.3f", laps[i].first,
                    std::chrono::duration<double, std::milli>(laps[i].second - laps[i - 1].second).count());
      line += buf;
    }
    std::fprintf(stderr, "%s ms\n", line.c_str());
    for (auto& m : marks) cudaEventDestroy(m.second);
    marks.clear();
    laps.clear();
  }
};

int NvcompAlgorithm() {
  static const int algo = [] {
    const char* v = std::getenv("KVTC_NVCOMP_ALGO");
    return v ? std::atoi(v) : 1;
  }();
  return algo;
}

// Runs per chunk of the indexed sections this encoder writes (DefaultEntryStride): 32, one per lane
// of the inflating warp; KVTC_ENTRY_RUNS=64 (an A/B knob, run u) gives each lane two runs, which it
// decodes at once (DecodeLiteralRuns in cuda_huffman.h), at 4 bytes of index more per run. Any
// stride decodes: a record carries its own.
uint32_t EntryRuns() {
  static const uint32_t runs = EnvChoice("KVTC_ENTRY_RUNS", {"32", "64"}) == 1 ? 64 : 32;
  return runs;
}

// KVTC_CUDA_ENTROPY=kvtc|nvcomp picks the DEFLATE coder of both directions: kvtc's own
// (cuda_huffman.h: literal-only dynamic Huffman encode, a warp-per-chunk inflater) or nvCOMP's
// batched DEFLATE. Unset: the faster one per direction, as measured on an H200 (smollm2 shape,
// 24 MiB payload per stream, 16 KiB chunks): encode kvtc (0.54 ms per stream against nvCOMP's
// ~7 ms), decode nvCOMP (its inflate kernel 2.2 ms against kvtc's one-warp-per-chunk 2.7 ms).
enum class EntropyCoder { kKvtc, kNvcomp };
constexpr EntropyCoder kDefaultEncodeCoder = EntropyCoder::kKvtc;
constexpr EntropyCoder kDefaultDecodeCoder = EntropyCoder::kNvcomp;
EntropyCoder Coder(bool encode) {
  static const int forced = EnvChoice("KVTC_CUDA_ENTROPY", {"kvtc", "nvcomp"});  // EntropyCoder's order
  if (forced >= 0) return EntropyCoder(forced);
  return encode ? kDefaultEncodeCoder : kDefaultDecodeCoder;
}

inline unsigned Blocks(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// Grid of PrepareKernel / FinishKernel: x over token groups of kRowsPerThread (x has room for
// 2^31 blocks), y over the features of a row in kThreads-wide blocks.
inline dim3 RowGrid(int64_t tokens, int64_t features) {
  return dim3(unsigned((tokens + kRowsPerThread - 1) / kRowsPerThread), Blocks(features));
}

// The bf16 projection's GEMMs: D (fp32, or bf16 as d_type) = op_a(basis) X, through cuBLASLt with
// the plan cached per shape (cuda_gemm.cuh). KVTC_BF16_GEMM=gemmex sends them through cublasGemmEx
// instead (the path before cuBLASLt, kept for A/B runs; the bench's GEMM baseline always uses it).
void ProjectionGemm(Context& ctx, cublasOperation_t op_a, int m, int n, int k, const __nv_bfloat16* basis, int lda,
                    const __nv_bfloat16* x, int ldb, void* d, int ldd, cudaDataType_t d_type = CUDA_R_32F) {
  static const bool gemmex = EnvChoice("KVTC_BF16_GEMM", {"lt", "gemmex"}) == 1;
  if (!gemmex) return Bf16Gemm(ctx.lt, ctx.stream, op_a, m, n, k, basis, lda, x, ldb, d, ldd, d_type);
  const float one = 1.0f, zero = 0.0f;
  KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, op_a, CUBLAS_OP_N, m, n, k, &one, basis, CUDA_R_16BF, lda, x, CUDA_R_16BF,
                                ldb, &zero, d, d_type, ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Whether a bf16 cache's reconstruction may come out of the bf16 decode GEMM in bf16 rather than
// fp32 (KVTC_RECONSTRUCTION=bf16, the default, or fp32): half the bytes for the GEMM to write and
// the epilogue to read (call 20: the 8B 8K epilogues read 1.1 GB of fp32 per stream). It adds one
// bf16 rounding before the mean and (keys) the RoPE: about 2^-9 of each element, against a codec
// error in the percent. fp32 and fp16 caches keep the fp32 reconstruction.
bool Bf16Reconstruction(KvDtype cache_dtype) {
  static const bool allowed = EnvChoice("KVTC_RECONSTRUCTION", {"bf16", "fp32"}) != 1;
  return allowed && cache_dtype == KvDtype::kBfloat16;
}

}  // namespace

cudaStream_t JobStream() { return ThreadContext().stream; }

// Leading dimension of a [*, n] bf16/fp32 matrix for cuBLAS: n rounded up to 8 elements.
inline uint32_t PadLd(uint32_t n) { return (n + 7) / 8 * 8; }

// A basis as the fp8 projection's operands (cuda_fp8.cuh), for one stream and one plan rank r:
// the first r columns, each scaled over its features to project, and each feature's row of them
// scaled over its r components to reconstruct, as the CPU backend's fp8 rounding scales them.
// Built from the bf16 device basis (a value rounded twice, fp32 -> bf16 -> e4m3, lands at most
// one e4m3 step from a direct rounding, and only next to a rounding midpoint).
struct Fp8Basis {
  uint32_t ld = 0;                            // PadFp8(r)
  DeviceBuffer<__nv_fp8_e4m3> project;        // [ld, p]: column j / project_scale[j] (rows >= r zero)
  DeviceBuffer<float> project_scale;          // [ld]
  DeviceBuffer<__nv_fp8_e4m3> reconstruct;    // [p, ld]: row i's first r values / reconstruct_scale[i]
  DeviceBuffer<float> reconstruct_scale;      // [p]
};

class DeviceCalibration {
 public:
  int device = 0;
  DeviceBuffer<float> mean_keys, mean_values;
  DeviceBuffer<__nv_bfloat16> basis_keys, basis_values;
  DeviceBuffer<double> inv_freq;
  uint32_t rank_keys = 0, rank_values = 0;
  // Leading dimensions of the device bases: the rank rounded up to 8 (16-byte rows of bf16),
  // which cuBLAS needs for its tensor-core kernels (an odd rank measured 5.6x slower).
  uint32_t ld_keys = 0, ld_values = 0;
  int half = 0;

  // cos/sin for absolute positions [0, table_positions), computed once (in double) and grown on
  // demand: RoPE costs jobs one table read per element instead of trigonometry per token.
  const float2* RopeTable(int64_t end, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end > table_positions_) {
      int64_t n = std::max<int64_t>(end, 2 * table_positions_);
      n = std::max<int64_t>(n, 8192);
      DeviceBuffer<float2> grown(size_t(n) * half);
      RopeTableKernel<<<Blocks(n * half), kThreads, 0, stream>>>(inv_freq.ptr, half, 0, n, grown.ptr);
      KVTC_CUDA_CALL(cudaGetLastError());
      KVTC_CUDA_CALL(cudaStreamSynchronize(stream));
      std::swap(table_.ptr, grown.ptr);
      std::swap(table_.count, grown.count);
      table_positions_ = n;
    }
    return table_.ptr;
  }

  // The fp8 operands of stream `keys` at rank r (r > 0), built on first use on `stream`.
  const Fp8Basis& Fp8(bool keys, uint32_t r, int64_t p, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    std::unique_ptr<Fp8Basis>& slot = fp8_[{keys, r}];
    if (slot) return *slot;
    KVTC_CHECK(p % 16 == 0, kInvalidArgument,
               "the fp8 projection needs a feature dimension that is a multiple of 16, this calibration's is " << p);
    auto b = std::make_unique<Fp8Basis>();
    const __nv_bfloat16* basis = keys ? basis_keys.ptr : basis_values.ptr;
    const int64_t ld_in = keys ? ld_keys : ld_values;
    b->ld = PadFp8(r);
    b->project.resize(size_t(b->ld) * p);
    b->project_scale.resize(b->ld);
    b->reconstruct.resize(size_t(p) * b->ld);
    b->reconstruct_scale.resize(size_t(p));
    KVTC_CUDA_CALL(cudaMemsetAsync(b->project_scale.ptr, 0, b->ld * sizeof(float), stream));
    fp8::ColumnAmaxKernel<<<dim3(unsigned((r + 255) / 256), unsigned((p + 1023) / 1024)), 256, 0, stream>>>(
        basis, p, int(r), ld_in, b->project_scale.ptr);
    fp8::AmaxToScaleKernel<<<unsigned((b->ld + 255) / 256), 256, 0, stream>>>(b->project_scale.ptr, int(b->ld));
    fp8::TransposeKernel<<<dim3(unsigned((p + 31) / 32), unsigned((b->ld + 31) / 32)), dim3(32, 8), 0, stream>>>(
        basis, p, int(r), ld_in, b->project_scale.ptr, b->project.ptr, int(b->ld));
    fp8::RowsKernel<__nv_bfloat16><<<unsigned(p), fp8::kRowThreads, 0, stream>>>(
        basis, p, int(r), ld_in, b->reconstruct.ptr, b->ld, b->reconstruct_scale.ptr);
    KVTC_CUDA_CALL(cudaGetLastError());
    KVTC_CUDA_CALL(cudaStreamSynchronize(stream));
    slot = std::move(b);
    return *slot;
  }

 private:
  std::mutex mu_;
  DeviceBuffer<float2> table_;
  int64_t table_positions_ = 0;
  std::map<std::pair<bool, uint32_t>, std::unique_ptr<Fp8Basis>> fp8_;
};

bool Available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

namespace {
std::atomic<uint64_t> g_fused_restores{0};  // streams FinishFused wrote
}  // namespace

bool FusedRestoreBuilt() { return kFusedRestoreBuilt; }
uint64_t FusedRestores() { return g_fused_restores.load(); }

std::string DeviceName(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unknown";
  return prop.name;
}

namespace {

// KVTC_PIN_RECORDS=1: records the CUDA backend writes live in page-locked memory
// (record_memory.h), so restoring one is a DMA straight from it and an encode reads back straight
// into it. Off by default: measured on an H200 (2026-11-29, docs/benchmarks.md) it saved 2.5 ms
// of an 8B-shape 8K-token restore but cost more on encode (page-locking each fresh block); run l
// (call 32, 8B 8K, reading back into the record): encode 228.9 / 229.1 GB/s at batch 1 against
// 214.7 / 215.8, but 154.6 / 159.1 at batch 8 against 191.8 / 196.1 (fresh blocks pinned) and
// decode 166.0 / 170.7 at batch 1 against 191.2 / 186.1. Run m (calls 37-38, each section's CRC
// checked while its copy runs): encode batch 8 246.5 against 223.2-231.0 with a record pool that
// holds the batch, decode batch 1 still 174.5-177.6 against 206.5 staged, though the copy from a
// registered block runs at full speed (bench/pinned_copy.py: 55.3 GB/s, as from cudaHostAlloc).
void InstallRecordPinning() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* v = std::getenv("KVTC_PIN_RECORDS");
    if (!v || std::strcmp(v, "1") != 0) return;
    RecordMemoryPinning pinning;
    pinning.pin = [](void* p, size_t bytes) {
      // Portable: page-locked for every device's context (records of one sidecar go to any GPU).
      if (cudaHostRegister(p, bytes, cudaHostRegisterPortable) == cudaSuccess) return true;
      cudaGetLastError();  // a failure leaves the block pageable; the staging path serves it
      return false;
    };
    pinning.unpin = [](void* p) {
      if (cudaHostUnregister(p) != cudaSuccess) cudaGetLastError();
    };
    SetRecordMemoryPinning(pinning);
  });
}

}  // namespace

// A record in a page-locked block is page-locked whole: the whole block is registered, and a
// record never crosses its block.
bool IsPageLocked(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

int DeviceOf(const DeviceCalibration& dev) { return dev.device; }

std::shared_ptr<DeviceCalibration> Upload(const Calibration& c, int device) {
  KVTC_CHECK(Available(), kBackendUnavailable, "no CUDA device is available");
  KVTC_CUDA_CALL(cudaSetDevice(device));
  InstallRecordPinning();
  auto dev = std::make_shared<DeviceCalibration>();
  dev->device = device;
  auto upload_stream = [](const StreamBasis& s, DeviceBuffer<float>& mean, DeviceBuffer<__nv_bfloat16>& basis) {
    mean.resize(s.mean.size());
    KVTC_CUDA_CALL(cudaMemcpy(mean.ptr, s.mean.data(), s.mean.size() * 4, cudaMemcpyHostToDevice));
    // Row-major [p, rank] on the host; [p, ld] on the device, the padding columns zero.
    const size_t rank = s.rank, ld = PadLd(s.rank), rows = rank ? s.basis.size() / rank : 0;
    std::vector<__nv_bfloat16> b(rows * ld, __float2bfloat16_rn(0.0f));
    for (size_t j = 0; j < rows; ++j)
      for (size_t i = 0; i < rank; ++i) b[j * ld + i] = __float2bfloat16_rn(s.basis[j * rank + i]);
    basis.resize(std::max<size_t>(1, b.size()));
    if (!b.empty()) KVTC_CUDA_CALL(cudaMemcpy(basis.ptr, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  };
  upload_stream(c.keys, dev->mean_keys, dev->basis_keys);
  upload_stream(c.values, dev->mean_values, dev->basis_values);
  dev->rank_keys = c.keys.rank;
  dev->rank_values = c.values.rank;
  dev->ld_keys = PadLd(c.keys.rank);
  dev->ld_values = PadLd(c.values.rank);
  const std::vector<double> inv = RopeInvFreq(c.rope);
  dev->half = int(inv.size());
  dev->inv_freq.resize(inv.size());
  KVTC_CUDA_CALL(cudaMemcpy(dev->inv_freq.ptr, inv.data(), inv.size() * 8, cudaMemcpyHostToDevice));
  return dev;
}

namespace {

// Device scratch of one stream (keys or values) of one job: encode prologue rows, coefficients,
// payload and DEFLATE slots; decode dequantized coefficients and reconstruction. Persists per
// thread and slot, growing only.
struct StreamScratch {
  DeviceBuffer<__nv_bfloat16> x;
  DeviceBuffer<float> d;
  DeviceBuffer<uint8_t> payload;
  DeviceBuffer<GroupDesc> groups;
  DeviceBuffer<SmallSegment> segments;  // of the small groups (SmallGroupTiles)
  DeviceBuffer<QuantizeJob> quantize_jobs;  // the sequences of a quantize launch
  DeviceBuffer<DequantizeJob> dequantize_jobs;  // ... and of a dequantize launch
  DeviceBuffer<GroupSpan> group_spans;      // a fused paged group's spans, and its per-row tables
  DeviceBuffer<int64_t> row_offsets, row_positions;
  DeviceBuffer<uint8_t> slots;
  DeviceBuffer<uint8_t> temp;
  DeviceBuffer<void*> in_ptrs, out_ptrs;
  DeviceBuffer<size_t> in_sizes, out_sizes;
  DeviceBuffer<nvcompStatus_t> statuses;
  DeviceBuffer<float> xf;
  DeviceBuffer<__nv_bfloat16> xb;  // the reconstruction in bf16 instead of xf (Bf16Reconstruction)
  bool reconstruction_bf16 = false;
  DeviceBuffer<__nv_bfloat16> dq;
  uint32_t fused_ld = 0, fused_k = 0;  // dq's leading dimension and the columns a GEMM reads (FinishFused)
  // The fp8 projection's operands (cuda_fp8.cuh): the prologue's rows (encode) or the dequantized
  // coefficients (decode) in e4m3, and their per-token scales. xf_row_scale / xf_col_scale: the
  // scales still to be applied to xf by FinishParts (null after a bf16 reconstruction).
  DeviceBuffer<__nv_fp8_e4m3> x8, dq8;
  DeviceBuffer<float> x_scale, dq_scale;
  const float* xf_row_scale = nullptr;
  const float* xf_col_scale = nullptr;
  DeviceBuffer<uint32_t> entries;  // entry points of indexed chunks, max_entries per chunk
  PinnedBuffer sizes;  // the compressed chunk sizes (then the entry points), read back at the sync
  DeviceBuffer<void*> copy_srcs, copy_dsts;
  DeviceBuffer<size_t> copy_sizes;
  DeviceBuffer<uint64_t> chunk_at;  // encode: each chunk's offset among the packed chunks
  DeviceBuffer<uint64_t> chunk_end;  // encode, fused groups: where each chunk's sequence ends
  DeviceBuffer<uint8_t> packed;     // ... and the chunks back to back, as the record stores them
  PinnedBuffer statuses_host;  // inflate statuses (and nvCOMP's output sizes), read at the sync
};

// Scratch of stream `which` (0 keys, 1 values) of pipeline slot `slot`: a job of several sequences
// launches sequence b + 1 on the other slot while sequence b is read back (EncodeMany, DecodeMany).
constexpr int kSlots = 2;
struct SlotScratch {
  StreamScratch s[kSlots][2];
};
StreamScratch& Scratch(int slot, int which) { return OfCurrentDevice<SlotScratch>().s[slot][which]; }

// The plan's group tables (small groups first, SmallGroupsFirst) of each of several sequences,
// their planes placed by each one's token count, uploaded back to back into s.groups (and, for the
// tile kernels, s.segments): sequence b's tables start at b * count (b * segments). What the jobs
// of one quantize or dequantize launch point into.
struct GroupTables {
  size_t count = 0, small = 0, segments = 0;  // per sequence: groups, small ones, tile segments
  uint32_t most = 0;                           // the most tokens of a sequence
  bool tiles = false;                          // small groups in tiles (SmallGroupTiles)
};
GroupTables UploadGroupTables(const Plan& plan, const std::vector<uint32_t>& tokens, bool kept_only, StreamScratch& s,
                              cudaStream_t stream) {
  GroupTables t;
  t.tiles = SmallGroupTiles();
  std::vector<GroupDesc> all_groups;
  std::vector<SmallSegment> all_segments;
  for (const uint32_t n : tokens) {
    std::vector<GroupDesc> groups = PlanDescs(plan, n, kept_only);
    t.small = SmallGroupsFirst(groups);
    t.count = groups.size();
    if (t.small > 0 && t.tiles) {
      const std::vector<SmallSegment> segments = SmallSegments(groups, t.small);
      t.segments = segments.size();
      all_segments.insert(all_segments.end(), segments.begin(), segments.end());
    }
    all_groups.insert(all_groups.end(), groups.begin(), groups.end());
    t.most = std::max(t.most, n);
  }
  if (t.count == 0 || t.most == 0) return t;
  UploadAsync(s.groups, all_groups.data(), all_groups.size(), stream);
  if (!all_segments.empty()) UploadAsync(s.segments, all_segments.data(), all_segments.size(), stream);
  return t;
}

// One sequence of a dequantize launch: `tokens` coefficient rows from `payload` (device), written
// from row `row` of the output.
struct DequantizeTarget {
  const uint8_t* payload = nullptr;
  uint32_t tokens = 0, row = 0;
};

// Every target's payload -> bf16 coefficients out[(row + t) * ld + j], j < plan.rank (every group,
// dropped ones as zeros), on `stream`: one launch per kernel for all targets (blockIdx.z), their
// group and segment tables uploaded together (LaunchQuantize's layout).
void LaunchDequantize(const Plan& plan, const std::vector<DequantizeTarget>& targets, __nv_bfloat16* out, int64_t ld,
                      StreamScratch& s, cudaStream_t stream) {
  // Small groups one thread per token (DequantizeSmallKernel), as they were quantized: measured
  // on an H200 (2026-11-30, 8B shape 8K, KVTC_CUDA_PROFILE), 0.21 ms per stream against 0.71 with
  // the warp kernel for every group.
  std::vector<uint32_t> tokens;
  for (const DequantizeTarget& t : targets) tokens.push_back(t.tokens);
  const GroupTables gt = UploadGroupTables(plan, tokens, /*kept_only=*/false, s, stream);
  const size_t ng = gt.count, small = gt.small, nseg = gt.segments;
  const uint32_t most = gt.most;
  const bool tiles = gt.tiles;
  if (ng == 0 || most == 0) return;
  std::vector<DequantizeJob> jobs(targets.size());
  for (size_t b = 0; b < targets.size(); ++b) {
    jobs[b] = {targets[b].payload, targets[b].tokens, s.groups.ptr + b * ng,
               nseg ? s.segments.ptr + b * nseg : nullptr, out + size_t(targets[b].row) * ld};
  }
  UploadAsync(s.dequantize_jobs, jobs.data(), jobs.size(), stream);
  const unsigned z = unsigned(targets.size());
  if (small > 0 && tiles) {
    DequantizeTileKernel<<<dim3(unsigned((most + kTileTokens - 1) / kTileTokens), unsigned(nseg), z), 256, 0,
                           stream>>>(s.dequantize_jobs.ptr, ld);
  } else if (small > 0) {
    DequantizeSmallKernel<<<dim3(unsigned((most + 255) / 256), unsigned(small), z), 256, 0, stream>>>(
        s.dequantize_jobs.ptr, ld);
  }
  if (ng > small) {
    DequantizeKernel<<<dim3(unsigned((most + 7) / 8), unsigned(ng - small), z), 256, 0, stream>>>(
        s.dequantize_jobs.ptr, ld, int(small), int(ng - small));
  }
  KVTC_CUDA_CALL(cudaGetLastError());
}

template <typename F>
void DispatchDtype(KvDtype dt, F&& f) {
  switch (dt) {
    case KvDtype::kFloat32:
      f(float{});
      break;
    case KvDtype::kFloat16:
      f(__half{});
      break;
    case KvDtype::kBfloat16:
      f(__nv_bfloat16{});
      break;
  }
}

// One stream's rows as the prologue and epilogue kernels see them: contiguous device rows, or a
// paged span whose row 0 is span token `token0`.
struct StreamRows {
  const void* rows = nullptr;
  const PagedRows* paged = nullptr;
  int64_t kv_offset = 0;  // paged: 0 for keys, strides.kv for values
  int64_t token0 = 0;
};

template <typename T, typename F>
void WithRows(const StreamRows& r, int64_t features, F&& f) {
  if (r.paged) {
    f(PagedRowsOf<T>{*r.paged, r.kv_offset, r.token0});
  } else {
    f(ContiguousRows<T>{static_cast<T*>(const_cast<void*>(r.rows)), features});
  }
}

// The encode prologue and decode epilogue run in kVec-feature vectors (PrepareVecKernel,
// FinishVecKernel) wherever the rows allow (VecRowsOk), the scalar kernels otherwise; the keys'
// in vector pairs (PreparePairKernel, FinishPairKernel) where the RoPE is neox over the whole head
// (PairRowsOk). On an H200 (run h, 2026-11-30) the vector ones took the 8B shape at 8K from 145.9
// / 162.7 to 166.0 / 188.5 GB/s encode (batch 1 / 8); the paired ones are not measured yet.
// KVTC_ROW_KERNELS=paired (default), vector or scalar caps the choice: the bit-identity test
// (test/gpu/row-kernels.test.ts) and A/B runs use it. All write the same bits.
enum class RowKernels { kScalar, kVector, kPaired };
RowKernels RowKernelMode() {
  static const RowKernels mode = [] {
    const RowKernels by_choice[] = {RowKernels::kPaired, RowKernels::kVector, RowKernels::kScalar};
    const int i = EnvChoice("KVTC_ROW_KERNELS", {"paired", "vector", "scalar"});
    return by_choice[i < 0 ? 0 : i];
  }();
  return mode;
}

// Whether the vector row kernels may address these rows: every vector of kVec elements of a head
// starts 16-byte aligned (contiguous rows from an aligned base; a paged cache whose dim stride is
// 1 and whose other strides and layer bases keep the alignment), and RoPE pairs fall inside a
// vector (interleaved) or between two whole vectors (neox).
bool VecRowsOk(const StreamRows& r, const Calibration& c) {
  if (RowKernelMode() == RowKernels::kScalar || c.head_dim % kVec != 0) return false;
  const int rotary = c.rope.rotary_dim;
  if ((c.rope.layout == RopeLayout::kNeox ? rotary / 2 : rotary) % kVec != 0) return false;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!r.paged) return aligned(r.rows);
  const Strides& st = r.paged->st;
  if (st.dim != 1 || st.head % kVec || st.slot % kVec || st.block % kVec || r.kv_offset % kVec) return false;
  for (uint32_t l = 0; l < c.layers; ++l)
    if (!aligned(r.paged->bases.base[l])) return false;
  return true;
}

// Whether the keys' rows may go through the paired row kernels: the vector kernels may address
// them (`vec`, VecRowsOk), and the rotation is neox over the whole head.
bool PairRowsOk(bool vec, const Calibration& c, const float2* table) {
  return RowKernelMode() == RowKernels::kPaired && vec && table && c.rope.layout == RopeLayout::kNeox &&
         c.rope.rotary_dim == int(c.head_dim) && reinterpret_cast<uintptr_t>(table) % 16 == 0;
}

// Whether two spans' rows lie in the same paged cache (layer bases, strides and block size): then
// one kernel launch can address both through per-row tables (GroupRowsOf).
bool SameCache(const PagedRows& a, const PagedRows& b) {
  return a.bases.base[0] == b.bases.base[0] && std::memcmp(&a.st, &b.st, sizeof(Strides)) == 0 &&
         a.block_size == b.block_size;
}

// GroupRowsOf's per-row tables (s.row_offsets, s.row_positions) for `rows` rows of spans of the
// cache `cache` (SameCache), on the job stream.
void LaunchGroupRows(Context& ctx, StreamScratch& s, const std::vector<GroupSpan>& spans, const PagedRows& cache,
                     uint32_t rows) {
  uint32_t most = 0;
  for (const GroupSpan& sp : spans) most = std::max(most, sp.tokens);
  UploadAsync(s.group_spans, spans.data(), spans.size(), ctx.stream);
  s.row_offsets.resize(rows);
  s.row_positions.resize(rows);
  GroupRowsKernel<<<dim3((most + 255) / 256, unsigned(spans.size())), 256, 0, ctx.stream>>>(
      s.group_spans.ptr, cache.block_size, cache.st, s.row_offsets.ptr, s.row_positions.ptr);
  KVTC_CUDA_CALL(cudaGetLastError());
}

// One sequence of a quantize launch: its coefficient rows start at row `row` of s.d, its payload
// at byte `payload_at` of s.payload.
struct QuantizeTarget {
  uint32_t row = 0, tokens = 0;
  size_t payload_at = 0;
};

// Quantizes every target's rows into its payload (zeroed): one launch per kernel for all targets
// (blockIdx.z), whose group and segment tables go up in one upload each (a fused group's
// sequences have tables of the same length, their planes placed by their own token counts).
void LaunchQuantize(Context& ctx, StreamScratch& s, const Plan& plan, const std::vector<QuantizeTarget>& targets,
                    uint32_t ld) {
  std::vector<uint32_t> tokens;
  for (const QuantizeTarget& t : targets) tokens.push_back(t.tokens);
  const GroupTables gt = UploadGroupTables(plan, tokens, /*kept_only=*/true, s, ctx.stream);
  const size_t ng = gt.count, small = gt.small, nseg = gt.segments;
  const uint32_t most = gt.most;
  const bool tiles = gt.tiles;
  if (ng == 0 || most == 0) return;
  std::vector<QuantizeJob> jobs(targets.size());
  for (size_t b = 0; b < targets.size(); ++b) {
    jobs[b] = {s.d.ptr + size_t(targets[b].row) * ld, s.payload.ptr + targets[b].payload_at, targets[b].tokens,
               s.groups.ptr + b * ng, nseg ? s.segments.ptr + b * nseg : nullptr};
  }
  UploadAsync(s.quantize_jobs, jobs.data(), jobs.size(), ctx.stream);
  const unsigned z = unsigned(targets.size());
  if (small > 0 && tiles) {
    QuantizeTileKernel<<<dim3(unsigned((most + kTileTokens - 1) / kTileTokens), unsigned(nseg), z), 256, 0,
                         ctx.stream>>>(s.quantize_jobs.ptr, ld);
  } else if (small > 0) {
    QuantizeSmallKernel<<<dim3(unsigned((most + 255) / 256), unsigned(small), z), 256, 0, ctx.stream>>>(
        s.quantize_jobs.ptr, ld);
  }
  if (ng > small) {
    QuantizeKernel<<<dim3(unsigned((most + 7) / 8), unsigned(ng - small), z), 256, 0, ctx.stream>>>(
        s.quantize_jobs.ptr, ld, int(small), int(ng - small));
  }
  KVTC_CUDA_CALL(cudaGetLastError());
}

// CopyChunksKernel over n chunks, the pointer and size arrays uploaded into the stream's scratch.
void LaunchCopyChunks(cudaStream_t stream, StreamScratch& s, void* const* srcs, void* const* dsts, const size_t* sizes,
                      size_t n) {
  if (n == 0) return;
  UploadAsync(s.copy_srcs, srcs, n, stream);
  UploadAsync(s.copy_dsts, dsts, n, stream);
  UploadAsync(s.copy_sizes, sizes, n, stream);
  CopyChunksKernel<<<unsigned(n), 256, 0, stream>>>(reinterpret_cast<const uint8_t* const*>(s.copy_srcs.ptr),
                                                        reinterpret_cast<uint8_t* const*>(s.copy_dsts.ptr),
                                                        s.copy_sizes.ptr);
  KVTC_CUDA_CALL(cudaGetLastError());
}

// One stream (keys or values) of an encode job, launched: device rows -> payload -> DEFLATE chunks
// in slots, the chunk sizes on their way to pinned host memory. Nothing waits here.
// In a fused group (several sequences launched as one: LaunchStreams), one per sequence: its
// chunks are chunks first_chunk.. of the group's launch, its packed bytes follow those of the
// sequence before it.
struct LaunchedStream {
  StreamScratch* s = nullptr;
  size_t payload_bytes = 0, chunk_bytes = 0, chunks = 0, max_out = 0;
  uint32_t entry_stride = 0, max_entries = 0;  // indexed chunks (kvtc's coder); 0 for nvCOMP's
  size_t first_chunk = 0, group_chunks = 0;
  // After the job's sync: the sizes of the section's chunk table and of its chunks (packed back
  // to back on the device by PackChunksKernel), from SizeChunks; where they start in s->packed
  // (FinishEncode: after the group's sequences before it); the table itself from LayoutChunks.
  uint64_t table_bytes = 0, chunk_total = 0, packed_at = 0;
  std::vector<uint8_t> table;
  uint64_t size() const { return table_bytes + chunk_total; }
};

// One sequence's rows for LaunchStreams: `tokens` rows at positions pos0.. .
struct StreamPart {
  StreamRows rows;
  uint32_t tokens = 0;
  int64_t pos0 = 0;
};

// One stream (keys or values) of the sequences of a fused group, launched: each part's rows
// through its prologue into one operand, one projection GEMM over all of them, each part's
// quantization into its own payload (starting on a chunk boundary), one coder launch over every
// chunk (none when `store`: level 0 keeps every chunk as is), one packing and one publication of
// the chunk sizes. Returns a LaunchedStream per part. Nothing waits here.
std::vector<LaunchedStream> LaunchStreams(Context& ctx, StreamScratch& s, const Calibration& c,
                                          const DeviceCalibration& dev, const Plan& plan, bool keys,
                                          const std::vector<StreamPart>& parts, KvDtype dtype, size_t chunk_bytes,
                                          uint32_t entry_stride, bool store, bool fp8, Profiler& prof) {
  const int64_t p = c.feature_dim();
  const int heads = int(c.layers * c.kv_heads);
  std::vector<uint32_t> row_at(parts.size());
  uint32_t tokens = 0;
  int64_t end = 0;
  for (size_t b = 0; b < parts.size(); ++b) {
    row_at[b] = tokens;
    tokens += parts[b].tokens;
    end = std::max(end, parts[b].pos0 + parts[b].tokens);
  }
  s.x.resize(size_t(tokens) * p);
  // The table is sized once for the whole group: growing it reallocates.
  const float2* table = keys ? const_cast<DeviceCalibration&>(dev).RopeTable(end, ctx.stream) : nullptr;
  const float* mean = keys ? dev.mean_keys.ptr : dev.mean_values.ptr;
  const bool neox = c.rope.layout == RopeLayout::kNeox;
  const uint32_t r = plan.rank;
  const bool fp8_gemm = fp8 && r > 0;
  const uint32_t n_gemm = fp8 ? PadFp8(tokens) : tokens;  // fp8: token rows padded with zeros
  if (fp8_gemm) {
    // The rows' absolute maxima, gathered by the prologue (padding rows stay 0: scale 1).
    s.x_scale.resize(n_gemm);
    KVTC_CUDA_CALL(cudaMemsetAsync(s.x_scale.ptr, 0, n_gemm * sizeof(float), ctx.stream));
  }
  // The prologue of one set of rows: pair, vector or scalar kernel as the rows allow.
  auto prepare = [&](const auto& in, const StreamRows& rows, uint32_t n, const float2* rope, __nv_bfloat16* x,
                     float* amax) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(in.FeatureBase(0))>>;
    const bool vec = VecRowsOk(rows, c);
    if (PairRowsOk(vec, c, rope)) {
      PreparePairKernel<T><<<RowGrid(n, p / (2 * kVec)), kThreads, 0, ctx.stream>>>(in, n, heads, int(c.head_dim),
                                                                                    rope, mean, x, amax);
    } else if (vec) {
      PrepareVecKernel<T><<<RowGrid(n, p / kVec), kThreads, 0, ctx.stream>>>(
          in, n, heads, int(c.head_dim), c.rope.rotary_dim, neox, rope, mean, x, amax);
    } else {
      PrepareKernel<T><<<RowGrid(n, p), kThreads, 0, ctx.stream>>>(in, n, heads, int(c.head_dim), c.rope.rotary_dim,
                                                                   neox, rope, mean, x, amax);
    }
  };
  float* amax = fp8_gemm ? s.x_scale.ptr : nullptr;
  // Spans of one paged cache (a fused group of EncodePagedMany's): one launch over all their rows,
  // each row's place and position from tables a small kernel fills (call 51's profile: a group of
  // 8 chunks of 256 tokens took 0.148 ms for 8 launches, a 2K-token sequence ~0.075).
  const PagedRows* first_paged = parts[0].rows.paged;
  bool one_cache = parts.size() > 1;
  for (const StreamPart& part : parts)
    one_cache = one_cache && part.rows.paged && SameCache(*part.rows.paged, *first_paged);
  if (one_cache) {
    std::vector<GroupSpan> spans(parts.size());
    for (size_t b = 0; b < parts.size(); ++b) {
      const PagedRows& pr = *parts[b].rows.paged;
      spans[b] = {pr.block_ids, pr.first_slot, parts[b].tokens, row_at[b], parts[b].rows.token0, parts[b].pos0};
    }
    LaunchGroupRows(ctx, s, spans, *first_paged, tokens);
    DispatchDtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      const GroupRowsOf<T> in{PagedRowsOf<T>{*first_paged, parts[0].rows.kv_offset, 0}, s.row_offsets.ptr,
                              s.row_positions.ptr};
      prepare(in, parts[0].rows, tokens, table, s.x.ptr, amax);
    });
  } else {
    for (size_t b = 0; b < parts.size(); ++b) {
      const StreamPart& part = parts[b];
      const float2* part_table = table ? table + part.pos0 * (c.rope.rotary_dim / 2) : nullptr;
      DispatchDtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        WithRows<T>(part.rows, p, [&](auto in) {
          prepare(in, part.rows, part.tokens, part_table, s.x.ptr + size_t(row_at[b]) * p,
                  amax ? amax + row_at[b] : nullptr);
        });
      });
    }
  }
  KVTC_CUDA_CALL(cudaGetLastError());
  prof.mark(keys ? "k.prepare" : "v.prepare");
  const uint32_t basis_ld = keys ? dev.ld_keys : dev.ld_values;
  // D rows padded too: ldc must keep 16-byte alignment (the fp8 GEMM's M, 16 elements).
  const uint32_t d_ld = fp8 ? PadFp8(r) : PadLd(r);
  s.d.resize(std::max<size_t>(1, size_t(n_gemm) * d_ld));
  if (fp8_gemm) {
    const Fp8Basis& b8 = const_cast<DeviceCalibration&>(dev).Fp8(keys, r, p, ctx.stream);
    s.x8.resize(size_t(n_gemm) * p);
    fp8::AmaxToScaleKernel<<<(n_gemm + 255) / 256, 256, 0, ctx.stream>>>(s.x_scale.ptr, int(n_gemm));
    const int64_t vectors = int64_t(n_gemm) * p / 8;
    fp8::ScaledRowsKernel<<<unsigned((vectors + 255) / 256), 256, 0, ctx.stream>>>(s.x.ptr, tokens, n_gemm, p,
                                                                                   s.x_scale.ptr, s.x8.ptr);
    KVTC_CUDA_CALL(cudaGetLastError());
    prof.mark(keys ? "k.fp8" : "v.fp8");
    // Column-major D^T [d_ld, T] = (B8 [p, d_ld] column-major)^T X8^T.
    Fp8Gemm(ctx.lt, ctx.stream, int(d_ld), int(n_gemm), int(p), b8.project.ptr, int(p), s.x8.ptr, int(p), s.d.ptr,
            int(d_ld));
    fp8::ScaleOuterKernel<<<dim3(tokens, unsigned((r + 255) / 256)), 256, 0, ctx.stream>>>(
        s.d.ptr, tokens, int(r), d_ld, s.x_scale.ptr, b8.project_scale.ptr);
    KVTC_CUDA_CALL(cudaGetLastError());
  } else if (r > 0) {
    // Row-major D[T, r] = X[T, p] V[p, :r]  <=>  column-major D^T = V^T X^T.
    // M = d_ld, not r: the padding columns of the basis are zero, and an M that is not a multiple
    // of 8 measured 6x slower (4.6 ms vs 0.74 ms, SmolLM2 shape, 32K tokens, rank 1447 vs 1448).
    ProjectionGemm(ctx, CUBLAS_OP_N, int(std::min(d_ld, basis_ld)), int(tokens), int(p),
                   keys ? dev.basis_keys.ptr : dev.basis_values.ptr, int(basis_ld), s.x.ptr, int(p), s.d.ptr, int(d_ld));
  }
  prof.mark(keys ? "k.gemm" : "v.gemm");
  // Each part's payload starts on a chunk boundary, so that no chunk spans two records.
  std::vector<LaunchedStream> out(parts.size());
  std::vector<QuantizeTarget> targets(parts.size());
  size_t payload_total = 0, chunks = 0;
  for (size_t b = 0; b < parts.size(); ++b) {
    LaunchedStream& ls = out[b];
    ls.s = &s;
    ls.chunk_bytes = chunk_bytes;
    ls.payload_bytes = PayloadBytes(plan, parts[b].tokens);
    ls.chunks = (ls.payload_bytes + chunk_bytes - 1) / chunk_bytes;
    ls.first_chunk = chunks;
    targets[b] = {row_at[b], parts[b].tokens, chunks * chunk_bytes};
    payload_total = chunks * chunk_bytes + ls.payload_bytes;
    chunks += ls.chunks;
  }
  s.payload.resize(std::max<size_t>(4, payload_total + 4));
  KVTC_CUDA_CALL(cudaMemsetAsync(s.payload.ptr, 0, payload_total + 4, ctx.stream));
  LaunchQuantize(ctx, s, plan, targets, d_ld);
  prof.mark(keys ? "k.quantize" : "v.quantize");
  if (chunks == 0) return out;
  // Where each chunk's part ends (a single part ends where the payload does).
  const uint64_t* chunk_end = nullptr;
  if (parts.size() > 1) {
    std::vector<uint64_t> ends(chunks);
    for (const LaunchedStream& ls : out)
      for (size_t i = 0; i < ls.chunks; ++i) ends[ls.first_chunk + i] = ls.first_chunk * chunk_bytes + ls.payload_bytes;
    UploadAsync(s.chunk_end, ends.data(), chunks, ctx.stream);
    chunk_end = s.chunk_end.ptr;
  }
  // What writes the chunks: nothing at level 0 (every chunk stored as is), kvtc's coder, or nvCOMP.
  enum class ChunkWriter { kStored, kKvtc, kNvcomp };
  const ChunkWriter writer = store ? ChunkWriter::kStored
                             : Coder(/*encode=*/true) == EntropyCoder::kKvtc ? ChunkWriter::kKvtc
                                                                             : ChunkWriter::kNvcomp;
  nvcompBatchedDeflateCompressOpts_t opts = nvcompBatchedDeflateCompressDefaultOpts;
  opts.algorithm = NvcompAlgorithm();
  size_t temp_bytes = 0, max_out = 0;  // stored chunks: no coder output
  if (writer == ChunkWriter::kKvtc) {
    max_out = (chunk_bytes + 255) / 256 * 256;  // kvtc's coder never writes more than the chunk
  } else if (writer == ChunkWriter::kNvcomp) {
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressGetMaxOutputChunkSize(chunk_bytes, opts, &max_out));
    max_out = (max_out + 255) / 256 * 256;  // slots stay aligned for nvCOMP
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressGetTempSize(chunks, chunk_bytes, opts, &temp_bytes, payload_total,
                                                             ctx.stream));
    s.temp.resize(std::max<size_t>(1, temp_bytes));
  }
  s.slots.resize(chunks * max_out + 4);  // + 4: PackChunksKernel's last aligned load
  s.out_sizes.resize(chunks);
  // kvtc's coder writes indexed sections (entropy.h: a GPU inflates them a lane per run), and so
  // does level 0, without entry points (a stored chunk has none), for the decoder's direct path.
  uint32_t stride = 0, max_entries = 0;
  if (writer != ChunkWriter::kNvcomp) {
    stride = entry_stride ? entry_stride : DefaultEntryStride(chunk_bytes, EntryRuns());
    KVTC_CHECK(stride % 16 == 0, kInvalidArgument,
               "Expected an entry stride that is a multiple of 16 but received " << stride);
  }
  if (writer == ChunkWriter::kStored) {
    // Every size at its maximum: the stored rule (ChunkOffsetsKernel, SizeOfChunk) keeps each chunk.
    s.entries.resize(1);
    KVTC_CUDA_CALL(cudaMemsetAsync(s.out_sizes.ptr, 0xff, chunks * sizeof(size_t), ctx.stream));
  } else if (writer == ChunkWriter::kKvtc) {
    // sizes[c] = the chunk's own size when it did not shrink: the stored rule applies.
    max_entries = huff::EntryCount(chunk_bytes, stride);
    s.entries.resize(std::max<size_t>(1, chunks * max_entries));
    huff::LaunchEncode(s.payload.ptr, payload_total, chunk_bytes, s.slots.ptr, max_out, s.out_sizes.ptr,
                       s.entries.ptr, stride, max_entries, ctx.stream, chunk_end);
    KVTC_CUDA_CALL(cudaGetLastError());
  } else {
    std::vector<void*> in_ptrs(chunks), out_ptrs(chunks);
    std::vector<size_t> in_sizes(chunks);
    for (const LaunchedStream& ls : out) {
      for (size_t i = 0; i < ls.chunks; ++i) {
        const size_t k = ls.first_chunk + i;
        in_ptrs[k] = s.payload.ptr + k * chunk_bytes;
        out_ptrs[k] = s.slots.ptr + k * max_out;
        in_sizes[k] = std::min(chunk_bytes, ls.payload_bytes - i * chunk_bytes);
      }
    }
    s.statuses.resize(chunks);
    UploadAsync(s.in_ptrs, in_ptrs.data(), chunks, ctx.stream);
    UploadAsync(s.out_ptrs, out_ptrs.data(), chunks, ctx.stream);
    UploadAsync(s.in_sizes, in_sizes.data(), chunks, ctx.stream);
    KVTC_NVCOMP_CALL(nvcompBatchedDeflateCompressAsync(s.in_ptrs.ptr, s.in_sizes.ptr, chunk_bytes, chunks, s.temp.ptr,
                                                       temp_bytes, s.out_ptrs.ptr, s.out_sizes.ptr, opts, s.statuses.ptr,
                                                       ctx.stream));
  }
  for (LaunchedStream& ls : out) {
    ls.group_chunks = chunks;
    ls.max_out = max_out;
    ls.entry_stride = stride;
    ls.max_entries = max_entries;
  }
  prof.mark(keys ? "k.deflate" : "v.deflate");
  s.chunk_at.resize(chunks + 1);
  s.packed.resize(payload_total);  // a stored chunk is never larger than its raw bytes
  ChunkOffsetsKernel<<<1, kOffsetThreads, 0, ctx.stream>>>(s.out_sizes.ptr, chunks, chunk_bytes, payload_total,
                                                           chunk_end, s.chunk_at.ptr);
  PackChunksKernel<<<unsigned(chunks), 256, 0, ctx.stream>>>(s.slots.ptr, max_out, s.payload.ptr, chunk_bytes,
                                                             payload_total, chunk_end, s.chunk_at.ptr, s.packed.ptr);
  KVTC_CUDA_CALL(cudaGetLastError());
  prof.mark(keys ? "k.pack" : "v.pack");
  const size_t entry_words = chunks * max_entries;
  s.sizes.resize(chunks * sizeof(size_t) + entry_words * sizeof(uint32_t));
  // Written by a kernel into the page-locked buffer, not copied: a device-to-host copy on the job
  // stream queues behind the copy stream's read back of the sequence before (the same copy
  // engine) and holds up every kernel after it (8B shape, 1K tokens, batch 8: the values'
  // prologue took 0.28 ms against the keys' 0.05; call 36).
  const size_t words = chunks + entry_words;
  PublishSizesKernel<<<unsigned(std::min<size_t>((words + 255) / 256, 128)), 256, 0, ctx.stream>>>(
      s.out_sizes.ptr, chunks, s.entries.ptr, entry_words, HostMapped(s.sizes.ptr));
  KVTC_CUDA_CALL(cudaGetLastError());
  return out;
}

// Chunk i of a coded stream after the job's sync: its raw size and the bytes the record stores,
// the coder's output, or the raw chunk when coding did not shrink it (the CPU encoder's rule,
// which ChunkOffsetsKernel applies on the device to the same sizes).
struct ChunkSize {
  size_t raw = 0, stored = 0;
  bool Stored() const { return stored == raw; }
};
ChunkSize SizeOfChunk(const LaunchedStream& ls, size_t i) {
  const size_t raw = std::min(ls.chunk_bytes, ls.payload_bytes - i * ls.chunk_bytes);
  const size_t coded = reinterpret_cast<const size_t*>(ls.s->sizes.ptr)[ls.first_chunk + i];
  return {raw, coded >= raw ? raw : coded};
}

// The section's size, table and chunks, without writing the table: one pass over the chunk sizes,
// so that the read back of the packed chunks is queued before LayoutChunks writes the table.
void SizeChunks(LaunchedStream& ls) {
  const bool indexed = ls.entry_stride > 0;
  uint64_t table = (indexed ? 8 : 4) + 8 * uint64_t(ls.chunks), total = 0;
  for (size_t i = 0; i < ls.chunks; ++i) {
    const ChunkSize cs = SizeOfChunk(ls, i);
    total += cs.stored;
    if (indexed && !cs.Stored()) table += 4 * uint64_t(huff::EntryCount(cs.raw, ls.entry_stride));
  }
  ls.table_bytes = table;
  ls.chunk_total = total;
}

// The chunk table SizeChunks sized (entropy.h: u32 count, [u32 entry stride], raw and stored size
// per chunk, [entry points of each DEFLATE'd chunk]).
void LayoutChunks(LaunchedStream& ls) {
  const size_t chunks = ls.chunks;
  const bool indexed = ls.entry_stride > 0;
  const size_t fixed = indexed ? 8 : 4;
  // The group's entry points follow the sizes of all its chunks.
  const auto* entries = reinterpret_cast<const uint32_t*>(ls.s->sizes.ptr + ls.group_chunks * sizeof(size_t)) +
                        ls.first_chunk * ls.max_entries;
  ls.table.reserve(ls.table_bytes);
  ls.table.assign(fixed + 8 * chunks, 0);  // the entry points are appended
  const uint32_t n32 = uint32_t(chunks);
  std::memcpy(ls.table.data(), &n32, 4);
  if (indexed) std::memcpy(ls.table.data() + 4, &ls.entry_stride, 4);
  for (size_t i = 0; i < chunks; ++i) {
    const ChunkSize cs = SizeOfChunk(ls, i);
    const uint32_t raw32 = uint32_t(cs.raw), st32 = uint32_t(cs.stored);
    std::memcpy(ls.table.data() + fixed + 8 * i, &raw32, 4);
    std::memcpy(ls.table.data() + fixed + 8 * i + 4, &st32, 4);
    if (indexed && !cs.Stored()) {
      const auto* e = reinterpret_cast<const uint8_t*>(entries + i * ls.max_entries);
      ls.table.insert(ls.table.end(), e, e + 4 * huff::EntryCount(cs.raw, ls.entry_stride));
    }
  }
}

// One coded section of a record being decoded: its chunk table (entropy.h's ParseChunkTable, the
// CPU decoder's checks, before any device allocation), the section's place in the record, and
// where each chunk is staged in the device image.
struct CodedChunks : ChunkTable {
  uint64_t section_offset = 0;
  std::vector<size_t> staged;
};

CodedChunks ParseCodedSection(const uint8_t* record, const Section& sec, size_t payload_bytes) {
  CodedChunks cc;
  static_cast<ChunkTable&>(cc) = ParseChunkTable(record + sec.offset, sec.stored_bytes, sec.encoding, payload_bytes);
  cc.section_offset = sec.offset;
  return cc;
}

// A coded section of a record being decoded, with the device payload it inflates into.
struct InflateTarget {
  const CodedChunks* chunks = nullptr;
  uint8_t* payload = nullptr;
};

// What LaunchInflate gave the inflater: chunk count, and whose inflater (CheckInflate reads its
// statuses).
struct InflateLaunch {
  size_t n = 0;
  bool own = false;
};

// Launches the inflation of every coded section of a record (staged at `image` + staged[i]) in
// one launch, so keys' and values' chunks fill the GPU together: stored chunks by one copy
// kernel, the others by kvtc's inflater or nvCOMP's. Indexed sections always go to kvtc's (it
// checks their entry points exactly as the CPU decoder does; nvCOMP would ignore them); plain
// ones to KVTC_CUDA_ENTROPY's choice. Pointer arrays and statuses live in `s`; statuses land in
// pinned memory and CheckInflate reads them after the job's sync.
InflateLaunch LaunchInflate(Context& ctx, StreamScratch& s, const std::vector<InflateTarget>& targets, uint8_t* image,
                            uint8_t* payload_base) {
  std::vector<void*> copy_src, copy_dst;
  std::vector<size_t> copy_size;
  std::vector<huff::InflateJob> jobs;  // the DEFLATE'd chunks, for either inflater
  std::vector<uint32_t> entries;
  size_t max_raw = 0, total_raw = 0;
  bool any_indexed = false;
  for (const InflateTarget& t : targets) {
    const CodedChunks& cc = *t.chunks;
    max_raw = std::max(max_raw, cc.max_raw);
    total_raw += cc.payload_bytes;
    any_indexed |= cc.entry_stride > 0;
    for (size_t i = 0; i < cc.raw.size(); ++i) {
      uint8_t* src = image + cc.staged[i];
      uint8_t* dst = t.payload + cc.dst[i];
      if (cc.Stored(i)) {
        copy_src.push_back(src);
        copy_dst.push_back(dst);
        copy_size.push_back(cc.raw[i]);
        continue;
      }
      jobs.push_back({uint64_t(src - image), uint64_t(dst - payload_base), cc.stored[i], cc.raw[i],
                      uint32_t(entries.size()), cc.entry_count[i], cc.entry_count[i] ? cc.entry_stride : 0u, 0u});
      entries.insert(entries.end(), cc.entries.begin() + cc.entries_at[i],
                     cc.entries.begin() + cc.entries_at[i] + cc.entry_count[i]);
    }
  }
  LaunchCopyChunks(ctx.stream, s, copy_src.data(), copy_dst.data(), copy_size.data(), copy_src.size());
  InflateLaunch launch;
  const size_t n = launch.n = jobs.size();
  if (n == 0) return launch;
  launch.own = any_indexed || Coder(/*encode=*/false) == EntropyCoder::kKvtc;
  if (launch.own) {
    // Jobs, entry points and statuses in one device block, uploaded with one copy.
    const size_t jobs_bytes = n * sizeof(huff::InflateJob), entry_bytes = (entries.size() * 4 + 15) / 16 * 16;
    std::vector<uint8_t> upload(jobs_bytes + entry_bytes);
    std::memcpy(upload.data(), jobs.data(), jobs_bytes);
    if (!entries.empty()) std::memcpy(upload.data() + jobs_bytes, entries.data(), entries.size() * 4);
    s.temp.resize(upload.size() + n * sizeof(int32_t));
    auto* djobs = reinterpret_cast<huff::InflateJob*>(s.temp.ptr);
    auto* dentries = reinterpret_cast<uint32_t*>(s.temp.ptr + jobs_bytes);
    auto* dstatus = reinterpret_cast<int32_t*>(s.temp.ptr + upload.size());
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.temp.ptr, upload.data(), upload.size(), cudaMemcpyHostToDevice, ctx.stream));
    // `upload` may die on return: a copy from pageable memory is staged by the driver before
    // cudaMemcpyAsync returns (as every UploadAsync here relies on).
    huff::LaunchInflate(image, payload_base, djobs, dentries, uint32_t(n), dstatus, ctx.stream);
    KVTC_CUDA_CALL(cudaGetLastError());
    s.statuses_host.resize(n * sizeof(int32_t));
    KVTC_CUDA_CALL(cudaMemcpyAsync(s.statuses_host.ptr, dstatus, n * sizeof(int32_t), cudaMemcpyDeviceToHost, ctx.stream));
    return launch;
  }
  // nvCOMP's arrays: input pointers, output pointers, input sizes then expected inflated sizes.
  std::vector<void*> in_ptrs(n), out_ptrs(n);
  std::vector<size_t> sizes(2 * n);
  for (size_t i = 0; i < n; ++i) {
    in_ptrs[i] = image + jobs[i].in_off;
    out_ptrs[i] = payload_base + jobs[i].out_off;
    sizes[i] = jobs[i].in_size;
    sizes[n + i] = jobs[i].out_size;
  }
  UploadAsync(s.in_sizes, sizes.data(), 2 * n, ctx.stream);
  nvcompBatchedDeflateDecompressOpts_t opts{};
  opts.backend = NVCOMP_DECOMPRESS_BACKEND_CUDA;
  size_t temp_bytes = 0;
  KVTC_NVCOMP_CALL(nvcompBatchedDeflateDecompressGetTempSize(n, max_raw, opts, &temp_bytes, total_raw, ctx.stream));
  s.temp.resize(std::max<size_t>(1, temp_bytes));
  s.out_sizes.resize(n);
  s.statuses.resize(n);
  UploadAsync(s.in_ptrs, in_ptrs.data(), n, ctx.stream);
  UploadAsync(s.out_ptrs, out_ptrs.data(), n, ctx.stream);
  KVTC_NVCOMP_CALL(nvcompBatchedDeflateDecompressAsync(s.in_ptrs.ptr, s.in_sizes.ptr, s.in_sizes.ptr + n, s.out_sizes.ptr,
                                                       n, s.temp.ptr, temp_bytes, s.out_ptrs.ptr, opts, s.statuses.ptr,
                                                       ctx.stream));
  // Statuses, then the inflated sizes, in one pinned block.
  s.statuses_host.resize(n * (sizeof(nvcompStatus_t) + sizeof(size_t)) + 8);
  auto* sizes_at = s.statuses_host.ptr + (n * sizeof(nvcompStatus_t) + 7) / 8 * 8;
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.statuses_host.ptr, s.statuses.ptr, n * sizeof(nvcompStatus_t), cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaMemcpyAsync(sizes_at, s.out_sizes.ptr, n * sizeof(size_t), cudaMemcpyDeviceToHost, ctx.stream));
  return launch;
}

// After the sync: every inflated chunk is well formed and exactly its declared size.
void CheckInflate(const StreamScratch& s, const std::vector<InflateTarget>& targets, const InflateLaunch& launch) {
  if (launch.n == 0) return;
  const size_t n = launch.n;
  const auto* own_status = reinterpret_cast<const int32_t*>(s.statuses_host.ptr);
  const auto* st = reinterpret_cast<const nvcompStatus_t*>(s.statuses_host.ptr);
  const auto* got = reinterpret_cast<const size_t*>(s.statuses_host.ptr + (n * sizeof(nvcompStatus_t) + 7) / 8 * 8);
  size_t k = 0;
  for (const InflateTarget& t : targets) {
    const CodedChunks& cc = *t.chunks;
    for (size_t i = 0; i < cc.raw.size(); ++i) {
      if (cc.Stored(i)) continue;
      const bool ok = launch.own ? own_status[k] == huff::kInflateOk : st[k] == nvcompSuccess && got[k] == cc.raw[i];
      KVTC_CHECK(ok, kDeflate, "a DEFLATE chunk is malformed or inflates to the wrong size");
      ++k;
    }
  }
}

// payloads (device, one per part: a coded section of a record) -> the stream's reconstruction
// X[T, p] = D V^T of every part's rows one after the other (part k from row parts[k].row), in s.xf
// (fp32), or in s.xb (bf16) where `bf16` allows it (Bf16Reconstruction; bf16 projection only): one
// dequantize launch and one GEMM for all parts, on the job stream. Scratch only, so it may run
// before the records' inflation is checked. With `fused` (FusedRestoreFor) the dequantize alone:
// FinishFused runs the GEMM, which writes the cache, after the checks.
void ReconstructParts(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const Plan& plan, bool keys,
                      const std::vector<DequantizeTarget>& parts, bool fp8, bool bf16, bool fused, StreamScratch& s,
                      Profiler& prof) {
  const int64_t p = c.feature_dim();
  const uint32_t r = plan.rank;
  uint32_t tokens = 0;
  for (const DequantizeTarget& part : parts) tokens = std::max(tokens, part.row + part.tokens);
  const uint32_t dq_ld = PadLd(r);
  s.dq.resize(std::max<size_t>(1, size_t(tokens) * dq_ld));
  s.xf_row_scale = s.xf_col_scale = nullptr;
  s.reconstruction_bf16 = false;
  const uint32_t basis_ld = keys ? dev.ld_keys : dev.ld_values;
  const uint32_t k_dim = std::min(dq_ld, basis_ld);  // padded like M on encode (zero columns)
  if (fp8 && r > 0) {
    // The fp8 operands are written from the first r columns only: no padding to clear.
    LaunchDequantize(plan, parts, s.dq.ptr, dq_ld, s, ctx.stream);
    prof.mark(keys ? "k.dequantize" : "v.dequantize");
    prof.lap(keys ? "k.dequantize.launch" : "v.dequantize.launch");
    const Fp8Basis& b8 = const_cast<DeviceCalibration&>(dev).Fp8(keys, r, p, ctx.stream);
    const uint32_t n_gemm = PadFp8(tokens);
    s.dq8.resize(size_t(n_gemm) * b8.ld);
    s.dq_scale.resize(n_gemm);
    fp8::RowsKernel<__nv_bfloat16><<<n_gemm, fp8::kRowThreads, 0, ctx.stream>>>(s.dq.ptr, tokens, int(r), dq_ld,
                                                                                  s.dq8.ptr, b8.ld, s.dq_scale.ptr);
    KVTC_CUDA_CALL(cudaGetLastError());
    prof.mark(keys ? "k.fp8" : "v.fp8");
    s.xf.resize(size_t(n_gemm) * p);
    // Column-major X^T [p, T] = (R8 [ld, p] column-major)^T DQ8^T.
    Fp8Gemm(ctx.lt, ctx.stream, int(p), int(n_gemm), int(b8.ld), b8.reconstruct.ptr, int(b8.ld), s.dq8.ptr,
            int(b8.ld), s.xf.ptr, int(p));
    s.xf_row_scale = s.dq_scale.ptr;
    s.xf_col_scale = b8.reconstruct_scale.ptr;
    prof.mark(keys ? "k.gemm" : "v.gemm");
    prof.lap(keys ? "k.gemm.launch" : "v.gemm.launch");
    return;
  }
  if (k_dim != r) {
    // The GEMM reads the padding columns: zeros, never stale bytes (0 x NaN is NaN).
    KVTC_CUDA_CALL(cudaMemsetAsync(s.dq.ptr, 0, size_t(tokens) * dq_ld * 2, ctx.stream));
  }
  LaunchDequantize(plan, parts, s.dq.ptr, dq_ld, s, ctx.stream);
  prof.mark(keys ? "k.dequantize" : "v.dequantize");
  prof.lap(keys ? "k.dequantize.launch" : "v.dequantize.launch");
  s.fused_ld = dq_ld;
  s.fused_k = k_dim;
  if (fused) return;  // FinishFused's GEMM reads s.dq once the group's checks have passed
  if (r > 0) {
    // Row-major X[T, p] = D[T, r] V[:, :r]^T  <=>  column-major X^T = V[:, :r] D^T, where the
    // stored row-major V[p, R] is column-major V^T (R x p): op T selects its first r rows.
    s.reconstruction_bf16 = bf16;
    void* out;
    if (bf16) {
      s.xb.resize(size_t(tokens) * p);
      out = s.xb.ptr;
    } else {
      s.xf.resize(size_t(tokens) * p);
      out = s.xf.ptr;
    }
    ProjectionGemm(ctx, CUBLAS_OP_T, int(p), int(tokens), int(k_dim), keys ? dev.basis_keys.ptr : dev.basis_values.ptr,
                   int(keys ? dev.ld_keys : dev.ld_values), s.dq.ptr, int(dq_ld), out, int(p),
                   bf16 ? CUDA_R_16BF : CUDA_R_32F);
  } else {
    s.xf.resize(size_t(tokens) * p);
    KVTC_CUDA_CALL(cudaMemsetAsync(s.xf.ptr, 0, size_t(tokens) * p * 4, ctx.stream));
  }
  prof.mark(keys ? "k.gemm" : "v.gemm");
  prof.lap(keys ? "k.gemm.launch" : "v.gemm.launch");
}

// Where one part of a stream's reconstruction goes (FinishParts): its rows [lo, hi) of `tokens`,
// reconstruction rows row.. (ReconstructParts), into `out` at absolute positions pos0.. .
struct FinishTarget {
  StreamRows out;
  int64_t lo = 0, hi = 0, pos0 = 0;
  uint32_t tokens = 0, row = 0;
};

// s.xf or s.xb (ReconstructParts') -> each part's rows [lo, hi) in its dtype, mean added and (keys)
// RoPE re-applied, written into its rows (contiguous or paged): one launch for whole parts of one
// paged cache (GroupRowsOf, as a fused encode's prologue), one per part otherwise.
void FinishParts(Context& ctx, const Calibration& c, const DeviceCalibration& dev, bool keys, KvDtype dtype,
                 const std::vector<FinishTarget>& parts, StreamScratch& s, Profiler& prof) {
  if (parts.empty()) return;
  const int64_t p = c.feature_dim();
  const int half = c.rope.rotary_dim / 2;
  int64_t end = 0;
  uint32_t rows = 0;
  bool one_cache = parts.size() > 1;
  for (const FinishTarget& t : parts) {
    end = std::max(end, t.pos0 + t.tokens);
    rows = std::max(rows, t.row + t.tokens);
    one_cache = one_cache && t.out.paged && SameCache(*t.out.paged, *parts[0].out.paged) && t.lo == 0 &&
                t.hi == t.tokens;
  }
  // The table is sized once for all parts: growing it reallocates.
  const float2* table = keys ? const_cast<DeviceCalibration&>(dev).RopeTable(end, ctx.stream) : nullptr;
  const float* mean = keys ? dev.mean_keys.ptr : dev.mean_values.ptr;
  const bool neox = c.rope.layout == RopeLayout::kNeox;
  const int heads = int(c.layers * c.kv_heads);
  // Reconstruction rows [row0 + lo, row0 + hi) into `out` (addressed as `at` describes).
  auto launch = [&](const auto& out, const StreamRows& at, int64_t lo, int64_t hi, const float2* rope, size_t row0) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(out.FeatureBase(0))>>;
    const bool vec = VecRowsOk(at, c);
    const float* row_scale = s.xf_row_scale ? s.xf_row_scale + row0 : nullptr;
    auto finish = [&](const auto* in) {
      in += row0 * p;
      if (PairRowsOk(vec, c, rope)) {
        FinishPairKernel<T><<<RowGrid(hi - lo, p / (2 * kVec)), kThreads, 0, ctx.stream>>>(
            in, lo, hi, heads, int(c.head_dim), rope, mean, row_scale, s.xf_col_scale, out);
      } else if (vec) {
        FinishVecKernel<T><<<RowGrid(hi - lo, p / kVec), kThreads, 0, ctx.stream>>>(
            in, lo, hi, heads, int(c.head_dim), c.rope.rotary_dim, neox, rope, mean, row_scale, s.xf_col_scale, out);
      } else {
        FinishKernel<T><<<RowGrid(hi - lo, p), kThreads, 0, ctx.stream>>>(
            in, lo, hi, heads, int(c.head_dim), c.rope.rotary_dim, neox, rope, mean, row_scale, s.xf_col_scale, out);
      }
    };
    if (s.reconstruction_bf16) {
      finish(static_cast<const __nv_bfloat16*>(s.xb.ptr));
    } else {
      finish(static_cast<const float*>(s.xf.ptr));
    }
  };
  DispatchDtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (one_cache) {
      std::vector<GroupSpan> spans;
      for (const FinishTarget& t : parts)
        spans.push_back({t.out.paged->block_ids, t.out.paged->first_slot, t.tokens, t.row, t.out.token0, t.pos0});
      LaunchGroupRows(ctx, s, spans, *parts[0].out.paged, rows);
      const GroupRowsOf<T> out{PagedRowsOf<T>{*parts[0].out.paged, parts[0].out.kv_offset, 0}, s.row_offsets.ptr,
                               s.row_positions.ptr};
      launch(out, parts[0].out, 0, rows, table, 0);
    } else {
      for (const FinishTarget& t : parts) {
        WithRows<T>(t.out, p, [&](auto out) {
          launch(out, t.out, t.lo, t.hi, table ? table + t.pos0 * half : nullptr, t.row);
        });
      }
    }
  });
  KVTC_CUDA_CALL(cudaGetLastError());
  prof.mark(keys ? "k.finish" : "v.finish");
}

// KVTC_FUSED_RESTORE=on: a restore's GEMM with its epilogue fused (cuda_fused_restore.h) where
// FusedRestoreFor allows it, instead of the GEMM then FinishParts. Off by default: measured 7-22 %
// slower in decode (docs/benchmarks.md, runs s and t); on in a build without CUTLASS is an error, not
// a silent fallback.
bool FusedRestoreOn() {
  static const bool on = EnvChoice("KVTC_FUSED_RESTORE", {"off", "on"}) == 1;
  KVTC_CHECK(!on || kFusedRestoreBuilt, kBackendUnavailable,
             "KVTC_FUSED_RESTORE=on needs an addon built with CUTLASS (CMake's KVTC_CUTLASS_DIR)");
  return on;
}

// Whether one stream's parts go through the fused restore: on, a bf16 reconstruction of a bf16
// cache (bf16 projection), a kept rank, neox RoPE over whole heads (keys) or none, a layer of whole
// tiles, and every part whole into one paged cache whose dims are contiguous and whose strides
// keep column pairs 4-byte aligned (the epilogue's stores). Decided the same way at launch
// (ReconstructCoded, which then skips the GEMM) and at finish (FinishDecode).
bool FusedRestoreFor(const Calibration& c, uint32_t rank, bool keys, bool bf16, bool fp8,
                     const std::vector<FinishTarget>& parts) {
  if (!FusedRestoreOn() || !bf16 || fp8 || rank == 0 || parts.empty() || c.layers > uint32_t(kFusedMaxLayers))
    return false;
  if (!FusedRestoreFits(int(c.kv_heads * c.head_dim), int(c.head_dim))) return false;
  if (keys && c.rope.rotary_dim > 0 && (c.rope.layout != RopeLayout::kNeox || c.rope.rotary_dim != int(c.head_dim)))
    return false;
  const PagedRows* cache = parts[0].out.paged;
  if (!cache || cache->st.dim != 1 || (cache->st.head | cache->st.slot | cache->st.block | cache->st.kv) & 1)
    return false;
  for (uint32_t l = 0; l < c.layers; ++l)
    if (reinterpret_cast<uintptr_t>(cache->bases.base[l]) % 4 != 0) return false;
  for (const FinishTarget& t : parts)
    if (!t.out.paged || !SameCache(*t.out.paged, *cache) || t.lo != 0 || t.hi != t.tokens) return false;
  return true;
}

// FinishParts' work and the GEMM's in one launch (FusedRestoreFor's parts): the per-row tables,
// then the fused GEMM from s.dq (ReconstructParts with `fused`) into the cache.
void FinishFused(Context& ctx, const Calibration& c, const DeviceCalibration& dev, bool keys,
                 const std::vector<FinishTarget>& parts, StreamScratch& s, Profiler& prof) {
  const PagedRows& cache = *parts[0].out.paged;
  int64_t end = 0;
  uint32_t rows = 0;
  std::vector<GroupSpan> spans;
  for (const FinishTarget& t : parts) {
    end = std::max(end, t.pos0 + t.tokens);
    rows = std::max(rows, t.row + t.tokens);
    spans.push_back({t.out.paged->block_ids, t.out.paged->first_slot, t.tokens, t.row, t.out.token0, t.pos0});
  }
  LaunchGroupRows(ctx, s, spans, cache, rows);
  FusedRestore job;
  job.dq = s.dq.ptr;
  job.ld_dq = s.fused_ld;
  job.k = int(s.fused_k);
  job.basis = keys ? dev.basis_keys.ptr : dev.basis_values.ptr;
  job.ld_basis = keys ? dev.ld_keys : dev.ld_values;
  job.rows = int(rows);
  job.features = int(c.feature_dim());
  job.head_dim = int(c.head_dim);
  job.layers = int(c.layers);
  RestoreTarget& t = job.target;
  t.kv_heads = int(c.kv_heads);
  t.mean = keys ? dev.mean_keys.ptr : dev.mean_values.ptr;
  t.rope = keys && c.rope.rotary_dim > 0 ? const_cast<DeviceCalibration&>(dev).RopeTable(end, ctx.stream) : nullptr;
  t.row_offset = s.row_offsets.ptr;
  t.row_position = s.row_positions.ptr;
  for (uint32_t l = 0; l < c.layers; ++l)
    t.layer_base[l] = reinterpret_cast<__nv_bfloat16*>(cache.bases.base[l]) + parts[0].out.kv_offset;
  t.head_stride = cache.st.head;
  LaunchFusedRestore(job, ctx.stream);
  KVTC_CUDA_CALL(cudaGetLastError());
  g_fused_restores.fetch_add(1);
  prof.mark(keys ? "k.fused" : "v.fused");
}

}  // namespace

namespace {

// One section of a record being encoded: raw rows, or a coded stream whose size is known once its
// chunk sizes are back.
struct EncodePart {
  Section section;
  const uint8_t* raw = nullptr;  // raw rows (device memory when device_input)
  LaunchedStream* coded = nullptr;
};

// An encode in flight: device work launched on the job stream (LaunchEncode), then read back into
// its record (FinishEncode). Slot-owned buffers let the next sequence launch before this one is
// read back.
struct EncodeFlight {
  int slot = 0;
  bool device_input = false;
  const PagedRows* paged = nullptr;  // set: the rows are read in place from a paged cache
  const EncodeJob* job = nullptr;
  uint32_t sinks = 0, window = 0, middle = 0;
  LaunchedStream coded[2];
  std::vector<EncodePart> parts;
  uint64_t header_bytes = 0;
  HostBytes record;
  // Where this record's device bytes land in the slot's pinned image (body_host; unused for a
  // page-locked record) and its paged raw rows are gathered (raw_rows): a group's records side by
  // side.
  uint64_t landing_at = 0, raw_at = 0;
  std::unique_ptr<Profiler> prof;
};

struct EncodeSlot {
  DeviceBuffer<uint8_t> staged_keys, staged_values;  // host input, on the device
  PinnedBuffer body_host;      // the record's device-resident bytes, read back at their record offsets
  DeviceBuffer<uint8_t> raw_rows;  // paged raw sections, gathered
};
struct EncodeSlots {
  EncodeSlot s[kSlots];
};
EncodeSlot& EncodeSlotBuffers(int slot) { return OfCurrentDevice<EncodeSlots>().s[slot]; }

// A job's tokens by section: raw sinks (absolute positions below sink_tokens), the coded middle,
// the raw window (the newest window_tokens).
struct SectionTokens {
  uint32_t sinks, middle, window;
};
SectionTokens SectionTokensOf(const EncodeJob& job) {
  const uint32_t sinks =
      job.token_start < job.sink_tokens ? std::min(job.sink_tokens - job.token_start, job.tokens) : 0;
  const uint32_t window = std::min(job.window_tokens, job.tokens - sinks);
  return {sinks, job.tokens - sinks - window, window};
}

// Sequences [first, first + count) of `jobs` launched as one fused group on pipeline slot `slot`
// (FuseGroups chose them: same plan, dtype, chunking and projection), one flight each; paged:
// (*paged)[b] holds job b's rows. Both streams' device work goes back to back on the job's
// stream, an event after each; the records' memory is taken while the device works.
void LaunchEncode(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const std::vector<EncodeJob>& jobs,
                  size_t first, size_t count, bool device_input, const std::vector<PagedRows>* paged, int slot,
                  std::vector<EncodeFlight>& flights) {
  flights.clear();
  flights.resize(count);  // never resized again while the group is in flight: views point into it
  EncodeSlot& buf = EncodeSlotBuffers(slot);
  const size_t row_bytes = size_t(c.feature_dim()) * Elem(jobs[first].dtype);
  uint64_t staged_rows = 0;
  for (size_t k = 0; k < count; ++k) {
    const EncodeJob& job = jobs[first + k];
    KVTC_CHECK(job.tokens > 0, kInvalidArgument, "Expected at least one token to encode but received 0");
    KVTC_CHECK(job.plan_id < c.plans.size(), kPlanUnknown, "plan " << job.plan_id << " does not exist");
    CheckDeflateLevel(job.deflate_level);
    EncodeFlight& f = flights[k];
    f.slot = slot;
    f.job = &job;
    f.paged = paged ? &(*paged)[first + k] : nullptr;
    f.device_input = device_input || f.paged;
    f.prof = std::make_unique<Profiler>(ctx.stream);
    const SectionTokens st = SectionTokensOf(job);
    f.sinks = st.sinks;
    f.window = st.window;
    f.middle = st.middle;
    if (!f.device_input) staged_rows += f.middle;
  }
  Profiler& prof = *flights[0].prof;  // the group's device marks
  // Device rows of each middle (host input is staged to the device first; a paged span is read
  // in place from its blocks).
  if (staged_rows) {
    buf.staged_keys.resize(staged_rows * row_bytes);
    buf.staged_values.resize(staged_rows * row_bytes);
  }
  std::vector<StreamPart> key_parts, value_parts;
  std::vector<EncodeFlight*> coded;  // the flights with a coded middle, in order
  uint64_t staged_at = 0;
  for (EncodeFlight& f : flights) {
    if (!f.middle) continue;
    const EncodeJob& job = *f.job;
    const uint8_t* mid_keys = f.paged ? nullptr : job.keys + size_t(f.sinks) * row_bytes;
    const uint8_t* mid_values = f.paged ? nullptr : job.values + size_t(f.sinks) * row_bytes;
    if (!f.device_input) {
      const size_t bytes = size_t(f.middle) * row_bytes;
      KVTC_CUDA_CALL(cudaMemcpyAsync(buf.staged_keys.ptr + staged_at, mid_keys, bytes, cudaMemcpyHostToDevice,
                                     ctx.stream));
      KVTC_CUDA_CALL(cudaMemcpyAsync(buf.staged_values.ptr + staged_at, mid_values, bytes, cudaMemcpyHostToDevice,
                                     ctx.stream));
      mid_keys = buf.staged_keys.ptr + staged_at;
      mid_values = buf.staged_values.ptr + staged_at;
      staged_at += bytes;
    }
    const int64_t pos0 = int64_t(job.token_start) + f.sinks;
    key_parts.push_back({StreamRows{mid_keys, f.paged, 0, f.sinks}, f.middle, pos0});
    value_parts.push_back({StreamRows{mid_values, f.paged, f.paged ? f.paged->st.kv : 0, f.sinks}, f.middle, pos0});
    coded.push_back(&f);
  }
  const EncodeJob& lead = jobs[first];
  const PlanPair& plan = c.plans[lead.plan_id];
  const bool fp8 = lead.projection == Projection::kFp8;
  // Keys, then values; each flight gets its view of the group's stream.
  auto launch = [&](int which, const Plan& stream_plan, const std::vector<StreamPart>& parts) {
    if (parts.empty()) return;
    std::vector<LaunchedStream> views =
        LaunchStreams(ctx, Scratch(slot, which), c, dev, stream_plan, which == 0, parts, lead.dtype, lead.chunk_bytes,
                      lead.entry_stride, StoresChunks(lead.deflate_level), fp8, prof);
    for (size_t i = 0; i < coded.size(); ++i) coded[i]->coded[which] = std::move(views[i]);
  };
  launch(0, plan.keys, key_parts);
  KVTC_CUDA_CALL(cudaEventRecord(ctx.keys_coded[slot], ctx.stream));
  launch(1, plan.values, value_parts);
  KVTC_CUDA_CALL(cudaEventRecord(ctx.values_coded[slot], ctx.stream));
  prof.lap("launch");

  uint64_t landing_total = 0, raw_total = 0;
  for (EncodeFlight& f : flights) {
    const EncodeJob& job = *f.job;
    const uint32_t sinks = f.sinks, window = f.window, middle = f.middle;
    // The record's sections: raw sinks, coded middle, raw window, keys before values. Its memory is
    // taken now, at its largest possible size (chunks never grow), while the device works.
    auto add_raw = [&](SectionKind kind, const uint8_t* base, uint32_t first_token, uint32_t tokens) {
      if (tokens == 0) return;
      EncodePart part;
      part.section = {kind, SectionEncoding::kRaw, first_token, tokens, 0, 0, uint64_t(tokens) * row_bytes};
      part.raw = f.paged ? nullptr : base + size_t(first_token) * row_bytes;
      f.parts.push_back(part);
    };
    auto add_coded = [&](SectionKind kind, LaunchedStream& ls) {
      EncodePart part;
      part.section = {kind, ls.entry_stride ? SectionEncoding::kDeflateIndexed : SectionEncoding::kDeflateChunks, sinks,
                      middle, 0, 0, 0};
      part.coded = &ls;
      f.parts.push_back(part);
    };
    add_raw(SectionKind::kRawKeys, job.keys, 0, sinks);
    add_raw(SectionKind::kRawValues, job.values, 0, sinks);
    if (middle) {
      add_coded(SectionKind::kCodedKeys, f.coded[0]);
      add_coded(SectionKind::kCodedValues, f.coded[1]);
    }
    add_raw(SectionKind::kRawKeys, job.keys, sinks + middle, window);
    add_raw(SectionKind::kRawValues, job.values, sinks + middle, window);
    f.header_bytes = HeaderBytes(f.parts.size());
    uint64_t bound = f.header_bytes;
    for (const EncodePart& part : f.parts)
      bound += part.coded ? 8 + (8 + 4 * part.coded->max_entries) * part.coded->chunks + part.coded->payload_bytes
                          : part.section.stored_bytes;
    f.record.data = AllocateRecordMemory(bound);
    f.landing_at = landing_total;
    if (!f.record.data.get_deleter().pinned) landing_total += (bound + 63) / 64 * 64;
    f.raw_at = raw_total;
    if (f.paged) {
      for (const EncodePart& part : f.parts)
        if (!part.coded) raw_total += (part.section.stored_bytes + 255) / 256 * 256;
    }
  }
  buf.body_host.resize(std::max<uint64_t>(1, landing_total));
  if (raw_total) buf.raw_rows.resize(raw_total);
  prof.lap("alloc");
}

// Reads a launched group back into its records (out[k] for flights[k]), in two rounds: every part
// but the coded values once the keys are coded, then the coded values once they are (so each
// record's bytes hold the coded values last, whatever the section table's order: the format places
// sections by offset). Each round lays its parts out, reads the bytes the device holds (packed
// chunks, gathered or device-resident raw rows) back into the slot's pinned image on the copy
// stream, a copy per part, and copies each into its record with its CRC; the first round, raw
// window included, overlaps the values' coding. The copies go in waves of parts as they land, all
// threads on each wave (CopyCrcMany).
void FinishEncode(Context& ctx, const Calibration& c, std::vector<EncodeFlight>& flights, HostBytes* out) {
  Profiler& prof = *flights[0].prof;
  const int slot = flights[0].slot;
  EncodeSlot& buf = EncodeSlotBuffers(slot);
  struct Read {
    size_t flight, part;
    uint64_t at;  // the bytes' offset in the record
    const uint8_t* src;
    uint64_t bytes;
  };
  // Per record: where the next section goes, which parts are laid out, their CRCs, and where the
  // device's bytes land (a page-locked record, KVTC_PIN_RECORDS=1, takes them straight into place;
  // the host then only checksums them).
  struct Layout {
    uint64_t offset = 0;
    std::vector<bool> laid_out;
    std::vector<uint32_t> crc;
    std::vector<size_t> batch;  // the parts of this round, in byte order
    bool into_record = false;
    uint8_t* landing = nullptr;
  };
  std::vector<Layout> ls(flights.size());
  for (size_t k = 0; k < flights.size(); ++k) {
    EncodeFlight& f = flights[k];
    ls[k].offset = f.header_bytes;
    ls[k].laid_out.assign(f.parts.size(), false);
    ls[k].crc.assign(f.parts.size(), 0);
    ls[k].into_record = f.record.data.get_deleter().pinned;
    ls[k].landing = ls[k].into_record ? f.record.data.get() : buf.body_host.ptr + f.landing_at;
  }
  std::vector<Read> reads;
  std::vector<CopyCrcJob> copies;
  uint64_t packed_next[2] = {0, 0};  // per stream: the group's packed bytes laid out so far
  auto round = [&](cudaEvent_t ready, bool values) {
    KVTC_CUDA_CALL(cudaEventSynchronize(ready));  // chunk sizes are in pinned memory
    prof.lap(values ? "v.coded" : "k.coded");
    bool any = false;
    for (size_t k = 0; k < flights.size(); ++k) {
      EncodeFlight& f = flights[k];
      Layout& l = ls[k];
      l.batch.clear();
      for (size_t i = 0; i < f.parts.size(); ++i) {
        EncodePart& part = f.parts[i];
        if (l.laid_out[i]) continue;
        if (part.coded) {
          const int which = part.coded == &f.coded[1] ? 1 : 0;
          if (which == 1 && !values) continue;  // the values' sizes are not known yet
          SizeChunks(*part.coded);
          part.coded->packed_at = packed_next[which];  // flights in order: their packed bytes follow
          packed_next[which] += part.coded->chunk_total;
          part.section.stored_bytes = part.coded->size();
        }
        part.section.offset = l.offset;
        l.offset += part.section.stored_bytes;
        l.laid_out[i] = true;
        l.batch.push_back(i);
        any = true;
      }
    }
    if (!any) return;
    KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.copy, ready, 0));
    reads.clear();
    for (size_t k = 0; k < flights.size(); ++k) {
      EncodeFlight& f = flights[k];
      uint64_t raw_at = f.raw_at;  // next free byte of this record's gathered raw rows
      for (size_t i : ls[k].batch) {
        EncodePart& part = f.parts[i];
        const uint64_t at = part.section.offset;
        if (part.coded) {
          reads.push_back({k, i, at + part.coded->table_bytes, part.coded->s->packed.ptr + part.coded->packed_at,
                           part.coded->chunk_total});
        } else if (f.paged) {
          const bool keys = part.section.kind == SectionKind::kRawKeys;
          uint8_t* rows = buf.raw_rows.ptr + raw_at;
          raw_at += (part.section.stored_bytes + 255) / 256 * 256;
          LaunchPagedCopy(true, *f.paged, f.job->dtype, c.layers, part.section.token_offset, part.section.token_count,
                          keys ? rows : nullptr, keys ? nullptr : rows, ctx.copy);
          reads.push_back({k, i, at, rows, part.section.stored_bytes});
        } else if (f.device_input) {
          reads.push_back({k, i, at, part.raw, part.section.stored_bytes});
        }
      }
      f.raw_at = raw_at;  // the values' round gathers after the keys' rows
    }
    for (size_t r = 0; r < reads.size(); ++r) {
      const Read& rd = reads[r];
      KVTC_CUDA_CALL(cudaMemcpyAsync(ls[rd.flight].landing + rd.at, rd.src, rd.bytes, cudaMemcpyDeviceToHost, ctx.copy));
      KVTC_CUDA_CALL(cudaEventRecord(ctx.ReadEvent(r), ctx.copy));
    }
    // What needs no device bytes first (chunk tables, raw rows from host memory), then the reads.
    for (size_t k = 0; k < flights.size(); ++k) {
      EncodeFlight& f = flights[k];
      for (size_t i : ls[k].batch) {
        EncodePart& part = f.parts[i];
        uint8_t* at = f.record.data.get() + part.section.offset;
        if (part.coded) {
          LayoutChunks(*part.coded);  // while the device's bytes are on their way
          const std::vector<uint8_t>& table = part.coded->table;
          std::memcpy(at, table.data(), table.size());
          ls[k].crc[i] = Crc32c(table.data(), table.size());
        } else if (!f.paged && !f.device_input) {
          ls[k].crc[i] = ParallelCopyCrc(at, part.raw, part.section.stored_bytes);
        }
      }
    }
    prof.lap(values ? "v.tables" : "k.tables");
    auto job_of = [&](const Read& rd) {
      Layout& l = ls[rd.flight];
      uint8_t* at = flights[rd.flight].record.data.get() + rd.at;
      return CopyCrcJob{at, l.into_record ? nullptr : l.landing + rd.at, rd.bytes, 0};
    };
    auto combine = [&](const Read& rd, uint32_t read_crc) {
      uint32_t& crc = ls[rd.flight].crc[rd.part];
      crc = Crc32cCombine(crc, read_crc, rd.bytes);
    };
    // In waves of consecutive reads of up to kWaveBytes (a large read alone), each copied as soon
    // as its last read is in (the copy stream runs in order) while the next wave lands: a record
    // of megabytes per part copies part by part as before groups; a group's small parts (256-token
    // chunks: ~1 MB) together, one wave instead of a wait and a copy per part (call 52: 0.28 ms of
    // host per record before, 8B 256 x 32 paged 171.6 against 73.6 GB/s).
    constexpr uint64_t kWaveBytes = uint64_t(4) << 20;
    copies.clear();
    for (const Read& rd : reads) copies.push_back(job_of(rd));
    for (size_t begin = 0, end = 0; begin < reads.size(); begin = end) {
      uint64_t bytes = 0;
      while (end < reads.size() && (end == begin || bytes + reads[end].bytes <= kWaveBytes)) bytes += reads[end++].bytes;
      KVTC_CUDA_CALL(cudaEventSynchronize(ctx.ReadEvent(end - 1)));
      CopyCrcMany(copies.data() + begin, end - begin);
      for (size_t r = begin; r < end; ++r) combine(reads[r], copies[r].crc);
    }
    for (size_t k = 0; k < flights.size(); ++k)
      for (size_t i : ls[k].batch) flights[k].parts[i].section.crc32c = ls[k].crc[i];
  };
  round(ctx.keys_coded[slot], false);
  prof.lap("k.read back");
  round(ctx.values_coded[slot], true);
  prof.lap("v.read back");

  for (size_t k = 0; k < flights.size(); ++k) {
    EncodeFlight& f = flights[k];
    const EncodeJob& job = *f.job;
    KVTC_CHECK(std::find(ls[k].laid_out.begin(), ls[k].laid_out.end(), false) == ls[k].laid_out.end(), kInternal,
               "encode left a section unwritten");
    RecordHeader h;
    h.calibration_id = c.id;
    h.model_fingerprint = c.model_fingerprint;
    h.token_start = job.token_start;
    h.token_count = job.tokens;
    h.feature_dim = c.feature_dim();
    h.plan_id = job.plan_id;
    h.kv_dtype = job.dtype;
    h.sink_tokens = f.sinks;
    h.window_tokens = f.window;
    h.deflate_chunk_bytes = uint32_t(job.chunk_bytes);
    h.record_bytes = ls[k].offset;
    for (const EncodePart& part : f.parts) h.sections.push_back(part.section);
    WriteHeader(h, f.record.data.get());
    f.record.size = ls[k].offset;
    f.prof->report("encode");
    out[k] = std::move(f.record);
  }
}

// Coded tokens up to which consecutive sequences are fused into one group: one projection GEMM,
// one quantize and one coder launch for all of them instead of a pipeline of small ones, groups
// still pipelined over the slots (a group's records are read back and checksummed on the host
// while the next group runs). 2048: on an H200 (run o, call 50, 8B shape, 256-token chunks x 32)
// 8192 left the host's read back of 32 records after all the device work (78.9 GB/s against 63.0
// alone), 4096 and 2048 overlapped them (95.6, 98.5); 1K x 8: 167.3 at 2048 against 148.7 alone,
// 140.2 at 4096. KVTC_FUSE_TOKENS sets it (0: every sequence alone, as before fusion).
uint32_t FuseTokens() {
  static const uint32_t tokens = EnvTokens("KVTC_FUSE_TOKENS", 2048);
  return tokens;
}

// A decode in flight: checked, staged, inflated and reconstructed into scratch (LaunchDecode),
// then checked and written into its target (FinishDecode, which leaves the writes running on the
// job stream).
//
// What a decode is given: a record, the bytes it must decode to, and where its tokens go
// (contiguous rows keys_out / values_out, or record tokens [record_offset, record_offset +
// span_tokens) into a paged span).
struct DecodeItem : DeviceDecodeJob {
  const PagedRows* paged = nullptr;  // set: the tokens go into this span, not keys_out / values_out
  uint32_t record_offset = 0, span_tokens = 0;
};

// One record of a decode in flight.
struct DecodeRecord {
  DecodeItem item;
  RecordHeader h;
  size_t row_bytes = 0;
  bool direct = false;                  // page-locked record: its sections go by DMA, unstaged
  std::vector<CodedChunks> coded;       // per section (coded ones filled)
  std::vector<InflateTarget> targets;   // per section: where a coded one inflates
  std::vector<InflateLaunch> inflated;  // per section: what its inflater was given (section mode)
  std::vector<size_t> payload_at;       // per section: its payload's offset in the slot's payload buffer
  std::vector<size_t> image_at;         // per section: where its bytes start in the flight's image
};

// The records of one decode group (DecodeGroups) in flight on a slot: staged into one device
// image, inflated by one launch, each stream reconstructed by one dequantize launch and one GEMM
// over every record's coded rows, written back by one epilogue launch where the records go to one
// paged cache. A record alone inflates section by section (KVTC_DECODE_INFLATE).
struct DecodeFlight {
  int slot = 0;
  std::vector<DecodeRecord> records;
  // One inflate launch for every coded section of the group (RecordInflate, or a group of more
  // than one record): its statuses sit in slot scratch 0 and `whole` says what it was given.
  bool one_inflate = false;
  InflateLaunch whole;
  Projection projection = Projection::kBf16;  // kFp8: the fp8 reconstruction (cuda_fp8.cuh)
  std::unique_ptr<Profiler> prof;
  // The image's offsets below coded_end lie in the slot's coded buffer, the others (raw rows) in
  // its raw buffer (DecodeSlot).
  size_t coded_end = 0;
};

bool IsKeys(const Section& s) { return s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kCodedKeys; }

// The rows [lo, hi) of section s that land in the record's target (all of them, or those inside a
// paged span) and where they go; false when none do.
bool SectionTarget(const DecodeRecord& r, const Section& s, int64_t& lo, int64_t& hi, StreamRows& out) {
  const DecodeItem& it = r.item;
  const bool keys = IsKeys(s);
  lo = 0;
  hi = s.token_count;
  out = StreamRows{};
  if (it.paged) {
    const int64_t token0 = int64_t(s.token_offset) - it.record_offset;  // span token of row 0
    lo = std::max<int64_t>(0, -token0);
    hi = std::min<int64_t>(s.token_count, int64_t(it.span_tokens) - token0);
    out = {nullptr, it.paged, keys ? 0 : it.paged->st.kv, token0};
  } else {
    out.rows = static_cast<uint8_t*>(keys ? it.keys_out : it.values_out) + size_t(s.token_offset) * r.row_bytes;
  }
  return hi > lo;
}

// The coded sections of one stream of a flight whose rows land somewhere, in record order: their
// reconstructions lie one after the other (ReconstructParts' rows), the same for launch and finish.
struct CodedPart {
  size_t record = 0, section = 0;
  uint32_t row = 0;
};
std::vector<CodedPart> CodedParts(const DecodeFlight& f, bool keys) {
  std::vector<CodedPart> parts;
  uint32_t row = 0;
  for (size_t k = 0; k < f.records.size(); ++k) {
    const DecodeRecord& r = f.records[k];
    for (size_t i = 0; i < r.h.sections.size(); ++i) {
      const Section& sec = r.h.sections[i];
      int64_t lo, hi;
      StreamRows out;
      if (!IsCoded(sec.encoding) || IsKeys(sec) != keys || !SectionTarget(r, sec, lo, hi, out)) continue;
      parts.push_back({k, i, row});
      row += sec.token_count;
    }
  }
  return parts;
}

// Where each coded part of one stream of the flight goes (FinishParts' targets), in CodedParts'
// order.
std::vector<FinishTarget> FinishTargets(const DecodeFlight& f, bool keys) {
  std::vector<FinishTarget> targets;
  for (const CodedPart& part : CodedParts(f, keys)) {
    const DecodeRecord& r = f.records[part.record];
    const Section& s = r.h.sections[part.section];
    FinishTarget t;
    SectionTarget(r, s, t.lo, t.hi, t.out);
    t.tokens = s.token_count;
    t.row = part.row;
    t.pos0 = int64_t(r.h.token_start) + s.token_offset;
    targets.push_back(t);
  }
  return targets;
}

// Whether stream `keys` of the flight, whose parts go to `targets` (FinishTargets), restores
// through the fused GEMM (FusedRestoreFor).
bool FlightFused(const Calibration& c, const DecodeFlight& f, bool keys, const std::vector<FinishTarget>& targets) {
  const PlanPair& plan = c.plans[f.records[0].h.plan_id];
  return FusedRestoreFor(c, (keys ? plan.keys : plan.values).rank, keys, Bf16Reconstruction(f.records[0].h.kv_dtype),
                         f.projection == Projection::kFp8, targets);
}

// A flight's image on the device in two buffers, each free at its own time: the coded sections
// once inflated, the raw rows once written (the end of FinishDecode). So group g + 2's coded
// sections go to the device while group g + 1 reconstructs, not after group g's writes, which the
// job stream runs after group g + 1's reconstruction: the device waited for each group's copy
// (run p, call 61: the restore's device idle 2.2 of 7.1 ms, page-locked records no faster).
struct DecodeSlot {
  DeviceBuffer<uint8_t> coded;  // the records' coded sections on the device
  DeviceBuffer<uint8_t> raw;    // ... and their raw rows
  PinnedBuffer staging;         // the image on its way there (a flight's offsets, both parts)
  // Image offset `at` of flight f on the device.
  uint8_t* At(const DecodeFlight& f, size_t at) {
    return at < f.coded_end ? coded.ptr + at : raw.ptr + (at - f.coded_end);
  }
};
struct DecodeSlots {
  DecodeSlot s[kSlots];
};
DecodeSlot& DecodeSlotBuffers(int slot) { return OfCurrentDevice<DecodeSlots>().s[slot]; }

// One stream's coded sections of the flight (CodedParts; in section mode the one just inflated),
// inflated into their payloads: their reconstruction into the slot's scratch.
void ReconstructCoded(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const DecodeFlight& f,
                      bool keys, Profiler& prof) {
  const std::vector<CodedPart> parts = CodedParts(f, keys);
  if (parts.empty()) return;
  std::vector<DequantizeTarget> targets;
  for (const CodedPart& part : parts) {
    const DecodeRecord& r = f.records[part.record];
    targets.push_back({r.targets[part.section].payload, r.h.sections[part.section].token_count, part.row});
  }
  // A group shares one plan (DecodeGroups).
  const PlanPair& plan = c.plans[f.records[0].h.plan_id];
  ReconstructParts(ctx, c, dev, keys ? plan.keys : plan.values, keys, targets, f.projection == Projection::kFp8,
                   Bf16Reconstruction(f.records[0].h.kv_dtype),
                   FusedRestoreOn() && FlightFused(c, f, keys, FinishTargets(f, keys)), Scratch(f.slot, keys ? 0 : 1),
                   prof);
}

// KVTC_DECODE_INFLATE=section (default) inflates each coded section of a record decoded alone as
// soon as it is on the device, so the keys' inflation and reconstruction overlap the values'
// host-to-device copy; =record waits for the whole record and inflates keys and values in one
// launch, twice the chunks in flight for a latency-bound inflater (run j, call 24: one warp per
// scheduler on the 1B shape). A group of records always inflates in one launch.
bool RecordInflate() {
  static const bool record = EnvChoice("KVTC_DECODE_INFLATE", {"section", "record"}) == 1;
  return record;
}

// The targets of the flight's coded sections, in record and section order.
std::vector<InflateTarget> CodedTargets(const DecodeFlight& f) {
  std::vector<InflateTarget> coded;
  for (const DecodeRecord& r : f.records)
    for (size_t i = 0; i < r.h.sections.size(); ++i)
      if (IsCoded(r.h.sections[i].encoding)) coded.push_back(r.targets[i]);
  return coded;
}

// A record's header, checked against the calibration and the bytes the caller expects.
RecordHeader CheckedHeader(const Calibration& c, const DecodeItem& it) {
  RecordHeader h = ReadHeader(it.record, it.size);
  KVTC_CHECK(h.calibration_id == c.id, kCalibrationMismatch, "record was written with another calibration");
  KVTC_CHECK(h.model_fingerprint == c.model_fingerprint, kModelMismatch, "record was written for another model");
  KVTC_CHECK(h.feature_dim == c.feature_dim(), kRecordCorrupt, "record feature_dim differs from the calibration's");
  KVTC_CHECK(h.plan_id < c.plans.size(), kPlanUnknown, "record names an unknown plan");
  const size_t row_bytes = size_t(h.feature_dim) * Elem(h.kv_dtype);
  const uint64_t decoded = 2ull * h.token_count * row_bytes;
  KVTC_CHECK(decoded == it.expected_bytes, kRecordSizeMismatch,
             "record decodes to " << decoded << " bytes, the caller expects " << it.expected_bytes);
  for (const Section& s : h.sections) {
    const bool raw = s.kind == SectionKind::kRawKeys || s.kind == SectionKind::kRawValues;
    KVTC_CHECK(raw == (s.encoding == SectionEncoding::kRaw), kRecordCorrupt, "section encoding does not match its kind");
    KVTC_CHECK(!raw || s.stored_bytes == s.token_count * row_bytes, kRecordLength, "raw section has the wrong size");
  }
  return h;
}

// Launches the decode of items[first, first + count) (one group, DecodeGroups) on `slot`.
void LaunchDecode(Context& ctx, const Calibration& c, const DeviceCalibration& dev, const std::vector<DecodeItem>& items,
                  size_t first, size_t count, int slot, Projection projection, DecodeFlight& f) {
  f = DecodeFlight{};
  f.slot = slot;
  f.projection = projection;
  f.one_inflate = count > 1 || RecordInflate();
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  f.prof = std::make_unique<Profiler>(ctx.stream);
  Profiler& prof = *f.prof;
  f.records.resize(count);
  for (size_t k = 0; k < count; ++k) {
    DecodeRecord& r = f.records[k];
    r.item = items[first + k];
    r.h = CheckedHeader(c, r.item);
    r.row_bytes = size_t(r.h.feature_dim) * Elem(r.h.kv_dtype);
  }
  // One device image of everything the records hold (raw rows, and compressed chunks at 16-byte
  // aligned offsets for nvCOMP), staged through pinned memory section by section: while the host
  // stages the next section, the device copies in the previous one. A record in page-locked
  // memory whose coded sections are all indexed goes instead by one DMA per section, straight
  // from the record: its chunks then sit at any offset, which kvtc's inflater reads at full speed
  // (nvCOMP, for plain chunks, wants them aligned).
  // Each section's range of the image, reserved before any chunk table is read: a staged coded
  // section's chunks are 16-byte aligned, at most 15 bytes of padding per chunk, and its table
  // declares at most stored_bytes / 8 chunks (ParseChunkTable refuses more).
  size_t image_bytes = 0, payload_total = 0;
  bool any_staged = false;
  std::vector<std::vector<size_t>> reserve(count);  // per record and section: its image bytes
  for (size_t k = 0; k < count; ++k) {
    DecodeRecord& r = f.records[k];
    const RecordHeader& h = r.h;
    r.direct = IsPageLocked(r.item.record);
    for (const Section& s : h.sections) r.direct &= s.encoding != SectionEncoding::kDeflateChunks;
    any_staged |= !r.direct;
    const PlanPair& plan = c.plans[h.plan_id];
    const size_t n_sections = h.sections.size();
    r.image_at.assign(n_sections, 0);
    r.payload_at.assign(n_sections, 0);
    reserve[k].assign(n_sections, 0);
    for (size_t i = 0; i < n_sections; ++i) {
      const Section& s = h.sections[i];
      reserve[k][i] = (s.stored_bytes + 15) / 16 * 16;
      if (IsCoded(s.encoding)) {
        if (!r.direct && s.stored_bytes >= 4) {
          uint32_t declared = 0;
          std::memcpy(&declared, r.item.record + s.offset, 4);
          reserve[k][i] += 16 * std::min<size_t>(declared, s.stored_bytes / 8);
        }
        r.payload_at[i] = payload_total;
        payload_total += (PayloadBytes(IsKeys(s) ? plan.keys : plan.values, s.token_count) + 255) / 256 * 256;
      }
      image_bytes += reserve[k][i];
    }
    r.coded.assign(n_sections, CodedChunks{});
    r.targets.assign(n_sections, InflateTarget{});
    r.inflated.assign(n_sections, InflateLaunch{});
  }
  // Coded sections first (keys, then values, record by record), the raw sink and window rows after
  // them: the raw rows are only written by FinishDecode, so their staging overlaps the device's
  // reconstruction instead of delaying it. The image holds the sections in this order, so that
  // consecutive sections are one range of it.
  std::vector<std::pair<size_t, size_t>> order;  // (record, section)
  for (const bool coded_pass : {true, false})
    for (size_t k = 0; k < count; ++k)
      for (size_t i = 0; i < f.records[k].h.sections.size(); ++i)
        if (IsCoded(f.records[k].h.sections[i].encoding) == coded_pass) order.emplace_back(k, i);
  size_t n_coded = 0, at = 0;
  for (const auto& [k, i] : order) {
    if (IsCoded(f.records[k].h.sections[i].encoding)) {
      ++n_coded;
      f.coded_end = at + reserve[k][i];
    }
    f.records[k].image_at[i] = at;
    at += reserve[k][i];
  }
  prof.lap("staging plan");
  DecodeSlot& buf = DecodeSlotBuffers(slot);
  buf.coded.resize(std::max<size_t>(1, f.coded_end));
  buf.raw.resize(std::max<size_t>(1, image_bytes - f.coded_end));
  if (any_staged) buf.staging.resize(std::max<size_t>(1, image_bytes));
  prof.lap("buffers");
  StreamScratch& s0 = Scratch(slot, 0);
  s0.payload.resize(std::max<size_t>(4, payload_total));
  // A section that fails its checks once device work is queued: that work (scratch only) ends
  // before the slot can be reused, then the error goes up. Nothing reaches a target before
  // FinishDecode has checked every section and every inflation of the group.
  auto fail = [&]() {
    cudaStreamSynchronize(ctx.copy);
    cudaStreamSynchronize(ctx.stream);
  };
  // The slot's coded buffer is free once the slot's previous group is inflated; its raw buffer
  // once that group's rows are written, waited for before the first raw section's copy.
  KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.copy, ctx.inflated[slot], 0));
  bool raw_free = false;
  auto await_raw_free = [&]() {
    if (!raw_free) KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.copy, ctx.slot_free[slot], 0));
    raw_free = true;
  };
  // A coded section's chunk table. One that fails its checks is reported as the CRC mismatch it
  // may be, the CPU decoder's order (CRCs, then chunk tables).
  auto read_table = [&](DecodeRecord& r, size_t i) {
    const Section& sec = r.h.sections[i];
    const PlanPair& plan = c.plans[r.h.plan_id];
    try {
      r.coded[i] = ParseCodedSection(r.item.record, sec,
                                     PayloadBytes(IsKeys(sec) ? plan.keys : plan.values, sec.token_count));
    } catch (const Error&) {
      fail();
      VerifySections(r.h, r.item.record);
      throw;
    }
    prof.lap(IsKeys(sec) ? "k.table" : "v.table");
  };
  // Where a section's bytes go in the image: a raw or page-locked one as it is, a staged coded
  // one chunk by chunk at 16-byte aligned offsets (cc.staged); the pieces to copy (record
  // offsets, image offsets, sizes) and the end of its range.
  struct Pieces {
    std::vector<size_t> src_off, dst_off, sizes;
    size_t end = 0;
  };
  auto place = [&](DecodeRecord& r, size_t i) {
    const Section& sec = r.h.sections[i];
    const bool coded = IsCoded(sec.encoding);
    Pieces ps;
    ps.end = r.image_at[i];
    auto piece = [&](size_t src, size_t n) {
      ps.src_off.push_back(src);
      ps.dst_off.push_back(ps.end);
      ps.sizes.push_back(n);
      ps.end += (n + 15) / 16 * 16;
    };
    if (r.direct || !coded) piece(sec.offset, sec.stored_bytes);
    if (coded) {
      CodedChunks& cc = r.coded[i];
      cc.staged.resize(cc.raw.size());
      for (size_t j = 0; j < cc.raw.size(); ++j) {
        if (r.direct) {
          cc.staged[j] = r.image_at[i] + cc.src[j];
        } else {
          cc.staged[j] = ps.end;
          piece(cc.section_offset + cc.src[j], cc.stored[j]);
        }
      }
      r.targets[i] = {&cc, s0.payload.ptr + r.payload_at[i]};
    }
    return ps;
  };
  // A page-locked record's section: its DMA starts at once, and the host checks its CRC while the
  // copy runs, before any kernel reads the bytes. Measured on an H200 (run m, call 36, 8B shape 8K
  // batch 1): a CRC pass over the whole record before the first copy held the restore back 1.09 ms.
  auto send_direct = [&](const DecodeRecord& r, size_t i) {
    const Section& sec = r.h.sections[i];
    KVTC_CUDA_CALL(cudaMemcpyAsync(buf.At(f, r.image_at[i]), r.item.record + sec.offset, sec.stored_bytes,
                                   cudaMemcpyHostToDevice, ctx.copy));
  };
  // Record k's section i read with CRC `crc`: a mismatch fails the job (its device work ends first).
  auto require_crc = [&](size_t k, size_t i, uint32_t crc) {
    if (crc == f.records[k].h.sections[i].crc32c) return;
    fail();
    KVTC_CHECK(false, kRecordCorrupt,
               (count > 1 ? "record " + std::to_string(first + k) + " " : std::string()) << "section " << i
                                                                                   << " CRC32C mismatch");
  };
  // A staged section's CRC32C from its table's bytes and the CRC its chunks' copy computed.
  auto staged_crc = [&](const DecodeRecord& r, size_t i, uint32_t chunks_crc) {
    const Section& sec = r.h.sections[i];
    const CodedChunks* cc = IsCoded(sec.encoding) ? &r.coded[i] : nullptr;
    const size_t table = !cc ? 0 : cc->src.empty() ? sec.stored_bytes : cc->src[0];
    return Crc32cCombine(Crc32c(r.item.record + sec.offset, table), chunks_crc, sec.stored_bytes - table);
  };
  // Every coded section is on the device (or on its way, before `staged`): one inflation for all
  // of them, then one reconstruction per stream.
  auto inflate_all = [&]() {
    KVTC_CUDA_CALL(cudaEventRecord(ctx.staged[slot], ctx.copy));
    KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.stream, ctx.staged[slot], 0));
    f.whole = LaunchInflate(ctx, s0, CodedTargets(f), buf.coded.ptr, s0.payload.ptr);
    KVTC_CUDA_CALL(cudaEventRecord(ctx.inflated[slot], ctx.stream));
    prof.mark("inflate");
    prof.lap("inflate.launch");
    ReconstructCoded(ctx, c, dev, f, /*keys=*/true, prof);
    ReconstructCoded(ctx, c, dev, f, /*keys=*/false, prof);
  };
  if (!f.one_inflate) {
    // Section mode (a record alone): each section staged and sent in turn, a coded one inflated
    // and reconstructed as soon as it is on the device, so the values' table and staging overlap
    // the keys' inflation.
    for (const auto& [k, i] : order) {
      DecodeRecord& r = f.records[k];
      const Section& sec = r.h.sections[i];
      const bool keys = IsKeys(sec), coded = IsCoded(sec.encoding);
      if (coded) read_table(r, i);
      if (!coded) await_raw_free();
      const Pieces ps = place(r, i);
      if (r.direct) {
        send_direct(r, i);
        require_crc(k, i, Crc32cParallel(r.item.record + sec.offset, sec.stored_bytes));
      } else {
        // One copy per section: staging in 4 MiB pieces, each sent as soon as staged, measured
        // slower on an H200 (2026-11-30, 8B shape 8K: 76.7 / 108.2 GB/s against 84.9 / 125.6) and
        // again no faster in run l (call 33: decode 181.4 / 192.1 against 188.1 / 189.8 at batch 1).
        const uint32_t chunks_crc = ParallelCopyChunksCrc(buf.staging.ptr, ps.dst_off.data(), r.item.record,
                                                          ps.src_off.data(), ps.sizes.data(), ps.sizes.size());
        require_crc(k, i, staged_crc(r, i, chunks_crc));
        KVTC_CUDA_CALL(cudaMemcpyAsync(buf.At(f, r.image_at[i]), buf.staging.ptr + r.image_at[i],
                                       ps.end - r.image_at[i], cudaMemcpyHostToDevice, ctx.copy));
      }
      prof.lap(keys ? "k.stage" : "v.stage");
      if (!coded) continue;
      KVTC_CUDA_CALL(cudaEventRecord(ctx.staged[slot], ctx.copy));
      KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.stream, ctx.staged[slot], 0));
      r.inflated[i] = LaunchInflate(ctx, Scratch(slot, keys ? 0 : 1), {r.targets[i]}, buf.coded.ptr, s0.payload.ptr);
      KVTC_CUDA_CALL(cudaEventRecord(ctx.inflated[slot], ctx.stream));
      prof.mark(keys ? "k.inflate" : "v.inflate");
      prof.lap(keys ? "k.launch" : "v.launch");
      ReconstructCoded(ctx, c, dev, f, keys, prof);
    }
  } else {
    // A group: every chunk table first, then the sections staged in waves of about 4 MiB, each
    // wave's copies and CRCs over all threads at once (ParallelCopyChunksCrcMany) and sent as one
    // copy (a page-locked record's sections by their own DMA, checksummed together while it runs:
    // CopyCrcMany), the inflation queued after the wave holding the last coded section. On an H200
    // (run p, call 58, 8B shape, 256-token records x 32): 147.9 GB/s against 113.8 staged a
    // section at a time (call 57).
    for (size_t o = 0; o < n_coded; ++o) read_table(f.records[order[o].first], order[o].second);
    std::vector<Pieces> pieces(order.size());
    for (size_t o = 0; o < order.size(); ++o) pieces[o] = place(f.records[order[o].first], order[o].second);
    constexpr size_t kWave = size_t(4) << 20;
    for (size_t lo = 0; lo < order.size();) {
      size_t hi = lo, bytes = 0;
      // A wave never holds both coded and raw sections: the inflation follows the last coded one.
      while (hi < order.size() && (hi == lo || (bytes < kWave && (hi < n_coded) == (lo < n_coded)))) {
        bytes += f.records[order[hi].first].h.sections[order[hi].second].stored_bytes;
        ++hi;
      }
      std::vector<ChunkCopy> copies;
      std::vector<size_t> copied;  // order index of each staged section
      std::vector<CopyCrcJob> checked;  // page-locked sections: sent at once, checksummed together
      std::vector<size_t> sent;
      if (lo >= n_coded) await_raw_free();
      for (size_t o = lo; o < hi; ++o) {
        DecodeRecord& r = f.records[order[o].first];
        if (r.direct) {
          const Section& sec = r.h.sections[order[o].second];
          send_direct(r, order[o].second);
          checked.push_back({const_cast<uint8_t*>(r.item.record + sec.offset), nullptr, sec.stored_bytes});
          sent.push_back(o);
          continue;
        }
        const Pieces& ps = pieces[o];
        copies.push_back({buf.staging.ptr, ps.dst_off.data(), r.item.record, ps.src_off.data(), ps.sizes.data(),
                          ps.sizes.size()});
        copied.push_back(o);
      }
      ParallelCopyChunksCrcMany(copies.data(), copies.size());
      CopyCrcMany(checked.data(), checked.size());
      for (size_t j = 0; j < sent.size(); ++j) require_crc(order[sent[j]].first, order[sent[j]].second, checked[j].crc);
      for (size_t j = 0; j < copied.size(); ++j) {
        const auto [k, i] = order[copied[j]];
        require_crc(k, i, staged_crc(f.records[k], i, copies[j].crc));
      }
      // The staged sections as ranges of the image, consecutive ones merged into one copy.
      for (size_t j = 0; j < copied.size();) {
        const size_t begin = f.records[order[copied[j]].first].image_at[order[copied[j]].second];
        size_t end = pieces[copied[j]].end;
        for (++j; j < copied.size() && copied[j] == copied[j - 1] + 1; ++j) end = pieces[copied[j]].end;
        KVTC_CUDA_CALL(cudaMemcpyAsync(buf.At(f, begin), buf.staging.ptr + begin, end - begin,
                                       cudaMemcpyHostToDevice, ctx.copy));
      }
      prof.lap(lo < n_coded ? "coded.stage" : "raw.stage");
      if (hi == n_coded) inflate_all();
      lo = hi;
    }
  }
  // The raw rows' copies, last on the copy stream, come before FinishDecode's writes.
  KVTC_CUDA_CALL(cudaEventRecord(ctx.staged[slot], ctx.copy));
  KVTC_CUDA_CALL(cudaStreamWaitEvent(ctx.stream, ctx.staged[slot], 0));
  KVTC_CUDA_CALL(cudaEventRecord(ctx.reconstructed[slot], ctx.stream));
  prof.lap("launch");
}

void FinishDecode(Context& ctx, const Calibration& c, const DeviceCalibration& dev, DecodeFlight& f) {
  Profiler& prof = *f.prof;
  KVTC_CUDA_CALL(cudaEventSynchronize(ctx.reconstructed[f.slot]));
  prof.lap("inflate+reconstruct");
  if (f.one_inflate) {
    CheckInflate(Scratch(f.slot, 0), CodedTargets(f), f.whole);
  } else {
    for (const DecodeRecord& r : f.records)
      for (size_t i = 0; i < r.h.sections.size(); ++i)
        if (IsCoded(r.h.sections[i].encoding))
          CheckInflate(Scratch(f.slot, IsKeys(r.h.sections[i]) ? 0 : 1), {r.targets[i]}, r.inflated[i]);
  }
  // Every check has passed: only now is a target row written. The raw sections, record by record.
  DecodeSlot& buf = DecodeSlotBuffers(f.slot);
  const KvDtype dtype = f.records[0].h.kv_dtype;  // a group shares one (DecodeGroups)
  for (const DecodeRecord& r : f.records) {
    for (size_t i = 0; i < r.h.sections.size(); ++i) {
      const Section& s = r.h.sections[i];
      const bool keys = IsKeys(s);
      int64_t lo, hi;
      StreamRows out;
      if (s.encoding != SectionEncoding::kRaw || !SectionTarget(r, s, lo, hi, out)) continue;
      uint8_t* src = buf.At(f, r.image_at[i]) + size_t(lo) * r.row_bytes;
      if (r.item.paged) {
        LaunchPagedCopy(false, *r.item.paged, dtype, c.layers, uint32_t(out.token0 + lo), uint32_t(hi - lo),
                        keys ? src : nullptr, keys ? nullptr : src, ctx.stream);
      } else {
        KVTC_CUDA_CALL(cudaMemcpyAsync(const_cast<void*>(out.rows), src, s.stored_bytes, cudaMemcpyDeviceToDevice,
                                       ctx.stream));
      }
    }
  }
  // The coded rows, a stream at a time over the group.
  for (const bool keys : {true, false}) {
    const std::vector<FinishTarget> targets = FinishTargets(f, keys);
    if (FlightFused(c, f, keys, targets))
      FinishFused(ctx, c, dev, keys, targets, Scratch(f.slot, keys ? 0 : 1), prof);
    else
      FinishParts(ctx, c, dev, keys, dtype, targets, Scratch(f.slot, keys ? 0 : 1), prof);
  }
  KVTC_CUDA_CALL(cudaEventRecord(ctx.slot_free[f.slot], ctx.stream));
  prof.lap("finish.launch");
}

// Coded tokens up to which consecutive records are decoded as one group: KVTC_DECODE_FUSE_TOKENS,
// by default FuseTokens().
uint32_t DecodeFuseTokens() {
  static const uint32_t tokens = EnvTokens("KVTC_DECODE_FUSE_TOKENS", FuseTokens());
  return tokens;
}

// Consecutive records as decode groups ({first, count}): same plan and dtype (each record's header
// read first; a bad one fails the batch before any device work), at most DecodeFuseTokens() coded
// tokens together (a longer record alone). KVTC_FUSE_TOKENS=0: every record alone. A smaller first
// group, to start the device sooner, measured no faster (run q, call 62: 8B 256 x 16 paged 142.3
// GB/s with 512 tokens first against 151.0).
std::vector<std::pair<size_t, size_t>> DecodeGroups(const std::vector<DecodeItem>& items) {
  std::vector<std::pair<size_t, size_t>> groups;
  const uint64_t limit = DecodeFuseTokens();
  uint64_t tokens = 0;
  uint16_t lead_plan = 0;
  KvDtype lead_dtype = KvDtype::kBfloat16;
  for (size_t b = 0; b < items.size(); ++b) {
    const RecordHeader h = ReadHeader(items[b].record, items[b].size);
    const uint32_t middle = h.token_count - h.sink_tokens - h.window_tokens;
    if (!groups.empty() && h.plan_id == lead_plan && h.kv_dtype == lead_dtype && tokens + middle <= limit) {
      ++groups.back().second;
      tokens += middle;
      continue;
    }
    groups.emplace_back(b, 1);
    tokens = middle;
    lead_plan = h.plan_id;
    lead_dtype = h.kv_dtype;
  }
  return groups;
}

// Decodes every item: groups (DecodeGroups) pipelined over the slots, group g + 1 staged and
// reconstructed while group g is checked and written. A bad record fails the batch (no target is
// written by a group with a bad record; groups before it may have been). `wait`: returns once the
// last write is done; otherwise once it is queued on the job stream.
std::vector<RecordHeader> DecodePipelined(const Calibration& c, const DeviceCalibration& dev,
                                          const std::vector<DecodeItem>& items, Projection projection, bool wait) {
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  std::vector<RecordHeader> out(items.size());
  if (items.empty()) return out;
  const std::vector<std::pair<size_t, size_t>> groups = DecodeGroups(items);
  DecodeFlight flights[kSlots];
  // Each group's profile is reported once the job is done: reporting it when its slot is reused
  // waited for its last marks there and held the host back (the profiled pipeline ran serialized).
  std::vector<std::unique_ptr<Profiler>> profiles;
  auto launch = [&](size_t g) {
    DecodeFlight& f = flights[g % kSlots];
    if (g >= kSlots) profiles.push_back(std::move(f.prof));
    LaunchDecode(ctx, c, dev, items, groups[g].first, groups[g].second, int(g % kSlots), projection, f);
  };
  try {
    launch(0);
    for (size_t g = 0; g < groups.size(); ++g) {
      if (g + 1 < groups.size()) launch(g + 1);
      DecodeFlight& f = flights[g % kSlots];
      FinishDecode(ctx, c, dev, f);
      for (size_t k = 0; k < f.records.size(); ++k) out[groups[g].first + k] = f.records[k].h;
    }
  } catch (...) {
    // The groups still in flight finish before their slots' buffers can be reused.
    cudaStreamSynchronize(ctx.copy);
    cudaStreamSynchronize(ctx.stream);
    throw;
  }
  if (wait) KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  for (size_t g = groups.size() > kSlots ? groups.size() - kSlots : 0; g < groups.size(); ++g) {
    flights[g % kSlots].prof->lap("reconstruct");
    profiles.push_back(std::move(flights[g % kSlots].prof));
  }
  for (const auto& p : profiles) p->report("decode");
  return out;
}

// Consecutive jobs as fused groups ({first, count}): same plan, dtype, chunking and projection,
// at most FuseTokens() coded tokens together (a longer job alone).
std::vector<std::pair<size_t, size_t>> FuseGroups(const std::vector<EncodeJob>& jobs) {
  std::vector<std::pair<size_t, size_t>> groups;
  const uint64_t limit = FuseTokens();
  uint64_t tokens = 0;
  for (size_t b = 0; b < jobs.size(); ++b) {
    const EncodeJob& j = jobs[b];
    const uint32_t middle = SectionTokensOf(j).middle;
    if (!groups.empty()) {
      const EncodeJob& lead = jobs[groups.back().first];
      const bool same = j.plan_id == lead.plan_id && j.dtype == lead.dtype && j.chunk_bytes == lead.chunk_bytes &&
                        j.entry_stride == lead.entry_stride && j.projection == lead.projection &&
                        StoresChunks(j.deflate_level) == StoresChunks(lead.deflate_level);
      if (same && tokens + middle <= limit) {
        ++groups.back().second;
        tokens += middle;
        continue;
      }
    }
    groups.emplace_back(b, 1);
    tokens = middle;
  }
  return groups;
}

// EncodeMany over contiguous rows, or over paged spans (paged[b] for jobs[b]): fused groups
// (FuseGroups), pipelined over the slots.
std::vector<HostBytes> EncodePipelined(const Calibration& c, const DeviceCalibration& dev,
                                       const std::vector<EncodeJob>& jobs, bool device_input,
                                       const std::vector<PagedRows>* paged) {
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  std::vector<HostBytes> out(jobs.size());
  const std::vector<std::pair<size_t, size_t>> groups = FuseGroups(jobs);
  std::vector<EncodeFlight> flights[kSlots];
  auto launch = [&](size_t g) {
    LaunchEncode(ctx, c, dev, jobs, groups[g].first, groups[g].second, device_input, paged, int(g % kSlots),
                 flights[g % kSlots]);
  };
  if (jobs.empty()) return out;
  launch(0);
  for (size_t g = 0; g < groups.size(); ++g) {
    // Group g + 1's device work is queued before group g is read back and assembled.
    if (g + 1 < groups.size()) launch(g + 1);
    FinishEncode(ctx, c, flights[g % kSlots], out.data() + groups[g].first);
  }
  // The caller frees these records together once stored; the record pool may then keep the
  // batch's memory for the next batch (record_memory.h).
  size_t batch_bytes = 0;
  for (const HostBytes& r : out) batch_bytes += r.data.get_deleter().capacity;
  NoteRecordBatch(batch_bytes);
  return out;
}

}  // namespace

// One job is a batch of one: a single group through the same path (and the same record pool rule).
HostBytes Encode(const Calibration& c, const DeviceCalibration& dev, const EncodeJob& job, bool device_input) {
  return std::move(EncodePipelined(c, dev, {job}, device_input, nullptr)[0]);
}

std::vector<HostBytes> EncodeMany(const Calibration& c, const DeviceCalibration& dev, const std::vector<EncodeJob>& jobs,
                                  bool device_input) {
  return EncodePipelined(c, dev, jobs, device_input, nullptr);
}

RecordHeader DecodeToDevice(const Calibration& c, const DeviceCalibration& dev, const uint8_t* record, size_t size,
                            uint64_t expected_bytes, void* keys_out, void* values_out, Projection projection) {
  return DecodeManyToDevice(c, dev, {DeviceDecodeJob{record, size, expected_bytes, keys_out, values_out}}, projection)[0];
}

std::vector<RecordHeader> DecodeManyToDevice(const Calibration& c, const DeviceCalibration& dev,
                                             const std::vector<DeviceDecodeJob>& jobs, Projection projection) {
  std::vector<DecodeItem> items(jobs.size());
  for (size_t b = 0; b < jobs.size(); ++b) items[b] = {jobs[b]};
  return DecodePipelined(c, dev, items, projection, /*wait=*/true);
}

std::vector<HostBytes> EncodeFromPaged(const Calibration& c, const DeviceCalibration& dev,
                                       const std::vector<EncodeJob>& jobs, const std::vector<PagedRows>& paged) {
  return EncodePipelined(c, dev, jobs, /*device_input=*/true, &paged);
}

std::vector<RecordHeader> DecodeIntoPaged(const Calibration& c, const DeviceCalibration& dev,
                                          const std::vector<PagedDecode>& decodes, KvDtype cache_dtype,
                                          cudaEvent_t done, Projection projection) {
  std::vector<DecodeItem> items(decodes.size());
  for (size_t b = 0; b < decodes.size(); ++b) {
    const PagedDecode& d = decodes[b];
    const RecordHeader peek = ReadHeader(d.record, d.size);
    KVTC_CHECK(peek.kv_dtype == cache_dtype, kRecordSizeMismatch,
               "record " << b << ": its dtype differs from the registered cache's");
    const uint64_t expected = 2ull * d.record_tokens * c.feature_dim() * Elem(cache_dtype);
    items[b] = {{d.record, d.size, expected}, d.rows, d.record_offset, d.tokens};
  }
  const std::vector<RecordHeader> out = DecodePipelined(c, dev, items, projection, /*wait=*/false);
  // The client's stream waits for `done`; the slots' buffers are reused in stream order.
  KVTC_CUDA_CALL(cudaEventRecord(done, ThreadContext().stream));
  return out;
}

DecodeResult Decode(const Calibration& c, const DeviceCalibration& dev, const uint8_t* record, size_t size,
                    uint64_t expected_bytes, Projection projection) {
  // Structure first (no device memory is touched for a bad record), then decode on the device.
  const RecordHeader peek = ReadHeader(record, size);
  const size_t half = size_t(expected_bytes / 2);
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  struct Rows {
    DeviceBuffer<uint8_t> b;
  };
  DeviceBuffer<uint8_t>& rows = OfCurrentDevice<Rows>().b;
  const uint64_t decoded = 2ull * peek.token_count * peek.feature_dim * Elem(peek.kv_dtype);
  KVTC_CHECK(decoded == expected_bytes, kRecordSizeMismatch,
             "record decodes to " << decoded << " bytes, the caller expects " << expected_bytes);
  rows.resize(std::max<size_t>(1, 2 * half));
  DecodeResult out;
  out.header = DecodeToDevice(c, dev, record, size, expected_bytes, rows.ptr, rows.ptr + half, projection);
  out.keys.resize(half);
  out.values.resize(half);
  KVTC_CUDA_CALL(cudaMemcpy(out.keys.data(), rows.ptr, half, cudaMemcpyDeviceToHost));
  KVTC_CUDA_CALL(cudaMemcpy(out.values.data(), rows.ptr + half, half, cudaMemcpyDeviceToHost));
  return out;
}

std::vector<uint8_t> QuantizeOnDevice(const float* d, int64_t tokens, const Plan& plan) {
  Context& ctx = ThreadContext();
  StreamScratch& s = Scratch(0, 0);
  const size_t bytes = PayloadBytes(plan, tokens);
  s.d.resize(std::max<size_t>(1, size_t(tokens) * plan.rank));
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.d.ptr, d, size_t(tokens) * plan.rank * 4, cudaMemcpyHostToDevice, ctx.stream));
  s.payload.resize(bytes + 4);
  KVTC_CUDA_CALL(cudaMemsetAsync(s.payload.ptr, 0, bytes + 4, ctx.stream));
  LaunchQuantize(ctx, s, plan, {QuantizeTarget{0, uint32_t(tokens), 0}}, plan.rank);
  std::vector<uint8_t> out(bytes);
  KVTC_CUDA_CALL(cudaMemcpyAsync(out.data(), s.payload.ptr, bytes, cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  return out;
}

std::vector<float> DequantizeOnDevice(const uint8_t* payload, int64_t tokens, const Plan& plan) {
  Context& ctx = ThreadContext();
  StreamScratch& s = Scratch(0, 0);
  const size_t bytes = PayloadBytes(plan, tokens);
  s.payload.resize(bytes + 4);
  KVTC_CUDA_CALL(cudaMemcpyAsync(s.payload.ptr, payload, bytes, cudaMemcpyHostToDevice, ctx.stream));
  s.dq.resize(std::max<size_t>(1, size_t(tokens) * plan.rank));
  LaunchDequantize(plan, {DequantizeTarget{s.payload.ptr, uint32_t(tokens), 0}}, s.dq.ptr, plan.rank, s, ctx.stream);
  std::vector<__nv_bfloat16> host(size_t(tokens) * plan.rank);
  KVTC_CUDA_CALL(cudaMemcpyAsync(host.data(), s.dq.ptr, host.size() * 2, cudaMemcpyDeviceToHost, ctx.stream));
  KVTC_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
  std::vector<float> out(host.size());
  for (size_t i = 0; i < host.size(); ++i) out[i] = __bfloat162float(host[i]);
  return out;
}

BenchFigures Bench(const Calibration& c, const DeviceCalibration& dev, const uint16_t* host_keys,
                   const uint16_t* host_values, uint32_t tokens, uint32_t batch, uint16_t plan_id, int reps, bool paged,
                   size_t chunk_bytes, Projection projection, uint32_t window_tokens, int deflate_level) {
  KVTC_CUDA_CALL(cudaSetDevice(dev.device));
  Context& ctx = ThreadContext();
  const uint32_t p = c.feature_dim();
  const size_t bytes = size_t(tokens) * p * 2;
  // Device-resident KV of `batch` sequences (the same content each: timing, not statistics): as
  // contiguous rows, or (paged) in a cache of vLLM's FlashAttention layout, [2, blocks, 16 slots,
  // kv_heads, head_dim] per layer, each sequence on a shuffled set of blocks.
  const size_t kv_count = paged ? 1 : batch;
  DeviceBuffer<uint8_t> kv(2 * bytes * kv_count);
  for (size_t b = 0; b < kv_count; ++b) {
    KVTC_CUDA_CALL(cudaMemcpy(kv.ptr + 2 * b * bytes, host_keys, bytes, cudaMemcpyHostToDevice));
    KVTC_CUDA_CALL(cudaMemcpy(kv.ptr + (2 * b + 1) * bytes, host_values, bytes, cudaMemcpyHostToDevice));
  }
  DeviceBuffer<uint8_t> restored(paged ? 1 : 2 * bytes * batch);  // contiguous decode target
  constexpr uint32_t kBlock = 16;
  const uint32_t seq_blocks = (tokens + kBlock - 1) / kBlock;
  const uint32_t num_blocks = seq_blocks * batch;
  DeviceBuffer<uint8_t> cache;
  DeviceBuffer<uint32_t> block_ids;
  std::vector<PagedRows> spans;
  cudaEvent_t done = nullptr;
  if (paged) {
    const int64_t slot = int64_t(c.kv_heads) * c.head_dim, block = kBlock * slot, kv_stride = int64_t(num_blocks) * block;
    const size_t layer_bytes = size_t(2 * kv_stride) * 2;
    cache.resize(layer_bytes * c.layers);
    std::vector<uint32_t> ids(num_blocks);
    for (uint32_t i = 0; i < num_blocks; ++i) ids[i] = i;
    uint64_t state = 88172645463325252ull;  // xorshift: a fixed shuffle
    for (uint32_t i = num_blocks - 1; i > 0; --i) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      std::swap(ids[i], ids[state % (i + 1)]);
    }
    block_ids.resize(num_blocks);
    KVTC_CUDA_CALL(cudaMemcpy(block_ids.ptr, ids.data(), num_blocks * 4, cudaMemcpyHostToDevice));
    PagedRows base;
    for (uint32_t l = 0; l < c.layers; ++l) base.bases.base[l] = cache.ptr + l * layer_bytes;
    base.st = {kv_stride, block, slot, int64_t(c.head_dim), 1};
    base.block_size = kBlock;
    base.kv_heads = c.kv_heads;
    base.head_dim = c.head_dim;
    for (uint32_t b = 0; b < batch; ++b) {
      PagedRows span = base;
      span.block_ids = block_ids.ptr + size_t(b) * seq_blocks;
      spans.push_back(span);
    }
    KVTC_CUDA_CALL(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  }
  EncodeJob job;
  job.dtype = KvDtype::kBfloat16;
  job.tokens = tokens;
  job.plan_id = plan_id;
  job.chunk_bytes = chunk_bytes;  // indexed chunks: entry points every chunk_bytes / 32
  job.projection = projection;
  job.window_tokens = window_tokens;
  job.deflate_level = deflate_level;  // 0: chunks stored, no coder
  const bool fp8 = projection == Projection::kFp8;
  BenchFigures fig;
  std::vector<HostBytes> records(batch);
  auto now = [] { return std::chrono::steady_clock::now(); };
  std::vector<double> enc, dec;
  size_t first_record_bytes = 0;
  for (int r = 0; r < reps + 1; ++r) {
    // Paged: each repetition starts from the original KV, not from the last one's (lossy)
    // restore, which would be encoded into a record of another size each time (most likely what
    // run e's paged batch-1 rows measured: the slot buffers growing at every repetition).
    for (uint32_t b = 0; b < batch && paged; ++b)
      LaunchPagedCopy(false, spans[b], KvDtype::kBfloat16, c.layers, 0, tokens, kv.ptr, kv.ptr + bytes, ctx.stream);
    KVTC_CUDA_CALL(cudaDeviceSynchronize());
    // The last repetition's records are freed first, as a sidecar frees a record once stored:
    // their memory returns to the record pool (record_memory.h) for this repetition's records.
    records.clear();
    const RecordPoolStats pool_before = RecordPoolStatistics();
    auto t0 = now();
    std::vector<EncodeJob> jobs(batch, job);
    for (uint32_t b = 0; b < batch && !paged; ++b) {
      jobs[b].keys = kv.ptr + 2 * b * bytes;
      jobs[b].values = kv.ptr + (2 * b + 1) * bytes;
    }
    records = EncodePipelined(c, dev, jobs, /*device_input=*/true, paged ? &spans : nullptr);
    auto t1 = now();
    if (paged) {
      std::vector<PagedDecode> decodes(batch);
      for (uint32_t b = 0; b < batch; ++b)
        decodes[b] = {records[b].data.get(), records[b].size, &spans[b], 0, tokens, tokens};
      DecodeIntoPaged(c, dev, decodes, KvDtype::kBfloat16, done, projection);
      KVTC_CUDA_CALL(cudaEventSynchronize(done));
    } else {
      std::vector<DeviceDecodeJob> decodes(batch);
      for (uint32_t b = 0; b < batch; ++b) {
        decodes[b] = {records[b].data.get(), records[b].size, 2 * bytes, restored.ptr + 2 * b * bytes,
                      restored.ptr + (2 * b + 1) * bytes};
      }
      DecodeManyToDevice(c, dev, decodes, projection);
    }
    auto t2 = now();
    // Every repetition encodes the same KV, so it must write the same record.
    if (r == 0) first_record_bytes = records[0].size;
    KVTC_CHECK(records[0].size == first_record_bytes, kInternal,
               "bench: repetition " << r << " encoded " << records[0].size << " bytes, the first " << first_record_bytes);
    if (r == 0) continue;  // warm-up: handles, workspaces, module load
    const RecordPoolStats pool_after = RecordPoolStatistics();
    fig.pool_hits += pool_after.hits - pool_before.hits;
    fig.pool_misses += pool_after.misses - pool_before.misses;
    enc.push_back(std::chrono::duration<double>(t1 - t0).count());
    dec.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  if (done) cudaEventDestroy(done);
  // The figures are only worth something if the batched paths did the work: every sequence holds
  // the same tokens, so every record must equal the first, and (contiguous) every restored
  // sequence the first one.
  for (uint32_t b = 1; b < batch; ++b) {
    KVTC_CHECK(records[b].size == records[0].size &&
                   std::memcmp(records[b].data.get(), records[0].data.get(), records[0].size) == 0,
               kInternal, "bench: sequence " << b << " of the batch encoded to a different record");
  }
  if (!paged && batch > 1) {
    std::vector<uint8_t> first(2 * bytes), other(2 * bytes);
    KVTC_CUDA_CALL(cudaMemcpy(first.data(), restored.ptr, 2 * bytes, cudaMemcpyDeviceToHost));
    for (uint32_t b = 1; b < batch; ++b) {
      KVTC_CUDA_CALL(cudaMemcpy(other.data(), restored.ptr + 2 * b * bytes, 2 * bytes, cudaMemcpyDeviceToHost));
      KVTC_CHECK(first == other, kInternal, "bench: sequence " << b << " of the batch restored differently");
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  fig.encode_s = median(enc);
  fig.decode_s = median(dec);
  fig.record_bytes = records[0].size;
  const RecordHeader h = ReadHeader(records[0].data.get(), records[0].size);
  for (const Section& s : h.sections) {
    if (IsCoded(s.encoding)) {
      fig.coded_bytes += s.stored_bytes;
      fig.coded_tokens = s.token_count;
    }
  }
  // Baselines in the same process: cuBLAS GEMMs of the pipeline's shapes, and a raw D2H copy.
  // The pipeline runs one GEMM per fused group of sequences each way (FuseGroups, DecodeGroups; a
  // sequence of more coded tokens than a group takes runs alone), so the baseline is the GEMM of each group's coded
  // tokens, groups of one size timed once and counted as often as they occur (device memory stays
  // bounded at one group, or one 32K-token sequence of the 8B shape).
  const PlanPair& plan = c.plans[plan_id];
  const uint32_t m = fig.coded_tokens;
  // coded tokens of a group -> groups of that size, each direction's (the decode's from the records)
  std::map<uint32_t, uint32_t> group_counts[2];
  for (const auto& g : FuseGroups(std::vector<EncodeJob>(batch, job))) ++group_counts[1][uint32_t(g.second) * m];
  std::vector<DecodeItem> decoded(batch);
  for (uint32_t b = 0; b < batch; ++b) decoded[b] = {{records[b].data.get(), records[b].size}};
  for (const auto& g : DecodeGroups(decoded)) ++group_counts[0][uint32_t(g.second) * m];
  const uint32_t rows_max =
      std::max({group_counts[0].rbegin()->first, group_counts[1].rbegin()->first, uint32_t(1)});
  DeviceBuffer<__nv_bfloat16> a(size_t(rows_max) * p);
  DeviceBuffer<float> out(size_t(PadFp8(rows_max)) * p);  // fp8: rows padded to 16
  KVTC_CUDA_CALL(cudaMemset(a.ptr, 0, a.count * 2));
  KVTC_CUDA_CALL(cudaMemcpy(a.ptr, kv.ptr, std::min(a.count * 2, kv.count), cudaMemcpyDeviceToDevice));
  cudaEvent_t e0, e1;
  KVTC_CUDA_CALL(cudaEventCreate(&e0));
  KVTC_CUDA_CALL(cudaEventCreate(&e1));
  // Median seconds of `work` on the job stream over `reps` timed runs after a warm-up.
  auto timed = [&](auto&& work) {
    std::vector<double> ts;
    for (int r = 0; r < reps + 1; ++r) {
      KVTC_CUDA_CALL(cudaEventRecord(e0, ctx.stream));
      work();
      KVTC_CUDA_CALL(cudaEventRecord(e1, ctx.stream));
      KVTC_CUDA_CALL(cudaEventSynchronize(e1));
      float ms = 0;
      KVTC_CUDA_CALL(cudaEventElapsedTime(&ms, e0, e1));
      if (r > 0) ts.push_back(ms / 1e3);
    }
    return median(ts);
  };
  // Seconds of the pipeline's GEMMs: gemms(encode_dir, rows) timed once per group size.
  auto over_groups = [&](auto&& gemms, bool encode_dir) {
    double total = 0;
    for (const auto& g : group_counts[encode_dir]) total += g.second * timed([&] { gemms(encode_dir, g.first); });
    return total;
  };
  // The bf16 GEMMs of both streams, in the pipeline's own dimensions and output types (the decode's
  // bf16 when it reconstructs in bf16: Bf16Reconstruction).
  const cudaDataType_t decode_out = Bf16Reconstruction(job.dtype) ? CUDA_R_16BF : CUDA_R_32F;
  auto bf16_gemms = [&](bool encode_dir, uint32_t rows) {
    for (int k = 0; k < 2; ++k) {
      const uint32_t rank = k == 0 ? plan.keys.rank : plan.values.rank;
      const __nv_bfloat16* basis = k == 0 ? dev.basis_keys.ptr : dev.basis_values.ptr;
      const int ldb = int(k == 0 ? dev.ld_keys : dev.ld_values);
      if (rank == 0 || rows == 0) continue;
      const float one = 1.0f, zero = 0.0f;
      const int padded = std::min(int(PadLd(rank)), ldb);
      if (encode_dir) {
        KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, padded, int(rows), int(p), &one, basis,
                                      CUDA_R_16BF, ldb, a.ptr, CUDA_R_16BF, int(p), &zero, out.ptr, CUDA_R_32F,
                                      int(PadLd(rank)), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      } else {
        KVTC_CUBLAS_CALL(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(p), int(rows), padded, &one, basis,
                                      CUDA_R_16BF, ldb, a.ptr, CUDA_R_16BF, int(PadLd(rank)), &zero, out.ptr, decode_out,
                                      int(p), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
    }
  };
  // The decode groups records as the encode groups sequences (DecodeGroups, FuseGroups: the same
  // coded-token limit), so both directions' GEMMs are per group.
  fig.gemm_bf16_encode_s = over_groups(bf16_gemms, true);
  fig.gemm_bf16_decode_s = over_groups(bf16_gemms, false);
  fig.gemm_encode_s = fig.gemm_bf16_encode_s;
  fig.gemm_decode_s = fig.gemm_bf16_decode_s;
  if (fp8) {
    // The fp8 pipeline's own GEMMs: e4m3 operands of the same shapes (the operand conversions and
    // scalings are the pipeline's, not the GEMM's). Contents do not matter to the timing.
    DeviceBuffer<__nv_fp8_e4m3> a8(size_t(PadFp8(rows_max)) * p);
    KVTC_CUDA_CALL(cudaMemsetAsync(a8.ptr, 0, a8.count, ctx.stream));
    auto fp8_gemms = [&](bool encode_dir, uint32_t rows) {
      const uint32_t n = PadFp8(rows);
      for (int k = 0; k < 2; ++k) {
        const uint32_t rank = k == 0 ? plan.keys.rank : plan.values.rank;
        if (rank == 0 || rows == 0) continue;
        const Fp8Basis& b8 = const_cast<DeviceCalibration&>(dev).Fp8(k == 0, rank, p, ctx.stream);
        if (encode_dir) {
          Fp8Gemm(ctx.lt, ctx.stream, int(b8.ld), int(n), int(p), b8.project.ptr, int(p), a8.ptr, int(p), out.ptr,
                  int(b8.ld));
        } else {
          Fp8Gemm(ctx.lt, ctx.stream, int(p), int(n), int(b8.ld), b8.reconstruct.ptr, int(b8.ld), a8.ptr, int(b8.ld),
                  out.ptr, int(p));
        }
      }
    };
    fig.gemm_encode_s = over_groups(fp8_gemms, true);
    fig.gemm_decode_s = over_groups(fp8_gemms, false);
  }
  PinnedBuffer host;
  host.resize(2 * bytes * batch);
  // The raw KV of the batch: the cache itself when paged (same bytes, block order aside).
  fig.d2h_copy_s = timed([&] {
    KVTC_CUDA_CALL(cudaMemcpyAsync(host.ptr, paged ? cache.ptr : kv.ptr, 2 * bytes * batch, cudaMemcpyDeviceToHost,
                                   ctx.stream));
  });
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return fig;
}

}  // namespace kvtc::cuda
