// kvtc's own GPU DEFLATE coder: the kernels around include/kvtc/cuda_huffman.h.
//
// Encode: one 256-thread block per chunk. Per-warp shared-memory byte histograms; symbols
// ranked by (frequency, symbol) in parallel; the length-limited code and the block header as
// PlanBlock (the host reference) makes them, its serial steps in one thread and the others (the
// tree's depths, the lengths, the canonical codes, the counts, the header's run-length items)
// over the block (BlockPlan); then
// the literals in tiles of 4096 bytes: each thread codes 16 bytes, a block-wide exclusive scan
// gives its bit offset, bits go into a shared staging buffer with atomicOr, full 32-bit words are
// copied to the chunk's slot coalesced and the partial word carries over to the next tile.
// Inflate: one warp per chunk; the warp fills the decoding tables, then lane 0 decodes a plain
// chunk, or every lane decodes runs of an indexed chunk from its entry points (two at once when it
// has two: DecodeLiteralRuns).
// The index: the encoder's block scan already gives each thread's bit offset, so the entry points
// of an indexed chunk cost one store each.
#include <cub/block/block_scan.cuh>

#include "kvtc/cuda_huffman.h"

namespace kvtc::huff {
namespace {

constexpr int kEncThreads = 256;
// Blocks per SM the encoder's registers must allow (__launch_bounds__). Unbounded, ptxas gives it
// 48 registers: 5 blocks of 256 threads per SM where its 27.6 KB of shared memory allows 8, and an
// encode block's warps wait at barriers while one thread builds its chunk's Huffman tree (run j,
// call 24), so other blocks are what keeps the SM busy meanwhile. With 6 (40 registers, 12 bytes
// spilled) huffman_gpu_check encoded 16 KiB chunks at 124-126 GB/s against 101 unbounded, 32 KiB at
// 178 against 126; 8 (32 registers, 60 bytes spilled) gave 120 and 166 (run u, call 75). The
// build-time knob KVTC_ENC_MIN_BLOCKS overrides it (0: unbounded).
#ifndef KVTC_ENC_MIN_BLOCKS
#define KVTC_ENC_MIN_BLOCKS 6
#endif
#if KVTC_ENC_MIN_BLOCKS > 0
#define KVTC_ENC_BOUNDS __launch_bounds__(kEncThreads, KVTC_ENC_MIN_BLOCKS)
#else
#define KVTC_ENC_BOUNDS __launch_bounds__(kEncThreads)
#endif
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
  uint32_t len_count[kMaxBits + 1];  // codes per length
  uint32_t next_code[kMaxBits + 1];  // first canonical code per length
  unsigned long long literal_bits;
  int m, maxdepth, top, nr;
  uint32_t prefix_bits;  // the header before its run-length items (WriteHeaderPrefix)
  int stored;
};

// TreeDepths with the block's threads: pointer jumping (each node's distance to an ancestor
// 2^k levels up, doubled per round, ~10 rounds), then the leaves per depth counted with shared
// atomics (in tree.weight, free once the tree is built) and copied into tree.count. Returns the
// largest leaf depth to every thread.
__device__ int BlockTreeDepths(int m, TreeScratch& tree, EncodeShared& sh) {
  const int t = threadIdx.x;
  const int nodes = 2 * m - 1, root = nodes - 1;
  uint16_t* up = tree.count;  // each node's current ancestor; count is rebuilt below
  for (int i = t; i < nodes; i += kEncThreads) {
    tree.depth[i] = i == root ? 0 : 1;
    up[i] = uint16_t(i == root ? root : tree.parent[i]);
  }
  if (t == 0) sh.maxdepth = 0;
  __syncthreads();
  constexpr int kPerThread = (2 * kLitSyms - 1 + kEncThreads - 1) / kEncThreads;
  for (int span = 1; span < nodes; span <<= 1) {
    uint16_t depth[kPerThread], next[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = t + j * kEncThreads;
      if (i < nodes) {
        const int a = up[i];
        depth[j] = uint16_t(tree.depth[i] + tree.depth[a]);
        next[j] = up[a];
      }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = t + j * kEncThreads;
      if (i < nodes) {
        tree.depth[i] = depth[j];
        up[i] = next[j];
      }
    }
    __syncthreads();
  }
  uint32_t* leaves = tree.weight;
  for (int i = t; i < 2 * 288; i += kEncThreads) leaves[i] = 0;
  __syncthreads();
  for (int i = t; i < m; i += kEncThreads) {
    atomicAdd(&leaves[tree.depth[i]], 1u);
    atomicMax(&sh.maxdepth, int(tree.depth[i]));
  }
  __syncthreads();
  for (int i = t; i < 2 * 288; i += kEncThreads) tree.count[i] = uint16_t(leaves[i]);
  __syncthreads();
  return sh.maxdepth;
}

// ORs the n <= 32 bits of `value` into zeroed shared words at bit `at` (other threads write the
// bits around them).
__device__ __forceinline__ void OrBits(uint32_t* words, uint32_t at, uint32_t value, int n) {
  if (n == 0) return;
  const uint32_t w = at >> 5, shift = at & 31;
  atomicOr(&words[w], value << shift);
  if (shift + n > 32) atomicOr(&words[w + 1], value >> (32 - shift));
}

// PlanBlock (cuda_huffman.h) with the block's threads where the steps allow: the same lengths,
// codes and header, bit for bit (huffman_gpu_check compares every chunk with the host reference).
// One thread runs only the steps that are serial by nature (the two-queue tree, the depth limit,
// the run-length codes, the 19-symbol code-length code and the header's fixed fields); the
// header's run-length items are placed by a block scan (run j, call 24: the block waited at a
// barrier for thread 0's header in 20 % of the encode's stall samples). `used` symbols are
// ranked in s.order.
__device__ void BlockPlan(EncodeShared& sh, int used) {
  const int t = threadIdx.x;
  EncodeScratch& s = sh.scratch;
  if (t == 0) sh.m = PadOrder(s.order, used, kLitSyms);
  for (int i = t; i < kLitSyms; i += kEncThreads) s.lens[i] = 0;
  __syncthreads();
  const int m = sh.m;
  if (t == 0) BuildTree(s.freq, s.order, m, s.tree);
  __syncthreads();
  const int maxdepth = BlockTreeDepths(m, s.tree, sh);
  if (t == 0) sh.top = LimitDepths(maxdepth, kMaxBits, s.tree);
  if (t <= kMaxBits) sh.len_count[t] = 0;
  if (t < 19) s.pre_freq[t] = 0;
  __syncthreads();
  for (int k = t; k < m; k += kEncThreads) s.lens[s.order[k]] = uint8_t(LengthOfRank(k, sh.top, s.tree));
  __syncthreads();
  // Canonical codes: a symbol's code is its length's first code plus its rank among the symbols
  // of that length (CanonicalCodes hands them out in symbol order).
  for (int sym = t; sym < kLitSyms; sym += kEncThreads)
    if (s.lens[sym]) atomicAdd(&sh.len_count[s.lens[sym]], 1u);
  __syncthreads();
  if (t == 0) {
    FirstCodes(sh.len_count, sh.next_code);
    sh.literal_bits = 0;
  }
  __syncthreads();
  unsigned long long bits = 0;
  for (int sym = t; sym < kLitSyms; sym += kEncThreads) {
    const int l = s.lens[sym];
    uint32_t rank = 0;
    for (int u = 0; u < sym; ++u) rank += s.lens[u] == l;
    s.codes[sym] = l ? uint16_t(ReverseBits(sh.next_code[l] + rank, l)) : 0;
    sh.plan.sym[sym] = uint32_t(s.codes[sym]) | (uint32_t(l) << 16);
    bits += (unsigned long long)s.freq[sym] * l;
  }
  // One shared atomic per warp: a 64-bit shared atomicAdd is a compare-and-swap loop, and one
  // per symbol made the block wait on it (run j, call 24).
  for (int o = 16; o > 0; o >>= 1) bits += __shfl_xor_sync(0xffffffffu, bits, o);
  if ((t & 31) == 0) atomicAdd(&sh.literal_bits, bits);
  __syncthreads();
  if (t == 0) sh.nr = RunLengths(s);
  __syncthreads();
  const int nr = sh.nr;
  for (int i = t; i < nr; i += kEncThreads) atomicAdd(&s.pre_freq[s.rle_sym[i]], 1u);
  __syncthreads();
  if (t == 0) sh.prefix_bits = WriteHeaderPrefix(s, sh.stage);
  __syncthreads();
  // WriteHeader's run-length items (up to 2 * kEncThreads), two per thread: a block scan of their
  // bits places each, atomicOr writes it into the zeroed stage after the prefix.
  static_assert(sizeof(EncodeScratch::rle_sym) <= 2 * kEncThreads, "two run-length items per thread");
  const int a = 2 * t, b = a + 1;
  int bits_a = 0, bits_b = 0;
  const uint32_t item_a = a < nr ? RunItem(s, a, bits_a) : 0u, item_b = b < nr ? RunItem(s, b, bits_b) : 0u;
  uint32_t offset, items_bits;
  cub::BlockScan<uint32_t, kEncThreads>(sh.scan).ExclusiveSum(uint32_t(bits_a + bits_b), offset, items_bits);
  const uint32_t at = sh.prefix_bits + offset;
  OrBits(sh.stage, at, item_a, bits_a);
  OrBits(sh.stage, at + bits_a, item_b, bits_b);
  if (t == 0) {
    sh.plan.header_bits = sh.prefix_bits + items_bits;
    sh.plan.total_bits = sh.literal_bits + sh.plan.header_bits;
  }
  __syncthreads();
}

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

__global__ void KVTC_ENC_BOUNDS EncodeKernel(const uint8_t* __restrict__ payload, size_t payload_bytes,
                                                            size_t chunk_bytes, uint8_t* __restrict__ slots,
                                                            size_t slot_bytes, size_t* __restrict__ sizes,
                                                            uint32_t* __restrict__ entries, uint32_t entry_stride,
                                                            uint32_t max_entries,
                                                            const uint64_t* __restrict__ chunk_end) {
  __shared__ EncodeShared sh;
  const int t = threadIdx.x;
  const size_t c = blockIdx.x;
  const uint8_t* in = payload + c * chunk_bytes;
  const size_t n = min(chunk_bytes, size_t(chunk_end ? chunk_end[c] : payload_bytes) - c * chunk_bytes);
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
  BlockPlan(sh, used);
  if (t == 0) {
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
                  size_t* sizes, uint32_t* entries, uint32_t entry_stride, uint32_t max_entries, cudaStream_t stream,
                  const uint64_t* chunk_end) {
  const size_t chunks = (payload_bytes + chunk_bytes - 1) / chunk_bytes;
  if (chunks == 0) return;
  EncodeKernel<<<unsigned(chunks), kEncThreads, 0, stream>>>(payload, payload_bytes, chunk_bytes, slots, slot_bytes,
                                                              sizes, entry_stride ? entries : nullptr, entry_stride,
                                                              max_entries, chunk_end);
}

void LaunchInflate(const uint8_t* in, uint8_t* out, const InflateJob* jobs, const uint32_t* entries, uint32_t n,
                   int32_t* status, cudaStream_t stream) {
  if (n == 0) return;
  InflateKernel<<<(n + kInflateWarps - 1) / kInflateWarps, kInflateWarps * 32, 0, stream>>>(in, out, jobs, entries, n,
                                                                                            status);
}

}  // namespace kvtc::huff
