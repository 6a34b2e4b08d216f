// Internal to the CUDA backend: where a job's token rows live on the device. The codec's kernels
// read (encode prologue) and write (decode epilogue) rows in place, either contiguous
// [tokens, layers x heads x dim] rows or a span of a paged KV cache (cuda_paged.h), so a paged job
// needs no separate gather or scatter pass over the cache.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda_common.cuh"
#include "kvtc/cuda_codec.h"

namespace kvtc::cuda {

constexpr int kMaxLayers = 256;  // layer bases travel as a kernel parameter (2 KiB)

struct LayerBases {
  uint8_t* base[kMaxLayers];
};

// Element strides of [kv][block][slot][head][dim].
struct Strides {
  int64_t kv, block, slot, head, dim;
};

// A span of a paged cache on the device: span token u is slot (first_slot + u) % block_size of
// block block_ids[(first_slot + u) / block_size].
struct PagedRows {
  LayerBases bases;
  Strides st;
  const uint32_t* block_ids = nullptr;  // device memory
  uint32_t first_slot = 0, block_size = 0, kv_heads = 0, head_dim = 0;
};

// Element offset of span slot `pos` (slot pos % block_size of block block_ids[pos / block_size])
// in one layer's tensor, its [kv][head][dim] part aside.
__device__ __forceinline__ int64_t SlotOffset(const uint32_t* block_ids, uint64_t pos, uint32_t block_size,
                                              const Strides& st) {
  return int64_t(block_ids[pos / block_size]) * st.block + int64_t(pos % block_size) * st.slot;
}

// Kernel-side addressing of element (t, f) of one stream's rows, split so that a thread with a
// fixed feature f computes its part once and each token adds its own: &rows[t][f] =
// FeatureBase(f) + TokenOffset(t).
template <typename T>
struct ContiguousRows {
  T* rows;
  int64_t features;
  __device__ __forceinline__ T* FeatureBase(int f) const { return rows + f; }
  __device__ __forceinline__ int64_t TokenOffset(int64_t t) const { return t * features; }
  // Row t's index into the RoPE table the kernel is given (already offset to the first row's
  // position).
  __device__ __forceinline__ int64_t Position(int64_t t) const { return t; }
};

// Row t is span token token0 + t (token0 may be negative when a decode skips the record's first
// tokens; such rows are never addressed).
template <typename T>
struct PagedRowsOf {
  PagedRows r;
  int64_t kv_offset;  // 0 for keys, strides.kv for values
  int64_t token0;
  __device__ __forceinline__ T* FeatureBase(int f) const {
    const int per_layer = int(r.kv_heads * r.head_dim);
    const int l = f / per_layer;
    const int rem = f - l * per_layer;
    const int h = rem / int(r.head_dim);
    const int d = rem - h * int(r.head_dim);
    return reinterpret_cast<T*>(r.bases.base[l]) + kv_offset + h * r.st.head + d * r.st.dim;
  }
  __device__ __forceinline__ int64_t TokenOffset(int64_t t) const {
    return SlotOffset(r.block_ids, uint64_t(int64_t(r.first_slot) + token0 + t), r.block_size, r.st);
  }
  __device__ __forceinline__ int64_t Position(int64_t t) const { return t; }
};

// The rows of several spans of one paged cache as one operand (a fused encode group's prologue,
// one launch for all its sequences): row t's offset in the cache and its absolute position (the
// RoPE table's row: the kernel is given the table itself) come from per-row tables.
template <typename T>
struct GroupRowsOf {
  PagedRowsOf<T> cache;          // the region's layer bases and strides (its block ids unused)
  const int64_t* offsets;        // per row: block * strides.block + slot * strides.slot
  const int64_t* positions;      // per row: absolute position
  __device__ __forceinline__ T* FeatureBase(int f) const { return cache.FeatureBase(f); }
  __device__ __forceinline__ int64_t TokenOffset(int64_t t) const { return offsets[t]; }
  __device__ __forceinline__ int64_t Position(int64_t t) const { return positions[t]; }
};

// Copies tokens [0, tokens) of a paged span (from span token `first`) to or from contiguous rows
// (to_rows: cache -> rows), bit-exact; a null keys or values pointer skips that stream.
void LaunchPagedCopy(bool to_rows, const PagedRows& paged, KvDtype dtype, uint32_t layers, uint32_t first,
                     uint32_t tokens, void* keys, void* values, cudaStream_t stream);

// The codec over paged spans (cuda_codec.cu): encode reads each span's rows in place (jobs[b] from
// paged[b], in fused groups as EncodeMany); decode writes each record's tokens [record_offset,
// record_offset + tokens) into span tokens [0, tokens) of its rows, in groups as DecodeManyToDevice,
// a group's rows only after every check of its records has passed, and records `done` on the job
// stream (it returns once the writes are queued).
std::vector<HostBytes> EncodeFromPaged(const Calibration& calibration, const DeviceCalibration& dev,
                                       const std::vector<EncodeJob>& jobs, const std::vector<PagedRows>& paged);
struct PagedDecode {
  const uint8_t* record = nullptr;
  size_t size = 0;
  const PagedRows* rows = nullptr;
  uint32_t record_offset = 0, record_tokens = 0, tokens = 0;
};
std::vector<RecordHeader> DecodeIntoPaged(const Calibration& calibration, const DeviceCalibration& dev,
                                          const std::vector<PagedDecode>& decodes, KvDtype cache_dtype,
                                          cudaEvent_t done, Projection projection);

}  // namespace kvtc::cuda
