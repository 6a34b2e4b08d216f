// The CUDA backend: the same pipeline and the same record format as codec.h, on one GPU.
//   encode: [unRoPE + centre + bf16] -> cuBLAS GEMM (bf16 in, fp32 accumulate) -> quantize+pack
//           -> DEFLATE (kvtc's coder or nvCOMP) -> compaction -> one device-to-host copy of the record body
//   decode: one host-to-device copy -> nvCOMP inflate -> dequantize (bf16) -> GEMM -> + mean,
//           reRoPE, cast
// One CUDA stream per job. Encode syncs twice: once for the compressed chunk sizes (they decide
// the record's layout), once for the record's one device-to-host copy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvtc/codec.h"
#include "kvtc/record_memory.h"

namespace kvtc::cuda {

bool Available();              // a device is present and usable
std::string DeviceName(int device = 0);
// Whether this build has the fused restore (KVTC_FUSED_RESTORE=on; cuda_fused_restore.h), and how
// many streams of restores it has written so far in this process (what the tests check it ran by).
bool FusedRestoreBuilt();
uint64_t FusedRestores();
// Whether host memory at p is page-locked (registered or allocated by CUDA), so that the device
// copies straight from it: a record there is restored without staging.
bool IsPageLocked(const void* p);

// A calibration's device copy (mean fp32, basis bf16) for one device; immutable once built.
class DeviceCalibration;
std::shared_ptr<DeviceCalibration> Upload(const Calibration& calibration, int device = 0);
// The device a calibration was uploaded to: its jobs run there.
int DeviceOf(const DeviceCalibration& dev);

// A finished record in host memory (record_memory.h: pooled, written once, never zero-filled).
struct HostBytes {
  RecordMemory data;
  size_t size = 0;
};

// Host or device input (job.keys / job.values are device pointers when `device_input`).
HostBytes Encode(const Calibration& calibration, const DeviceCalibration& dev, const EncodeJob& job,
                            bool device_input);

// Several sequences in one job: sequence b + 1's device work is queued before sequence b is read
// back, so the device does not wait for the host's record assembly (same records as Encode).
std::vector<HostBytes> EncodeMany(const Calibration& calibration, const DeviceCalibration& dev,
                                  const std::vector<EncodeJob>& jobs, bool device_input);

// The projection's precision on this backend: Projection::kFp8 runs both GEMMs on e4m3 operands
// (cuda_fp8.cuh; sm_89 or newer), any other value bf16. An encode takes it from
// EncodeJob::projection, a decode as an argument; it never changes what a record holds.

// Decodes into device memory: keys_out / values_out hold tokens x feature_dim elements of the
// record's dtype (the record's structure and CRCs are checked before any device work).
RecordHeader DecodeToDevice(const Calibration& calibration, const DeviceCalibration& dev, const uint8_t* record,
                            size_t size, uint64_t expected_bytes, void* keys_out, void* values_out,
                            Projection projection = Projection::kBf16);

// Several records into device memory: records of few tokens in groups (one inflate launch and one
// GEMM per stream for up to 2048 coded tokens, KVTC_FUSE_TOKENS / KVTC_DECODE_FUSE_TOKENS), group
// g + 1 staged and reconstructed while group g is checked and written. A bad record fails the call.
struct DeviceDecodeJob {
  const uint8_t* record = nullptr;
  size_t size = 0;
  uint64_t expected_bytes = 0;
  void* keys_out = nullptr;
  void* values_out = nullptr;
};
std::vector<RecordHeader> DecodeManyToDevice(const Calibration& calibration, const DeviceCalibration& dev,
                                             const std::vector<DeviceDecodeJob>& jobs,
                                             Projection projection = Projection::kBf16);

// Decodes into host vectors (DecodeResult) after the same checks as the CPU decoder.
DecodeResult Decode(const Calibration& calibration, const DeviceCalibration& dev, const uint8_t* record, size_t size,
                    uint64_t expected_bytes, Projection projection = Projection::kBf16);

// Stage parity: quantize host coefficients on the GPU (payload bytes comparable with Quantize).
std::vector<uint8_t> QuantizeOnDevice(const float* d, int64_t tokens, const Plan& plan);
std::vector<float> DequantizeOnDevice(const uint8_t* payload, int64_t tokens, const Plan& plan);

struct BenchFigures {
  double encode_s = 0, decode_s = 0;   // median per job, device-resident KV to host record and back
  double gemm_encode_s = 0, gemm_decode_s = 0;  // the pipeline's own GEMMs, same shapes (keys + values)
  double gemm_bf16_encode_s = 0, gemm_bf16_decode_s = 0;  // the bf16 cuBLAS GEMMs (= the above unless fp8)
  double d2h_copy_s = 0;               // raw KV device-to-host copy (pinned)
  size_t record_bytes = 0, coded_bytes = 0;
  uint32_t coded_tokens = 0;
  uint64_t pool_hits = 0, pool_misses = 0;  // record memory from the pool / fresh, timed repetitions
};

// Times `batch` sequences of `tokens` each (bf16 KV on the device, filled from `host_kv`), as
// contiguous rows or (paged) in place in a paged cache of vLLM's FlashAttention layout, in records
// of chunk_bytes DEFLATE chunks (stored, not coded, at deflate_level 0), the newest window_tokens
// of each kept raw.
BenchFigures Bench(const Calibration& calibration, const DeviceCalibration& dev, const uint16_t* host_keys,
                   const uint16_t* host_values, uint32_t tokens, uint32_t batch, uint16_t plan_id, int reps,
                   bool paged, size_t chunk_bytes, Projection projection = Projection::kBf16,
                   uint32_t window_tokens = 128, int deflate_level = 6);

}  // namespace kvtc::cuda
