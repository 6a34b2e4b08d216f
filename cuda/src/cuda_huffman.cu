// kvtc's own GPU DEFLATE coder: the kernels around include/kvtc/cuda_huffman.h.
//
// Encode: one 256-thread block per chunk. Per-warp shared-memory byte histograms; symbols
// ranked by (frequency, symbol) in parallel; one thread builds the length-limited code and the
// block header (PlanBlock, the same function the host reference runs); then the literals in
// tiles of 4096 bytes: each thread codes 16 bytes, a block-wide exclusive scan gives its bit
// offset, bits go into a shared staging buffer with atomicOr, full 32-bit words are copied to
// the chunk's slot coalesced and the partial word carries over to the next tile.
// Inflate: one warp per chunk; the warp fills the decoding tables, then lane 0 decodes a plain
// chunk, or every lane decodes runs of an indexed chunk from its entry points.
// The index: the encoder's block scan already gives each thread's bit offset, so the entry points
// of an indexed chunk cost one store each.
#include <cub/block/block_scan.cuh>

#include "kvtc/cuda_huffman.h"

namespace kvtc::huff {
namespace {

constexpr int kEncThreads = 256;
constexpr int kBytesPerThread = 16;
constexpr int kTile = kEncThreads * kBytesPerThread;
constexpr int kStageWords = (kMaxHeaderBits + kTile * kMaxBits) / 32 + 4;
constexpr int kHistCopies = kEncThreads / 32;

struct EncodeShared {
  uint32_t hist[kHistCopies][256];
  EncodeScratch scratch;
  EncodePlan plan;
  uint32_t stage[kStageWords];
  cub::BlockScan<uint32_t, kEncThreads>::TempStorage scan;
  int stored;
};

// 16 bytes at in[at, at + 16) clipped to n, as four little-endian words (bytes past n are
// reported through `valid`).
__device__ __forceinline__ void Load16(const uint8_t* in, size_t n, size_t at, bool aligned, uint32_t (&w)[4],
                                       int& valid) {
  if (at + 16 <= n) {
    valid = 16;
    if (aligned) {
      const uint4 v = *reinterpret_cast<const uint4*>(in + at);
      w[0] = v.x;
      w[1] = v.y;
      w[2] = v.z;
      w[3] = v.w;
      return;
    }
  } else {
    valid = at < n ? int(n - at) : 0;
  }
  for (int k = 0; k < 4; ++k) w[k] = 0;
  for (int b = 0; b < valid; ++b) w[b >> 2] |= uint32_t(in[at + b]) << (8 * (b & 3));
}

__global__ void __launch_bounds__(kEncThreads) EncodeKernel(const uint8_t* __restrict__ payload, size_t payload_bytes,
                                                            size_t chunk_bytes, uint8_t* __restrict__ slots,
                                                            size_t slot_bytes, size_t* __restrict__ sizes,
                                                            uint32_t* __restrict__ entries, uint32_t entry_stride,
                                                            uint32_t max_entries) {
  __shared__ EncodeShared sh;
  const int t = threadIdx.x;
  const size_t c = blockIdx.x;
  const uint8_t* in = payload + c * chunk_bytes;
  const size_t n = min(chunk_bytes, payload_bytes - c * chunk_bytes);
  uint32_t* out = reinterpret_cast<uint32_t*>(slots + c * slot_bytes);
  const bool aligned = (reinterpret_cast<uintptr_t>(in) & 15) == 0;

  for (int i = t; i < kHistCopies * 256; i += kEncThreads) (&sh.hist[0][0])[i] = 0;
  for (int i = t; i < kStageWords; i += kEncThreads) sh.stage[i] = 0;
  __syncthreads();
  uint32_t* hist = sh.hist[t >> 5];
  for (size_t at = size_t(t) * kBytesPerThread; at < n; at += kTile) {
    uint32_t w[4];
    int valid;
    Load16(in, n, at, aligned, w, valid);
    for (int b = 0; b < valid; ++b) atomicAdd(&hist[(w[b >> 2] >> (8 * (b & 3))) & 255], 1u);
  }
  __syncthreads();
  EncodeScratch& s = sh.scratch;
  {
    uint32_t f = 0;
    for (int k = 0; k < kHistCopies; ++k) f += sh.hist[k][t];
    s.freq[t] = f;
    if (t == 0) s.freq[256] = 1;
  }
  __syncthreads();
  // Rank the used symbols by (freq, symbol): order[rank] = symbol.
  const int used = __syncthreads_count(s.freq[t] != 0) + 1;
  for (int sym = t; sym < kLitSyms; sym += kEncThreads) {
    const uint32_t f = s.freq[sym];
    if (!f) continue;
    int rank = 0;
    for (int u = 0; u < kLitSyms; ++u) {
      const uint32_t g = s.freq[u];
      rank += g != 0 && (g < f || (g == f && u < sym));
    }
    s.order[rank] = uint16_t(sym);
  }
  __syncthreads();
  if (t == 0) {
    PlanBlock(s, used, sh.stage, sh.plan);
    const uint64_t bytes = (sh.plan.total_bits + 7) / 8;
    sh.stored = bytes >= n;
    sizes[c] = sh.stored ? n : size_t(bytes);
  }
  __syncthreads();
  if (sh.stored) return;

  uint32_t base = sh.plan.header_bits;  // bits in stage (same value in every thread)
  size_t wout = 0;                      // words flushed to the slot
  for (size_t tile = 0; tile < n; tile += kTile) {
    const size_t at = tile + size_t(t) * kBytesPerThread;
    uint32_t w[4];
    int valid;
    Load16(in, n, at, aligned, w, valid);
    uint32_t codes[kBytesPerThread];
    uint32_t mine = 0;
#pragma unroll
    for (int b = 0; b < kBytesPerThread; ++b) {
      codes[b] = b < valid ? sh.plan.sym[(w[b >> 2] >> (8 * (b & 3))) & 255] : 0u;
      mine += codes[b] >> 16;
    }
    uint32_t offset, tile_bits;
    cub::BlockScan<uint32_t, kEncThreads>(sh.scan).ExclusiveSum(mine, offset, tile_bits);
    if (entries && at > 0 && at < n && at % entry_stride == 0) {
      entries[c * max_entries + at / entry_stride - 1] = uint32_t(wout * 32 + base + offset);  // the index
    }
    // Write this thread's bits at base + offset: whole words of its own, atomicOr at the ends.
    uint32_t pos = base + offset;
    uint32_t widx = pos >> 5;
    uint64_t acc = 0;
    uint32_t nacc = pos & 31;
#pragma unroll
    for (int b = 0; b < kBytesPerThread; ++b) {
      acc |= uint64_t(codes[b] & 0xffff) << nacc;
      nacc += codes[b] >> 16;
      if (nacc >= 32) {
        atomicOr(&sh.stage[widx++], uint32_t(acc));
        acc >>= 32;
        nacc -= 32;
      }
    }
    if (nacc > 0) atomicOr(&sh.stage[widx], uint32_t(acc));
    __syncthreads();
    const uint32_t total = base + tile_bits;
    const uint32_t full = total >> 5;
    for (uint32_t i = t; i < full; i += kEncThreads) out[wout + i] = sh.stage[i];
    const uint32_t carry = sh.stage[full];
    __syncthreads();
    for (uint32_t i = t; i <= full; i += kEncThreads) sh.stage[i] = i == 0 ? carry : 0u;
    wout += full;
    base = total & 31;
    __syncthreads();
  }
  if (t == 0) {
    BitWriter bw{sh.stage, base};
    bw.Put(sh.plan.sym[256] & 0xffff, int(sh.plan.sym[256] >> 16));
    const uint32_t words = (bw.bits + 31) / 32;
    for (uint32_t i = 0; i < words; ++i) out[wout + i] = sh.stage[i];
  }
}

constexpr int kInflateWarps = 4;

__global__ void __launch_bounds__(kInflateWarps * 32) InflateKernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out,
                                                                    const InflateJob* __restrict__ jobs,
                                                                    const uint32_t* __restrict__ entries, uint32_t n,
                                                                    int32_t* __restrict__ status) {
  __shared__ InflateState st[kInflateWarps];
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t j = blockIdx.x * kInflateWarps + w;
  if (j >= n) return;  // the whole warp
  const InflateJob job = jobs[j];
  const int32_t r = job.entry_stride
                        ? InflateChunkIndexed(in + job.in_off, job.in_size, out + job.out_off, job.out_size,
                                              entries + job.entries_at, job.entry_count, job.entry_stride, st[w], lane, 32)
                        : InflateChunk(in + job.in_off, job.in_size, out + job.out_off, job.out_size, st[w], lane, 32);
  if (lane == 0) status[j] = r;
}

}  // namespace

void LaunchEncode(const uint8_t* payload, size_t payload_bytes, size_t chunk_bytes, uint8_t* slots, size_t slot_bytes,
                  size_t* sizes, uint32_t* entries, uint32_t entry_stride, uint32_t max_entries, cudaStream_t stream) {
  const size_t chunks = (payload_bytes + chunk_bytes - 1) / chunk_bytes;
  if (chunks == 0) return;
  EncodeKernel<<<unsigned(chunks), kEncThreads, 0, stream>>>(payload, payload_bytes, chunk_bytes, slots, slot_bytes,
                                                              sizes, entry_stride ? entries : nullptr, entry_stride,
                                                              max_entries);
}

void LaunchInflate(const uint8_t* in, uint8_t* out, const InflateJob* jobs, const uint32_t* entries, uint32_t n,
                   int32_t* status, cudaStream_t stream) {
  if (n == 0) return;
  InflateKernel<<<(n + kInflateWarps - 1) / kInflateWarps, kInflateWarps * 32, 0, stream>>>(in, out, jobs, entries, n,
                                                                                            status);
}

}  // namespace kvtc::huff
