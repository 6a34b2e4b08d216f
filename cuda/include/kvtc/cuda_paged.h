// The GPU data plane: a serving engine's paged KV cache, shared with the sidecar by CUDA IPC, read
// and written in place. A KvRegion is one client's registered cache (every layer's tensor): the
// sidecar gathers a sequence's token rows from its blocks, encodes them with the CUDA codec, and
// on restore decodes and scatters the rows back into the blocks the engine allocated.
//
// Ordering: the client records its IPC event after the forward pass that wrote the blocks and
// before asking for a save; the save waits for it on the device. After a load the sidecar records
// its own IPC event; the client's stream waits for it before attention reads the blocks. No host
// synchronisation is needed on either side beyond reading the record.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/codec.h"
#include "kvtc/cuda_codec.h"

namespace kvtc::cuda {

class DeviceCalibration;

using IpcHandle = std::array<uint8_t, 64>;  // cudaIpcMemHandle_t / cudaIpcEventHandle_t bytes

// Where element [kv][block][slot][head][dim] of layer l lives: layer_base[l] + the dot product of
// those indices with `strides` (in elements). Any layout is a choice of strides: vLLM's
// FlashAttention (2, blocks, slots, heads, dim), FlashInfer (blocks, 2, slots, heads, dim), HND.
struct PagedGeometry {
  uint32_t layers = 0, num_blocks = 0, block_size = 0, kv_heads = 0, head_dim = 0;
  KvDtype dtype = KvDtype::kBfloat16;
  std::array<int64_t, 5> strides{};  // kv, block, slot, head, dim
  // Elements spanned by one layer from its base (largest reachable index + 1).
  uint64_t LayerExtent() const;
};

struct KvRegionDesc {
  int device = 0;
  PagedGeometry geometry;
  std::vector<IpcHandle> allocations;      // each opened once (deduplicated process-wide)
  std::vector<uint32_t> layer_allocation;  // per layer: index into allocations
  std::vector<uint64_t> layer_offset;      // per layer: byte offset of its base in that allocation
  bool has_client_event = false;
  IpcHandle client_event{};                // recorded by the client when blocks are ready to read
};

// A sequence's tokens in the cache: token t is slot (first_slot + t) % block_size of block
// block_ids[(first_slot + t) / block_size]. On decode, `record_offset` leading tokens of the
// record are not written (they are already in the cache, e.g. in blocks another request shares),
// and the record holds `record_tokens` tokens (0: record_offset + tokens).
struct PagedSpan {
  std::vector<uint32_t> block_ids;
  uint32_t first_slot = 0;
  uint32_t tokens = 0;
  uint32_t record_offset = 0;
  uint32_t record_tokens = 0;
};

class KvRegion;

// Opens the client's allocations and event, checks every layer's extent against the allocation
// size the driver reports, and creates the sidecar's own IPC event. Coded errors:
// kInvalidArgument (geometry), kIpc (a handle that does not open, or memory that is too small).
std::shared_ptr<KvRegion> OpenKvRegion(const KvRegionDesc& desc);

// A region over device memory this process allocates (tests and benchmarks without a client).
std::shared_ptr<KvRegion> AllocateKvRegion(int device, const PagedGeometry& geometry);
void WriteKvRegion(KvRegion& region, const uint8_t* host, size_t size);  // layer-major, extent each
std::vector<uint8_t> ReadKvRegion(KvRegion& region);

IpcHandle RegionEventHandle(const KvRegion& region);
int RegionDevice(const KvRegion& region);
const PagedGeometry& RegionGeometry(const KvRegion& region);

// A record per span of one region, jobs[i] for spans[i] (job.keys / job.values are ignored,
// job.tokens must equal the span's tokens), read in place after the client's event: sequences of
// few tokens are fused into groups (one projection GEMM and one coder launch for up to 2K coded
// tokens, cuda_codec.cu's FuseGroups), the groups pipelined.
std::vector<HostBytes> EncodePagedMany(const Calibration& calibration, const DeviceCalibration& dev, KvRegion& region,
                                       const std::vector<PagedSpan>& spans, const std::vector<EncodeJob>& jobs);

// A record per span of one region (records[i] into spans[i], each record's {data, size}): records
// of few tokens are decoded in groups (one inflate launch, one GEMM and one write per stream for
// up to 2K coded tokens, cuda_codec.cu's DecodeGroups), the groups pipelined; records the region's
// event. Every record of a group has its structure, CRCs and size checked before any block of the
// group is written; a bad record fails the call (blocks of the groups before it may be written).
std::vector<RecordHeader> DecodePagedMany(const Calibration& calibration, const DeviceCalibration& dev,
                                          KvRegion& region, const std::vector<PagedSpan>& spans,
                                          const std::vector<std::pair<const uint8_t*, size_t>>& records,
                                          Projection projection = Projection::kBf16);

// 32 lowercase hex digits of the device's UUID, and the device with a given UUID (-1: none).
std::string DeviceUuid(int device);
int DeviceByUuid(const std::string& uuid_hex);

}  // namespace kvtc::cuda
