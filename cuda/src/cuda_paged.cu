// The GPU data plane (cuda_paged.h): CUDA IPC regions over a client's paged KV cache, gather of a
// sequence's rows out of its blocks before encoding and scatter back after decoding.
#include "kvtc/cuda_paged.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstring>
#include <map>
#include <mutex>

#include "cuda_common.cuh"
#include "cuda_rows.cuh"
#include "kvtc/cuda_codec.h"
#include "kvtc/error.h"

namespace kvtc::cuda {

namespace {

// One thread per (token, layer, head, dim) of `tokens` span tokens from `first`, copying keys and
// values (a null pointer skips that stream). `rows` is [tokens, layers * heads * dim] per stream,
// the codec's row layout; kToRows picks the direction (gather: cache -> rows, scatter: rows -> cache).
template <typename T, bool kToRows>
__global__ void PagedCopyKernel(PagedRows pr, uint32_t first, uint32_t tokens, uint32_t layers, T* __restrict__ keys,
                                T* __restrict__ values) {
  const uint32_t heads = pr.kv_heads, dim = pr.head_dim;
  const uint64_t row = uint64_t(layers) * heads * dim;
  const uint64_t n = uint64_t(tokens) * row;
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x) {
    const uint32_t t = uint32_t(i / row);
    uint64_t r = i - uint64_t(t) * row;
    const uint32_t l = uint32_t(r / (uint64_t(heads) * dim));
    r -= uint64_t(l) * heads * dim;
    const uint32_t h = uint32_t(r / dim), d = uint32_t(r - uint64_t(h) * dim);
    const uint32_t pos = pr.first_slot + first + t;
    const int64_t off =
        SlotOffset(pr.block_ids, pos, pr.block_size, pr.st) + int64_t(h) * pr.st.head + int64_t(d) * pr.st.dim;
    T* k = reinterpret_cast<T*>(pr.bases.base[l]) + off;
    T* v = k + pr.st.kv;
    if (kToRows) {
      if (keys) keys[i] = *k;
      if (values) values[i] = *v;
    } else {
      if (keys) *k = keys[i];
      if (values) *v = values[i];
    }
  }
}

template <bool kToRows>
void LaunchPagedCopyDir(const PagedRows& pr, KvDtype dtype, uint32_t layers, uint32_t first, uint32_t tokens,
                        void* keys, void* values, cudaStream_t stream) {
  const uint64_t n = uint64_t(tokens) * layers * pr.kv_heads * pr.head_dim;
  if (n == 0) return;
  const unsigned threads = 256;
  const unsigned blocks = unsigned(std::min<uint64_t>((n + threads - 1) / threads, 132ull * 32));
  // Elements are moved as raw 2- or 4-byte words: no conversion, bit-exact.
  if (DtypeBytes(dtype) == 2) {
    PagedCopyKernel<uint16_t, kToRows><<<blocks, threads, 0, stream>>>(pr, first, tokens, layers,
                                                                       static_cast<uint16_t*>(keys),
                                                                       static_cast<uint16_t*>(values));
  } else {
    PagedCopyKernel<uint32_t, kToRows><<<blocks, threads, 0, stream>>>(pr, first, tokens, layers,
                                                                       static_cast<uint32_t*>(keys),
                                                                       static_cast<uint32_t*>(values));
  }
  KVTC_CUDA_CALL(cudaGetLastError());
}

#define KVTC_CU_CALL(expr)                                                                      \
  do {                                                                                          \
    CUresult kvtc_r_ = (expr);                                                                  \
    const char* kvtc_s_ = nullptr;                                                              \
    if (kvtc_r_ != CUDA_SUCCESS) cuGetErrorString(kvtc_r_, &kvtc_s_);                           \
    KVTC_CHECK(kvtc_r_ == CUDA_SUCCESS, kIpc, "CUDA driver error " << (kvtc_s_ ? kvtc_s_ : "?") << " at " #expr); \
  } while (0)

// An opened IPC allocation, shared by every region naming the same handle: CUDA maps a handle
// once per process, so a second open must reuse the first mapping.
struct Mapping {
  int device = 0;
  uint8_t* ptr = nullptr;
  size_t size = 0;
  int refs = 0;
};
std::mutex g_mappings_mu;
std::map<std::pair<int, IpcHandle>, Mapping> g_mappings;

Mapping AcquireMapping(int device, const IpcHandle& h) {
  std::lock_guard<std::mutex> lock(g_mappings_mu);
  auto key = std::make_pair(device, h);
  auto it = g_mappings.find(key);
  if (it == g_mappings.end()) {
    cudaIpcMemHandle_t handle;
    std::memcpy(&handle, h.data(), sizeof(handle));
    void* ptr = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&ptr, handle, cudaIpcMemLazyEnablePeerAccess);
    KVTC_CHECK(e == cudaSuccess, kIpc,
               "cudaIpcOpenMemHandle failed (" << cudaGetErrorString(e)
                                               << "): the handle is not a legacy CUDA IPC handle of a live allocation "
                                                  "on this device (cuMem/VMM allocations such as PyTorch's "
                                                  "expandable_segments cannot be shared this way)");
    (void)cudaGetLastError();
    CUdeviceptr base = 0;
    size_t size = 0;
    CUresult r = cuMemGetAddressRange(&base, &size, reinterpret_cast<CUdeviceptr>(ptr));
    if (r != CUDA_SUCCESS) {
      cudaIpcCloseMemHandle(ptr);
      KVTC_CHECK(false, kIpc, "cuMemGetAddressRange failed on an opened IPC allocation");
    }
    Mapping m;
    m.device = device;
    m.ptr = static_cast<uint8_t*>(ptr);
    m.size = size - (reinterpret_cast<CUdeviceptr>(ptr) - base);
    it = g_mappings.emplace(key, m).first;
  }
  it->second.refs++;
  return it->second;
}

void ReleaseMapping(int device, const IpcHandle& h) {
  std::lock_guard<std::mutex> lock(g_mappings_mu);
  auto it = g_mappings.find(std::make_pair(device, h));
  if (it == g_mappings.end()) return;
  if (--it->second.refs == 0) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(device);
    cudaIpcCloseMemHandle(it->second.ptr);
    cudaSetDevice(prev);
    g_mappings.erase(it);
  }
}

void CheckGeometry(const PagedGeometry& g) {
  KVTC_CHECK(g.layers > 0 && g.layers <= kMaxLayers, kInvalidArgument,
             "Expected 1.." << kMaxLayers << " layers but received " << g.layers);
  KVTC_CHECK(g.num_blocks > 0 && g.block_size > 0 && g.kv_heads > 0 && g.head_dim > 0, kInvalidArgument,
             "Expected positive num_blocks, block_size, kv_heads and head_dim");
  for (int64_t s : g.strides)
    KVTC_CHECK(s >= 0 && s < (int64_t(1) << 40), kInvalidArgument, "Expected non-negative strides but received " << s);
  KVTC_CHECK(g.strides[0] > 0, kInvalidArgument, "the kv stride must separate keys from values (received 0)");
}

}  // namespace

void LaunchPagedCopy(bool to_rows, const PagedRows& paged, KvDtype dtype, uint32_t layers, uint32_t first,
                     uint32_t tokens, void* keys, void* values, cudaStream_t stream) {
  if (to_rows) {
    LaunchPagedCopyDir<true>(paged, dtype, layers, first, tokens, keys, values, stream);
  } else {
    LaunchPagedCopyDir<false>(paged, dtype, layers, first, tokens, keys, values, stream);
  }
}

uint64_t PagedGeometry::LayerExtent() const {
  return uint64_t(strides[0]) + uint64_t(num_blocks - 1) * strides[1] + uint64_t(block_size - 1) * strides[2] +
         uint64_t(kv_heads - 1) * strides[3] + uint64_t(head_dim - 1) * strides[4] + 1;
}

class KvRegion {
 public:
  int device = 0;
  PagedGeometry geometry;
  LayerBases bases{};
  std::vector<IpcHandle> mapped;  // IPC allocations this region holds a reference to
  uint8_t* owned = nullptr;       // AllocateKvRegion's memory
  cudaEvent_t client_event = nullptr, done_event = nullptr;
  IpcHandle done_handle{};
  std::mutex mu;  // jobs of one region are serialised: they share the event

  ~KvRegion() {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(device);
    // A restore returns once its writes are queued (the client waits on done_event): they must
    // finish before the client's memory is unmapped.
    if (done_event) cudaEventSynchronize(done_event);
    if (client_event) cudaEventDestroy(client_event);
    if (done_event) cudaEventDestroy(done_event);
    if (owned) cudaFree(owned);
    cudaSetDevice(prev);
    for (const IpcHandle& h : mapped) ReleaseMapping(device, h);
  }

  void CreateDoneEvent() {
    KVTC_CUDA_CALL(cudaEventCreateWithFlags(&done_event, cudaEventDisableTiming | cudaEventInterprocess));
    cudaIpcEventHandle_t h;
    KVTC_CUDA_CALL(cudaIpcGetEventHandle(&h, done_event));
    std::memcpy(done_handle.data(), &h, sizeof(h));
  }
};

std::shared_ptr<KvRegion> OpenKvRegion(const KvRegionDesc& d) {
  const PagedGeometry& g = d.geometry;
  CheckGeometry(g);
  KVTC_CHECK(d.layer_allocation.size() == g.layers && d.layer_offset.size() == g.layers, kInvalidArgument,
             "Expected " << g.layers << " layer entries but received " << d.layer_allocation.size());
  KVTC_CHECK(!d.allocations.empty(), kInvalidArgument, "Expected at least one IPC allocation");
  int count = 0;
  KVTC_CUDA_CALL(cudaGetDeviceCount(&count));
  KVTC_CHECK(d.device >= 0 && d.device < count, kIpc, "device " << d.device << " does not exist here");
  KVTC_CUDA_CALL(cudaSetDevice(d.device));
  auto region = std::make_shared<KvRegion>();
  region->device = d.device;
  region->geometry = g;
  std::vector<Mapping> maps;
  for (const IpcHandle& h : d.allocations) {
    maps.push_back(AcquireMapping(d.device, h));
    region->mapped.push_back(h);  // released by ~KvRegion, also when a later check throws
  }
  const uint64_t extent_bytes = g.LayerExtent() * DtypeBytes(g.dtype);
  for (uint32_t l = 0; l < g.layers; ++l) {
    const uint32_t a = d.layer_allocation[l];
    KVTC_CHECK(a < maps.size(), kInvalidArgument, "layer " << l << " names allocation " << a << " of " << maps.size());
    const uint64_t off = d.layer_offset[l];
    KVTC_CHECK(off % DtypeBytes(g.dtype) == 0, kInvalidArgument, "layer " << l << " offset is not element aligned");
    KVTC_CHECK(off <= maps[a].size && extent_bytes <= maps[a].size - off, kIpc,
               "layer " << l << " spans bytes [" << off << ", " << off + extent_bytes << ") but its allocation holds "
                        << maps[a].size << " bytes: the layout does not match the registered memory");
    region->bases.base[l] = maps[a].ptr + off;
  }
  if (d.has_client_event) {
    cudaIpcEventHandle_t h;
    std::memcpy(&h, d.client_event.data(), sizeof(h));
    cudaError_t e = cudaIpcOpenEventHandle(&region->client_event, h);
    KVTC_CHECK(e == cudaSuccess, kIpc, "cudaIpcOpenEventHandle failed (" << cudaGetErrorString(e) << ")");
  }
  region->CreateDoneEvent();
  return region;
}

std::shared_ptr<KvRegion> AllocateKvRegion(int device, const PagedGeometry& g) {
  CheckGeometry(g);
  KVTC_CUDA_CALL(cudaSetDevice(device));
  auto region = std::make_shared<KvRegion>();
  region->device = device;
  region->geometry = g;
  const size_t layer_bytes = g.LayerExtent() * DtypeBytes(g.dtype);
  KVTC_CUDA_CALL(cudaMalloc(&region->owned, layer_bytes * g.layers));
  KVTC_CUDA_CALL(cudaMemset(region->owned, 0, layer_bytes * g.layers));
  for (uint32_t l = 0; l < g.layers; ++l) region->bases.base[l] = region->owned + l * layer_bytes;
  region->CreateDoneEvent();
  return region;
}

void WriteKvRegion(KvRegion& r, const uint8_t* host, size_t size) {
  KVTC_CHECK(r.owned, kInvalidArgument, "only an allocated (not IPC) region can be written from the host");
  const size_t bytes = r.geometry.LayerExtent() * DtypeBytes(r.geometry.dtype) * r.geometry.layers;
  KVTC_CHECK(size == bytes, kInvalidArgument, "Expected " << bytes << " bytes but received " << size);
  KVTC_CUDA_CALL(cudaSetDevice(r.device));
  KVTC_CUDA_CALL(cudaMemcpy(r.owned, host, size, cudaMemcpyHostToDevice));
}

std::vector<uint8_t> ReadKvRegion(KvRegion& r) {
  KVTC_CHECK(r.owned, kInvalidArgument, "only an allocated (not IPC) region can be read to the host");
  std::lock_guard<std::mutex> lock(r.mu);
  KVTC_CUDA_CALL(cudaSetDevice(r.device));
  KVTC_CUDA_CALL(cudaEventSynchronize(r.done_event));
  std::vector<uint8_t> out(r.geometry.LayerExtent() * DtypeBytes(r.geometry.dtype) * r.geometry.layers);
  KVTC_CUDA_CALL(cudaMemcpy(out.data(), r.owned, out.size(), cudaMemcpyDeviceToHost));
  return out;
}

IpcHandle RegionEventHandle(const KvRegion& r) { return r.done_handle; }
int RegionDevice(const KvRegion& r) { return r.device; }
const PagedGeometry& RegionGeometry(const KvRegion& r) { return r.geometry; }

namespace {

void CheckSpan(const PagedGeometry& g, const PagedSpan& s) {
  KVTC_CHECK(s.tokens > 0, kInvalidArgument, "Expected at least one token in the span");
  KVTC_CHECK(s.first_slot < g.block_size, kInvalidArgument,
             "Expected first_slot < block_size (" << g.block_size << ") but received " << s.first_slot);
  const uint64_t needed = (uint64_t(s.first_slot) + s.tokens + g.block_size - 1) / g.block_size;
  KVTC_CHECK(s.block_ids.size() == needed, kInvalidArgument,
             "Expected " << needed << " block ids for " << s.tokens << " tokens from slot " << s.first_slot
                         << " (block size " << g.block_size << ") but received " << s.block_ids.size());
  for (uint32_t b : s.block_ids)
    KVTC_CHECK(b < g.num_blocks, kInvalidArgument, "block id " << b << " is outside the cache's " << g.num_blocks << " blocks");
}

// Per-thread device copy of a span's block ids.
DeviceBuffer<uint32_t>& BlockIds() {
  struct Ids {
    DeviceBuffer<uint32_t> b;
  };
  return OfCurrentDevice<Ids>().b;
}

// The calibration's device copy must live on the cache's device (the addon uploads one per device).
void CheckSameDevice(const DeviceCalibration& dev, const KvRegion& region) {
  KVTC_CHECK(DeviceOf(dev) == region.device, kInvalidArgument,
             "the calibration was uploaded to device " << DeviceOf(dev) << " but the cache is on device "
                                                       << region.device);
}

// The spans' rows, their block ids uploaded to the device together.
std::vector<PagedRows> SpansRows(const KvRegion& region, const std::vector<PagedSpan>& spans, cudaStream_t stream) {
  const PagedGeometry& g = region.geometry;
  std::vector<uint32_t> all;
  for (const PagedSpan& span : spans) all.insert(all.end(), span.block_ids.begin(), span.block_ids.end());
  DeviceBuffer<uint32_t>& ids = BlockIds();
  UploadAsync(ids, all.data(), all.size(), stream);
  std::vector<PagedRows> out;
  size_t at = 0;
  for (const PagedSpan& span : spans) {
    PagedRows pr;
    pr.bases = region.bases;
    pr.st = {g.strides[0], g.strides[1], g.strides[2], g.strides[3], g.strides[4]};
    pr.block_ids = ids.ptr + at;
    pr.first_slot = span.first_slot;
    pr.block_size = g.block_size;
    pr.kv_heads = g.kv_heads;
    pr.head_dim = g.head_dim;
    out.push_back(pr);
    at += span.block_ids.size();
  }
  return out;
}

}  // namespace

std::vector<HostBytes> EncodePagedMany(const Calibration& c, const DeviceCalibration& dev, KvRegion& region,
                                       const std::vector<PagedSpan>& spans, const std::vector<EncodeJob>& jobs) {
  const PagedGeometry& g = region.geometry;
  KVTC_CHECK(spans.size() == jobs.size(), kInvalidArgument,
             "Expected a job per span but received " << jobs.size() << " jobs for " << spans.size() << " spans");
  KVTC_CHECK(g.layers == c.layers && g.kv_heads == c.kv_heads && g.head_dim == c.head_dim, kInvalidArgument,
             "the registered cache (" << g.layers << "x" << g.kv_heads << "x" << g.head_dim
                                      << ") is not the calibration's model");
  for (size_t i = 0; i < spans.size(); ++i) {
    CheckSpan(g, spans[i]);
    KVTC_CHECK(jobs[i].tokens == spans[i].tokens && jobs[i].dtype == g.dtype, kInvalidArgument,
               "job " << i << " and its span disagree");
  }
  CheckSameDevice(dev, region);
  std::lock_guard<std::mutex> lock(region.mu);
  KVTC_CUDA_CALL(cudaSetDevice(region.device));
  cudaStream_t stream = JobStream();
  const std::vector<PagedRows> rows = SpansRows(region, spans, stream);
  // After the region's previous restore (queued on another thread's stream, maybe still running)
  // and after the client's forward pass.
  KVTC_CUDA_CALL(cudaStreamWaitEvent(stream, region.done_event, 0));
  if (region.client_event) KVTC_CUDA_CALL(cudaStreamWaitEvent(stream, region.client_event, 0));
  return EncodeFromPaged(c, dev, jobs, rows);  // same stream: ordered after the client's event
}

std::vector<RecordHeader> DecodePagedMany(const Calibration& c, const DeviceCalibration& dev, KvRegion& region,
                                          const std::vector<PagedSpan>& spans,
                                          const std::vector<std::pair<const uint8_t*, size_t>>& records,
                                          Projection projection) {
  const PagedGeometry& g = region.geometry;
  KVTC_CHECK(spans.size() == records.size(), kInvalidArgument,
             "Expected a record per span but received " << records.size() << " records for " << spans.size()
                                                         << " spans");
  std::vector<PagedDecode> decodes(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) {
    const PagedSpan& span = spans[i];
    CheckSpan(g, span);
    const uint64_t record_tokens =
        span.record_tokens ? span.record_tokens : uint64_t(span.record_offset) + span.tokens;
    KVTC_CHECK(uint64_t(span.record_offset) + span.tokens <= record_tokens, kInvalidArgument,
               "span " << i << ": its " << span.tokens << " tokens from record token " << span.record_offset
                       << " are past the record's " << record_tokens);
    KVTC_CHECK(record_tokens <= UINT32_MAX, kInvalidArgument, "record_tokens out of range");
    decodes[i] = {records[i].first, records[i].second, nullptr, span.record_offset, uint32_t(record_tokens),
                  span.tokens};
  }
  CheckSameDevice(dev, region);
  std::lock_guard<std::mutex> lock(region.mu);
  KVTC_CUDA_CALL(cudaSetDevice(region.device));
  const std::vector<PagedRows> rows = SpansRows(region, spans, JobStream());
  for (size_t i = 0; i < spans.size(); ++i) decodes[i].rows = &rows[i];
  // Restores of one region are ordered on the device too: the previous one may still be running.
  KVTC_CUDA_CALL(cudaStreamWaitEvent(JobStream(), region.done_event, 0));
  // Every check (structure, CRCs, chunk tables, inflate statuses, dtype) of a group passes before
  // a block is written; the reconstruction then writes the spans' tokens straight into their blocks.
  return DecodeIntoPaged(c, dev, decodes, g.dtype, region.done_event, projection);
}

std::string DeviceUuid(int device) {
  cudaDeviceProp p;
  KVTC_CUDA_CALL(cudaGetDeviceProperties(&p, device));
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    const auto b = static_cast<uint8_t>(p.uuid.bytes[i]);
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

int DeviceByUuid(const std::string& uuid_hex) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return -1;
  for (int d = 0; d < count; ++d)
    if (DeviceUuid(d) == uuid_hex) return d;
  return -1;
}

}  // namespace kvtc::cuda
