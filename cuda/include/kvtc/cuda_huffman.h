// kvtc's own DEFLATE coder for the GPU (RFC 1951, standard raw DEFLATE, so records stay
// cross-decodable with libdeflate on the CPU).
//
// Encoder: one dynamic-Huffman block per chunk, literals only (no LZ77 matches): byte histogram,
// length-limited (15-bit) Huffman code over the 256 literals + end-of-block, the block header
// (code-length alphabet with its own 7-bit code, run-length codes 16/17/18, one distance code of
// length 1), then the literal bit stream. The quantized payload has few matches; the gain is in
// the entropy.
// Decoder: any valid raw DEFLATE stream (stored, fixed and dynamic blocks, matches), validating
// everything: corrupt input gives an error status, never an out-of-bounds access or a hang.
//
// Every per-chunk step is a __host__ __device__ function, so the host test
// (tools/huffman_check.cc, plain g++ with -fsanitize=address) runs the very code the kernels run,
// except where the GPU spreads a serial step over its threads (the encoder's BlockPlan in
// src/cuda_huffman.cu, WarpPrepareTable below): those must give the serial step's result, which
// tools/huffman_gpu_check.cu checks on the GPU chunk by chunk.
// The kernels themselves (src/cuda_huffman.cu) are declared at the end, for CUDA translation units.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVTC_HD __host__ __device__
#define KVTC_HD_INLINE __host__ __device__ __forceinline__
#else
#define KVTC_HD
#define KVTC_HD_INLINE inline
#endif

#if defined(__CUDA_ARCH__)
#define KVTC_SYNCWARP() __syncwarp()
#else
#define KVTC_SYNCWARP() \
  do {                  \
  } while (0)
#endif

namespace kvtc::huff {

constexpr int kMaxBits = 15;         // DEFLATE's longest litlen/distance codeword
constexpr int kMaxPrecodeBits = 7;   // longest code-length-alphabet codeword
constexpr int kLitSyms = 257;        // 256 literals + end-of-block
constexpr int kMaxHeaderBits = 3 + 14 + 19 * 3 + 258 * (7 + 7);  // generous bound on our header
constexpr int kHeaderWords = (kMaxHeaderBits + 31) / 32;

// ---- shared helpers --------------------------------------------------------------------------

KVTC_HD_INLINE uint32_t ReverseBits(uint32_t code, int len) {
#if defined(__CUDA_ARCH__)
  return __brev(code) >> (32 - len);
#else
  uint32_t r = 0;
  for (int i = 0; i < len; ++i) {
    r = (r << 1) | (code & 1);
    code >>= 1;
  }
  return r;
#endif
}

// Scratch of the Huffman construction (one thread).
struct TreeScratch {
  uint32_t weight[2 * 288];
  uint16_t parent[2 * 288];
  uint16_t depth[2 * 288];
  uint16_t count[2 * 288];  // leaves per depth
};

// Length-limited Huffman code lengths, in three steps the GPU encoder runs with the block's
// threads where it can (cuda_huffman.cu) and LengthsFromSorted runs in one thread. `order` lists
// the m >= 2 used symbols by ascending (freq, symbol); `freq` is indexed by symbol.
//
// 1. BuildTree: the Huffman tree by the two-queue method (leaves 0..m-1 in `order`'s order,
//    inner nodes m..2m-2 in the order they are made), parent links in t.parent. The queue heads
//    stay in registers: one load per step where a shared-memory walk would chain four.
KVTC_HD inline void BuildTree(const uint32_t* freq, const uint16_t* order, int m, TreeScratch& t) {
  for (int i = 0; i < m; ++i) t.weight[i] = freq[order[i]];
  int leaf = 0, inner = m, next = m;
  const int nodes = 2 * m - 1;
  uint32_t leaf_w = t.weight[0], inner_w = 0;  // weight[leaf]; weight[inner] while inner < next
  while (next < nodes) {
    uint32_t sum = 0;
    for (int k = 0; k < 2; ++k) {
      int pick;
      if (leaf < m && (inner >= next || leaf_w <= inner_w)) {
        pick = leaf++;
        sum += leaf_w;
        leaf_w = leaf < m ? t.weight[leaf] : 0;
      } else {
        pick = inner++;
        sum += inner_w;
        inner_w = inner < next ? t.weight[inner] : 0;
      }
      t.parent[pick] = uint16_t(next);
    }
    t.weight[next] = sum;
    if (inner == next) inner_w = sum;
    ++next;
  }
}

// 2. The depth of every node (t.depth) and the leaves per depth (t.count); returns the largest
//    leaf depth. Parents come after their children, so one pass from the root down.
KVTC_HD inline int TreeDepths(int m, TreeScratch& t) {
  const int nodes = 2 * m - 1;
  t.depth[nodes - 1] = 0;
  int maxdepth = 0;
  for (int i = 0; i < 2 * 288; ++i) t.count[i] = 0;
  for (int i = nodes - 2; i >= 0; --i) {
    t.depth[i] = uint16_t(t.depth[t.parent[i]] + 1);
    if (i < m) {
      t.count[t.depth[i]]++;
      if (t.depth[i] > maxdepth) maxdepth = t.depth[i];
    }
  }
  return maxdepth;
}

// 3a. Limits the depth to `maxbits` with the JPEG (Annex K.3) adjustment of t.count, which keeps
//     the code complete. Returns the longest length left.
KVTC_HD inline int LimitDepths(int maxdepth, int maxbits, TreeScratch& t) {
  for (int i = maxdepth; i > maxbits; --i) {
    while (t.count[i] > 0) {
      int j = i - 2;
      while (t.count[j] == 0) --j;
      t.count[i] -= 2;
      t.count[i - 1] += 1;
      t.count[j + 1] += 2;
      t.count[j] -= 1;
    }
  }
  return maxbits < maxdepth ? maxbits : maxdepth;
}

// 3b. The length of the k-th symbol of `order` (k < m): the longest lengths go to the rarest
//     symbols, t.count[top] of them first.
KVTC_HD_INLINE int LengthOfRank(int k, int top, const TreeScratch& t) {
  int bits = top;
  for (int below = t.count[bits]; k >= below && bits > 1;) below += t.count[--bits];
  return bits;
}

// Writes lens[order[i]] for the m used symbols (the caller zeroes the unused symbols' lengths).
// Needs m <= 288 and m <= 2^maxbits.
KVTC_HD inline void LengthsFromSorted(const uint32_t* freq, const uint16_t* order, int m, int maxbits, uint8_t* lens,
                                      TreeScratch& t) {
  BuildTree(freq, order, m, t);
  const int top = LimitDepths(TreeDepths(m, t), maxbits, t);
  for (int k = 0; k < m; ++k) lens[order[k]] = uint8_t(LengthOfRank(k, top, t));
}

// The first canonical code of each length b = 1..kMaxBits into first[b], from count[b] codes of
// length b (count[0], the unused symbols, is ignored).
template <typename Count>
KVTC_HD_INLINE void FirstCodes(const Count* count, uint32_t* first) {
  uint32_t code = 0;
  for (int b = 1; b <= kMaxBits; ++b) {
    code = (code + (b > 1 ? uint32_t(count[b - 1]) : 0u)) << 1;
    first[b] = code;
  }
}

// Canonical codes (bit-reversed, ready to emit LSB first) from lengths.
KVTC_HD inline void CanonicalCodes(const uint8_t* lens, int n, uint16_t* codes) {
  uint16_t count[kMaxBits + 2] = {0};
  uint32_t next[kMaxBits + 2] = {0};
  for (int s = 0; s < n; ++s) count[lens[s]]++;
  FirstCodes(count, next);
  for (int s = 0; s < n; ++s) {
    const int l = lens[s];
    codes[s] = l ? uint16_t(ReverseBits(next[l]++, l)) : 0;
  }
}

// Serial sort of the used symbols by (freq, symbol): insertion sort (n is 19 or 257).
KVTC_HD inline int SortUsed(const uint32_t* freq, int n, uint16_t* order) {
  int m = 0;
  for (int s = 0; s < n; ++s) {
    if (!freq[s]) continue;
    int i = m++;
    while (i > 0 && freq[order[i - 1]] > freq[s]) {
      order[i] = order[i - 1];
      --i;
    }
    order[i] = uint16_t(s);
  }
  return m;
}

// Gives a code of at least two symbols: pads `order` (sorted) with unused symbols of weight 0
// placed first; `freq` is a scratch copy the caller may modify.
KVTC_HD inline int PadOrder(uint16_t* order, int m, int n) {
  for (int s = 0; m < 2 && s < n; ++s) {
    bool used = false;
    for (int i = 0; i < m; ++i) used |= order[i] == s;
    if (used) continue;
    for (int i = m; i > 0; --i) order[i] = order[i - 1];
    order[0] = uint16_t(s);
    ++m;
  }
  return m;
}

// Bit writer into zeroed 32-bit words (LSB first, as DEFLATE packs bits).
struct BitWriter {
  uint32_t* words;
  uint32_t bits = 0;
  KVTC_HD_INLINE void Put(uint32_t value, int n) {
    if (n == 0) return;
    const uint32_t w = bits >> 5, s = bits & 31;
    words[w] |= value << s;
    if (s + n > 32) words[w + 1] |= value >> (32 - s);
    bits += n;
  }
};

// ---- encoder -----------------------------------------------------------------------------------

// Everything the literal bit stream needs after the header: per-symbol code | len << 16.
struct EncodePlan {
  uint32_t sym[kLitSyms];  // reversed code in the low 16 bits, length in bits 16..19
  uint32_t header_bits;
  uint64_t total_bits;     // header + literals + end-of-block
};

struct EncodeScratch {
  TreeScratch tree;
  uint32_t freq[kLitSyms];  // with end-of-block = 1
  uint16_t order[288];
  uint8_t lens[kLitSyms];
  uint16_t codes[kLitSyms];
  uint8_t rle_sym[260];
  uint8_t rle_extra[260];
  uint32_t pre_freq[19];
  uint16_t pre_order[19];
  uint8_t pre_lens[19];
  uint16_t pre_codes[19];
};

// The block plan in steps, so that the GPU encoder can run the long ones with all its threads
// (cuda_huffman.cu) and PlanBlock below runs them in one thread, as the host reference.

// The code of every literal and the end-of-block, from the lengths: plan.sym[i] = reversed code |
// length << 16. Returns the literals' bits (freq[256] is 1: the end-of-block).
KVTC_HD inline uint64_t PlanSymbols(const EncodeScratch& s, EncodePlan& plan) {
  uint64_t total = 0;
  for (int i = 0; i < kLitSyms; ++i) {
    plan.sym[i] = uint32_t(s.codes[i]) | (uint32_t(s.lens[i]) << 16);
    total += uint64_t(s.freq[i]) * s.lens[i];
  }
  return total;
}

// Run-length coded code lengths (s.rle_sym, s.rle_extra): the 257 litlen lengths, then the single
// distance length (kept as a separate run so no repeat crosses from litlen into distance
// lengths). Returns their count.
KVTC_HD inline int RunLengths(EncodeScratch& s) {
  int nr = 0;
  for (int i = 0; i < kLitSyms;) {
    const uint8_t v = s.lens[i];
    int run = 1;
    while (i + run < kLitSyms && s.lens[i + run] == v) ++run;
    i += run;
    if (v == 0) {
      while (run >= 11) {
        const int r = run > 138 ? 138 : run;
        s.rle_sym[nr] = 18;
        s.rle_extra[nr++] = uint8_t(r - 11);
        run -= r;
      }
      if (run >= 3) {
        s.rle_sym[nr] = 17;
        s.rle_extra[nr++] = uint8_t(run - 3);
        run = 0;
      }
    } else {
      s.rle_sym[nr] = v;
      s.rle_extra[nr++] = 0;
      --run;
      while (run >= 3) {
        const int r = run > 6 ? 6 : run;
        s.rle_sym[nr] = 16;
        s.rle_extra[nr++] = uint8_t(r - 3);
        run -= r;
      }
    }
    while (run-- > 0) {
      s.rle_sym[nr] = v;
      s.rle_extra[nr++] = 0;
    }
  }
  s.rle_sym[nr] = 1;  // the one distance code, of length 1
  s.rle_extra[nr++] = 0;
  return nr;
}

// Bit writer that keeps the partial word in a register and stores whole words: the same words
// as BitWriter into zeroed memory, without a read-modify-write of memory per call (on the GPU a
// shared-memory round trip each). Flush() stores the partial last word.
struct WordWriter {
  uint32_t* words;
  uint32_t bits = 0;
  uint64_t acc = 0;
  KVTC_HD_INLINE void Put(uint32_t value, int n) {  // n <= 32
    const uint32_t word = bits >> 5;
    acc |= uint64_t(value) << (bits & 31);
    bits += n;
    if ((bits >> 5) != word) {  // the word is full
      words[word] = uint32_t(acc);
      acc >>= 32;
    }
  }
  KVTC_HD_INLINE void Flush() {
    if (bits & 31) words[bits >> 5] = uint32_t(acc);
  }
};

// Extra bits after a code-length code: 2 for 16 (repeat the last length), 3 for 17, 7 for 18
// (runs of zeros).
KVTC_HD_INLINE int RunExtraBits(int sym) { return sym == 16 ? 2 : sym == 17 ? 3 : sym == 18 ? 7 : 0; }

// Run-length item i of the header: its precode code with the extra bits above it, and their bits.
KVTC_HD_INLINE uint32_t RunItem(const EncodeScratch& s, int i, int& bits) {
  const int sym = s.rle_sym[i];
  bits = s.pre_lens[sym] + RunExtraBits(sym);
  return uint32_t(s.pre_codes[sym]) | uint32_t(s.rle_extra[i]) << s.pre_lens[sym];
}

// The code-length code (from s.pre_freq, the counts of s.rle_sym) and the header up to the
// run-length items (BFINAL, BTYPE, HLIT, HDIST, HCLEN, the code-length code's lengths) into
// `header` (zeroed, kHeaderWords words). Returns its bits.
KVTC_HD inline uint32_t WriteHeaderPrefix(EncodeScratch& s, uint32_t* header) {
  int pm = SortUsed(s.pre_freq, 19, s.pre_order);
  pm = PadOrder(s.pre_order, pm, 19);
  for (int i = 0; i < 19; ++i) s.pre_lens[i] = 0;
  LengthsFromSorted(s.pre_freq, s.pre_order, pm, kMaxPrecodeBits, s.pre_lens, s.tree);
  CanonicalCodes(s.pre_lens, 19, s.pre_codes);
  const uint8_t kPermutation[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  int hclen = 19;
  while (hclen > 4 && s.pre_lens[kPermutation[hclen - 1]] == 0) --hclen;
  WordWriter w{header};
  w.Put(1, 1);  // BFINAL
  w.Put(2, 2);  // BTYPE = dynamic Huffman
  w.Put(kLitSyms - 257, 5);
  w.Put(1 - 1, 5);
  w.Put(uint32_t(hclen - 4), 4);
  for (int i = 0; i < hclen; ++i) w.Put(s.pre_lens[kPermutation[i]], 3);
  w.Flush();
  return w.bits;
}

// The whole block header: WriteHeaderPrefix, then the nr run-length items (the GPU encoder writes
// those with its threads, BlockPlan); plan.header_bits, and plan.total_bits = literal_bits +
// header.
KVTC_HD inline void WriteHeader(EncodeScratch& s, int nr, uint64_t literal_bits, uint32_t* header, EncodePlan& plan) {
  const uint32_t prefix = WriteHeaderPrefix(s, header);
  WordWriter w{header, prefix, prefix & 31 ? header[prefix >> 5] : 0u};
  for (int i = 0; i < nr; ++i) {
    int bits;
    const uint32_t item = RunItem(s, i, bits);
    w.Put(item, bits);
  }
  w.Flush();
  plan.header_bits = w.bits;
  plan.total_bits = literal_bits + w.bits;
}

// From the histogram (s.freq, end-of-block included) and its sorted used symbols (s.order, m of
// them): code lengths, codes and the block header written into `header` (zeroed, kHeaderWords
// words). Fills `plan`. One thread: the reference the GPU encoder's steps reproduce.
KVTC_HD inline void PlanBlock(EncodeScratch& s, int m, uint32_t* header, EncodePlan& plan) {
  m = PadOrder(s.order, m, kLitSyms);
  for (int i = 0; i < kLitSyms; ++i) s.lens[i] = 0;
  LengthsFromSorted(s.freq, s.order, m, kMaxBits, s.lens, s.tree);
  CanonicalCodes(s.lens, kLitSyms, s.codes);
  const uint64_t literal_bits = PlanSymbols(s, plan);
  const int nr = RunLengths(s);
  for (int i = 0; i < 19; ++i) s.pre_freq[i] = 0;
  for (int i = 0; i < nr; ++i) s.pre_freq[s.rle_sym[i]]++;
  WriteHeader(s, nr, literal_bits, header, plan);
}

// Entry points of an indexed chunk of n bytes: one per run of entry_stride literals but the first.
KVTC_HD_INLINE uint32_t EntryCount(size_t n, uint32_t entry_stride) {
  return n == 0 ? 0u : uint32_t((n + entry_stride - 1) / entry_stride - 1);
}

// Serial reference encoder of one chunk (the host test, and the layout the kernel reproduces
// bit for bit). Returns the DEFLATE size in bytes, or n when the chunk is to be stored (the
// stream would not be smaller than the chunk); `out` needs (n + 3) / 4 * 4 bytes.
//
// With entry_stride > 0, entries[k - 1] = the bit offset (from the stream's first byte) of the
// code of literal k * entry_stride, k = 1 .. ceil(n / entry_stride) - 1: the index that lets a
// decoder start at any k * entry_stride (kDeflateIndexed sections, entropy.h). Left untouched
// when the chunk is stored.
inline size_t EncodeChunkSerial(const uint8_t* in, size_t n, uint8_t* out, EncodeScratch& s,
                                uint32_t* entries = nullptr, uint32_t entry_stride = 0) {
  for (int i = 0; i < kLitSyms; ++i) s.freq[i] = 0;
  for (size_t i = 0; i < n; ++i) s.freq[in[i]]++;
  s.freq[256] = 1;
  const int m = SortUsed(s.freq, kLitSyms, s.order);
  uint32_t header[kHeaderWords] = {0};
  EncodePlan plan;
  PlanBlock(s, m, header, plan);
  const uint64_t bytes = (plan.total_bits + 7) / 8;
  if (bytes >= n) return n;
  const size_t words = (plan.total_bits + 31) / 32;
  uint32_t* w = new uint32_t[words + 1]();
  std::memcpy(w, header, ((plan.header_bits + 31) / 32) * 4);
  BitWriter bw{w, plan.header_bits};
  for (size_t i = 0; i < n; ++i) {
    if (entries && entry_stride && i > 0 && i % entry_stride == 0) entries[i / entry_stride - 1] = bw.bits;
    bw.Put(plan.sym[in[i]] & 0xffff, int(plan.sym[in[i]] >> 16));
  }
  bw.Put(plan.sym[256] & 0xffff, int(plan.sym[256] >> 16));
  std::memcpy(out, w, size_t(bytes));
  delete[] w;
  return size_t(bytes);
}

// ---- decoder -----------------------------------------------------------------------------------

enum InflateStatus : int32_t {
  kInflateOk = 0,
  kInflateBadData = 1,     // malformed stream
  kInflateTruncated = 2,   // ran past the end of the input
  kInflateOverflow = 3,    // would write past the expected output size
  kInflateShort = 4,       // ended before the expected output size
};

// 12 bits (8 KiB, filled by the warp): a quantized payload's byte codes are long, and with 10
// bits the 32 lanes of an inflate warp took DecodeSym's slow path at ~40 % of their steps, one
// lane at a time, while the two-literal table (removed) rarely found two codes in 10 bits (run j,
// call 24: per-instruction samples of the 1B 8K InflateKernel).
constexpr int kLitTableBits = 12;
constexpr int kDistTableBits = 8;
constexpr int kPreTableBits = 7;

// A Huffman decoding table: a direct table of 2^bits entries (symbol | length << 9; 0 sends the
// decoder to the canonical slow path for codes longer than `bits`, and for bit patterns of an
// incomplete code) plus the canonical description (count per length, symbols sorted by code).
template <int kBits, int kSyms>
struct DecodeTable {
  uint16_t direct[1 << kBits];
  uint16_t count[kMaxBits + 1];
  uint16_t offs[kMaxBits + 1];   // first index in sym[] per length
  uint16_t first[kMaxBits + 1];  // first canonical code per length
  uint16_t sym[kSyms];
  uint16_t ncodes;
};

using LitTable = DecodeTable<kLitTableBits, 288>;
using DistTable = DecodeTable<kDistTableBits, 32>;
using PreTable = DecodeTable<kPreTableBits, 19>;

// From t.count (count[0] ignored): validity (over-subscribed codes are rejected; incomplete codes
// only when empty or a single codeword of length 1, as libdeflate does), first code and first
// index per length, the number of codes. Returns false on a bad code.
template <int kBits, int kSyms>
KVTC_HD inline bool FinishCounts(DecodeTable<kBits, kSyms>& t) {
  t.count[0] = 0;
  int left = 1, total = 0;
  for (int b = 1; b <= kMaxBits; ++b) {
    left <<= 1;
    left -= t.count[b];
    if (left < 0) return false;
    total += t.count[b];
  }
  if (left > 0 && !(total == 0 || (total == 1 && t.count[1] == 1))) return false;
  uint32_t code = 0;
  int idx = 0;
  for (int b = 1; b <= kMaxBits; ++b) {
    t.offs[b] = uint16_t(idx);
    t.first[b] = uint16_t(code);
    idx += t.count[b];
    code = (code + t.count[b]) << 1;
  }
  t.ncodes = uint16_t(total);
  return true;
}

// The serial part of building a table: counts, FinishCounts, the symbols in canonical order.
// Returns false on a bad code. WarpPrepareTable runs the same steps with a warp's lanes.
template <int kBits, int kSyms>
KVTC_HD inline bool PrepareTable(const uint8_t* lens, int n, DecodeTable<kBits, kSyms>& t) {
  for (int b = 0; b <= kMaxBits; ++b) t.count[b] = 0;
  for (int s = 0; s < n; ++s) t.count[lens[s]]++;
  if (!FinishCounts(t)) return false;
  uint16_t at[kMaxBits + 1];
  for (int b = 1; b <= kMaxBits; ++b) at[b] = t.offs[b];
  for (int s = 0; s < n; ++s) {
    if (lens[s]) t.sym[at[lens[s]]++] = uint16_t(s);
  }
  return true;
}

// PrepareTable by lanes [0, nlanes) of a warp (nlanes 1: PrepareTable itself): lengths counted
// and symbols placed 32 at a time with warp votes, where one lane would walk the 288 lengths
// twice through shared memory. Same table, same verdict, in every lane.
template <int kBits, int kSyms>
KVTC_HD inline bool WarpPrepareTable(const uint8_t* lens, int n, DecodeTable<kBits, kSyms>& t, int lane, int nlanes) {
#if defined(__CUDA_ARCH__)
  if (nlanes == 32) {
    constexpr unsigned kAll = 0xffffffffu;
    uint32_t mine = 0;  // lane b (1..kMaxBits): codes of length b
    for (int base = 0; base < n; base += 32) {
      const int l = base + lane < n ? lens[base + lane] : 0;
      for (int b = 1; b <= kMaxBits; ++b) {
        const uint32_t votes = __popc(__ballot_sync(kAll, l == b));
        if (lane == b) mine += votes;
      }
    }
    if (lane <= kMaxBits) t.count[lane] = uint16_t(mine);
    __syncwarp();
    int ok = 0;
    if (lane == 0) ok = FinishCounts(t);
    ok = __shfl_sync(kAll, ok, 0);
    __syncwarp();
    if (!ok) return false;
    uint32_t next = lane <= kMaxBits ? t.offs[lane] : 0;  // lane b: next index of length b
    for (int base = 0; base < n; base += 32) {
      const int s = base + lane;
      const int l = s < n ? lens[s] : 0;
      const uint32_t same = __match_any_sync(kAll, l);
      const uint32_t at = __shfl_sync(kAll, next, l) + __popc(same & ((1u << lane) - 1));
      if (l) t.sym[at] = uint16_t(s);
      for (int b = 1; b <= kMaxBits; ++b) {
        const uint32_t votes = __popc(__ballot_sync(kAll, l == b));
        if (lane == b) next += votes;
      }
    }
    __syncwarp();
    return true;
  }
#endif
  (void)lane;
  (void)nlanes;
  return PrepareTable(lens, n, t);
}

// The parallel part: fills the direct table; lanes [0, nlanes) of a warp (one lane on the host)
// share it, with a warp barrier between clearing and filling, and after. One lane alone (lane 0
// building the precode table inside ReadBlockHeader) takes no barrier: a __syncwarp there would
// pair with the other lanes' next barrier and let them run ahead of the header.
template <int kBits, int kSyms>
KVTC_HD inline void FillTable(const uint8_t* lens, DecodeTable<kBits, kSyms>& t, int lane, int nlanes) {
  for (int i = lane; i < (1 << kBits); i += nlanes) t.direct[i] = 0;
  if (nlanes > 1) KVTC_SYNCWARP();
  for (int i = lane; i < t.ncodes; i += nlanes) {
    const int s = t.sym[i];
    const int l = lens[s];
    if (l > kBits) continue;
    const uint32_t rev = ReverseBits(t.first[l] + uint32_t(i - t.offs[l]), l);
    const uint16_t e = uint16_t(s | (l << 9));
    for (uint32_t k = rev; k < (1u << kBits); k += 1u << l) t.direct[k] = e;
  }
  if (nlanes > 1) KVTC_SYNCWARP();
}

// Bit reader over [in, in + size): loads past the end read zeros; the decoder errors once more
// than 16 such bytes were loaded, and checks at the end that no loaded zero was consumed.
// A refill appends the 4 bytes at `pos`. The host loads them unaligned (Load32), one refill
// ahead. The GPU keeps the input's aligned words: since pos moves 4 bytes per refill, every
// refill cuts its word from two aligned words with the same shift, and loads the word it will
// need two refills later, so the shift never waits on a load (run j, call 24: 27 % of the inflate
// loop's stalls were a funnel shift waiting on the load issued at the same refill).
struct BitReader {
  const uint8_t* in;
  uint32_t size;
  uint32_t pos;  // bytes loaded into buf (may pass size)
  uint32_t count;
  uint64_t buf;
  uint32_t ahead0, ahead1;  // host: the words at pos and pos + 4
  // GPU: the aligned words around [in, in + size) (the first and last may hold bytes outside it,
  // never past a 4-byte boundary, so never in another page; masked at use); raw0..raw2 = words
  // wi .. wi + 2; the next refill is the 4 bytes at bit `shift` of raw1:raw0.
  const uint32_t* words;
  uint32_t nwords, wi, shift;
  uint32_t raw0, raw1, raw2;

  KVTC_HD_INLINE void Start(uint32_t p) {
    pos = p;
    count = 0;
    buf = 0;
#if defined(__CUDA_ARCH__)
    StartWords(p);
#else
    ahead0 = Load32(p);
    ahead1 = Load32(p + 4);
#endif
  }
  // Ensures n <= 32 bits in buf; false once the input is overrun by more than 16 bytes.
  KVTC_HD_INLINE bool Need(int n) {
    if (count < uint32_t(n)) {
      if (pos > size + 16) return false;
#if defined(__CUDA_ARCH__)
      buf |= uint64_t(NextFromWords()) << count;
#else
      buf |= uint64_t(ahead0) << count;
      ahead0 = ahead1;
      ahead1 = Load32(pos + 8);
#endif
      pos += 4;
      count += 32;
    }
    return true;
  }
  KVTC_HD_INLINE uint32_t Peek(int n) const { return uint32_t(buf) & ((1u << n) - 1); }
  KVTC_HD_INLINE void Drop(int n) {
    buf >>= n;
    count -= n;
  }
  KVTC_HD_INLINE uint32_t Take(int n) {
    const uint32_t v = n ? Peek(n) : 0;
    Drop(n);
    return v;
  }
  // Bits consumed so far beyond the real input?
  KVTC_HD_INLINE bool Overrun() const { return uint64_t(pos) * 8 - count > uint64_t(size) * 8; }

  // The 4 bytes at p, zeros past size (little-endian, as DEFLATE).
  KVTC_HD_INLINE uint32_t Load32(uint32_t p) const {
    if (p >= size) return 0;
    uint32_t v = 0;
    if (size - p >= 4) {
      std::memcpy(&v, in + p, 4);
      return v;
    }
    for (uint32_t k = 0; k < 4 && p + k < size; ++k) v |= uint32_t(in[p + k]) << (8 * k);
    return v;
  }
  // The GPU's word stream (host-callable so that huffman_check compares it with Load32's).
  KVTC_HD_INLINE void StartWords(uint32_t p) {
    const uint32_t skew = uint32_t(reinterpret_cast<uintptr_t>(in) & 3);
    words = reinterpret_cast<const uint32_t*>(in - skew);
    nwords = (size + skew + 3) >> 2;
    wi = (p + skew) >> 2;
    shift = ((p + skew) & 3) * 8;
    raw0 = Word(wi);
    raw1 = Word(wi + 1);
    raw2 = Word(wi + 2);
  }
  KVTC_HD_INLINE uint32_t Word(uint32_t i) const { return i < nwords ? words[i] : 0u; }
  // Load32(pos) from the words already loaded; then the window moves one word.
  KVTC_HD_INLINE uint32_t NextFromWords() {
#if defined(__CUDA_ARCH__)
    uint32_t v = __funnelshift_r(raw0, raw1, shift);
#else
    uint32_t v = uint32_t(((uint64_t(raw1) << 32) | raw0) >> shift);
#endif
    if (pos + 4 > size) v = pos >= size ? 0u : v & (0xffffffffu >> (8 * (pos + 4 - size)));
    raw0 = raw1;
    raw1 = raw2;
    raw2 = Word(wi + 3);
    ++wi;
    return v;
  }
};

// Decodes one symbol; needs >= kMaxBits bits in the reader. Returns -1 for a bit pattern that is
// no codeword.
template <int kBits, int kSyms>
KVTC_HD_INLINE int DecodeSym(BitReader& br, const DecodeTable<kBits, kSyms>& t) {
  const uint16_t e = t.direct[br.Peek(kBits)];
  if (e) {
    br.Drop(e >> 9);
    return e & 511;
  }
  // Canonical decoding of a code longer than kBits (or of no codeword): the direct table holds
  // every codeword of up to kBits bits, so only the longer lengths can match. Each length is
  // tested on its own (first code and index per length come from PrepareTable), without the
  // chain of a bit-at-a-time walk: on the GPU a warp waits for its slowest lane, and with ~10 %
  // long codes in a quantized payload some lane takes this path at nearly every step.
  const uint32_t bits = uint32_t(br.buf);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int len = kBits + 1; len <= kMaxBits; ++len) {
    const uint32_t d = ReverseBits(bits & ((1u << len) - 1), len) - t.first[len];
    if (d < t.count[len]) {
      br.Drop(len);
      return t.sym[t.offs[len] + d];
    }
  }
  return -1;
}

// Decoder state of one chunk (in shared memory on the GPU, one per warp).
struct InflateState {
  LitTable lit;
  DistTable dist;
  PreTable pre;
  uint8_t lens[288 + 32];
  BitReader br;
  uint32_t out_pos;
  int32_t status;
  int16_t nlit, ndist;
  int8_t phase;  // 0: next block header, 1: Huffman block ready, 2: done (status set)
  int8_t final_block;

  // Lane 0: a fresh stream of in_size bytes at `in`.
  KVTC_HD_INLINE void Begin(const uint8_t* in, uint32_t in_size) {
    br.in = in;
    br.size = in_size;
    br.Start(0);
    out_pos = 0;
    status = kInflateOk;
    phase = 0;
    final_block = 0;
  }
};

namespace detail {

// Length and distance bases and extra bits, computed (no tables to place in device memory).
KVTC_HD_INLINE int LenExtra(int sym) { return sym < 8 || sym == 28 ? 0 : (sym - 4) >> 2; }
KVTC_HD_INLINE uint32_t LenBase(int sym) {
  return sym < 8 ? uint32_t(3 + sym) : sym == 28 ? 258u : ((4u + (sym & 3)) << LenExtra(sym)) + 3;
}
KVTC_HD_INLINE int DistExtra(int sym) { return sym < 4 ? 0 : (sym - 2) >> 1; }
KVTC_HD_INLINE uint32_t DistBase(int sym) { return sym < 4 ? uint32_t(1 + sym) : ((2u + (sym & 1)) << DistExtra(sym)) + 1; }

KVTC_HD_INLINE void Fail(InflateState& st, int32_t status) {
  st.status = status;
  st.phase = 2;
}

// Lane 0: reads the next block header. Stored blocks are copied here; Huffman blocks leave their
// code lengths in st.lens and st.lit / st.dist prepared (unless `tables` is false: then the
// caller prepares them, WarpPrepareTable), phase 1, for the warp to fill tables.
KVTC_HD inline void ReadBlockHeader(InflateState& st, uint8_t* out, uint32_t out_size, bool tables = true) {
  BitReader& br = st.br;
  if (!br.Need(3)) return Fail(st, kInflateTruncated);
  st.final_block = int8_t(br.Take(1));
  const uint32_t type = br.Take(2);
  if (type == 0) {
    br.Drop(br.count & 7);  // to a byte boundary
    uint32_t p = br.pos - br.count / 8;  // next unconsumed byte
    if (p > br.size || br.size - p < 4) return Fail(st, kInflateTruncated);
    const uint32_t len = uint32_t(br.in[p]) | uint32_t(br.in[p + 1]) << 8;
    const uint32_t nlen = uint32_t(br.in[p + 2]) | uint32_t(br.in[p + 3]) << 8;
    p += 4;
    if ((len ^ 0xffffu) != nlen) return Fail(st, kInflateBadData);
    if (br.size - p < len) return Fail(st, kInflateTruncated);
    if (out_size - st.out_pos < len) return Fail(st, kInflateOverflow);
    for (uint32_t i = 0; i < len; ++i) out[st.out_pos + i] = br.in[p + i];
    st.out_pos += len;
    br.Start(p + len);
    st.phase = st.final_block ? 2 : 0;
    return;
  }
  if (type == 3) return Fail(st, kInflateBadData);
  if (type == 1) {
    st.nlit = 288;
    st.ndist = 32;
    for (int i = 0; i < 288; ++i) st.lens[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    for (int i = 0; i < 32; ++i) st.lens[288 + i] = 5;
  } else {
    if (!br.Need(14)) return Fail(st, kInflateTruncated);
    st.nlit = int16_t(br.Take(5) + 257);
    st.ndist = int16_t(br.Take(5) + 1);
    const int ncl = int(br.Take(4)) + 4;
    const uint8_t kPermutation[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t pl[19] = {0};
    for (int i = 0; i < ncl; ++i) {
      if (!br.Need(3)) return Fail(st, kInflateTruncated);
      pl[kPermutation[i]] = uint8_t(br.Take(3));
    }
    if (!PrepareTable(pl, 19, st.pre)) return Fail(st, kInflateBadData);
    FillTable(pl, st.pre, 0, 1);
    const int total = st.nlit + st.ndist;
    uint8_t* lens = st.lens;  // decoded as one sequence, then split into litlen | distance
    for (int i = 0; i < total;) {
      if (!br.Need(kMaxPrecodeBits + 7)) return Fail(st, kInflateTruncated);
      const int sym = DecodeSym(br, st.pre);
      if (sym < 0) return Fail(st, kInflateBadData);
      if (sym < 16) {
        lens[i++] = uint8_t(sym);
        continue;
      }
      int rep;
      uint8_t v = 0;
      if (sym == 16) {
        if (i == 0) return Fail(st, kInflateBadData);
        v = lens[i - 1];
        rep = 3 + int(br.Take(2));
      } else if (sym == 17) {
        rep = 3 + int(br.Take(3));
      } else {
        rep = 11 + int(br.Take(7));
      }
      if (rep > total - i) return Fail(st, kInflateBadData);
      while (rep--) lens[i++] = v;
    }
    if (br.Overrun()) return Fail(st, kInflateTruncated);
    for (int i = 31; i >= 0; --i) st.lens[288 + i] = i < st.ndist ? lens[st.nlit + i] : 0;  // dst >= src
    for (int i = st.nlit; i < 288; ++i) st.lens[i] = 0;
    if (st.lens[256] == 0) return Fail(st, kInflateBadData);  // no end-of-block code
  }
  if (tables && (!PrepareTable(st.lens, 288, st.lit) || !PrepareTable(st.lens + 288, 32, st.dist))) {
    return Fail(st, kInflateBadData);
  }
  st.phase = 1;
}

// Lane 0: decodes the symbols of a Huffman block up to its end-of-block.
KVTC_HD inline void DecodeBlock(InflateState& st, uint8_t* __restrict__ out, uint32_t out_size) {
  BitReader br = st.br;  // registers in the hot loop
  uint32_t op = st.out_pos;
  int32_t status = kInflateOk;
  for (;;) {
    if (!br.Need(kMaxBits)) {
      status = kInflateTruncated;
      break;
    }
    int sym = DecodeSym(br, st.lit);
    if (sym < 256) {
      if (sym < 0) {
        status = kInflateBadData;
        break;
      }
      if (op >= out_size) {
        status = kInflateOverflow;
        break;
      }
      out[op++] = uint8_t(sym);
      continue;
    }
    if (sym == 256) break;
    sym -= 257;
    if (sym >= 29) {
      status = kInflateBadData;
      break;
    }
    if (!br.Need(5)) {
      status = kInflateTruncated;
      break;
    }
    const uint32_t len = LenBase(sym) + br.Take(LenExtra(sym));
    if (!br.Need(kMaxBits)) {
      status = kInflateTruncated;
      break;
    }
    const int ds = DecodeSym(br, st.dist);
    if (ds < 0 || ds >= 30) {
      status = kInflateBadData;
      break;
    }
    if (!br.Need(13)) {
      status = kInflateTruncated;
      break;
    }
    const uint32_t dist = DistBase(ds) + br.Take(DistExtra(ds));
    if (dist > op) {
      status = kInflateBadData;
      break;
    }
    if (len > out_size - op) {
      status = kInflateOverflow;
      break;
    }
    const uint8_t* from = out + op - dist;
    for (uint32_t k = 0; k < len; ++k) out[op + k] = from[k];
    op += len;
  }
  if (status == kInflateOk && br.Overrun()) status = kInflateTruncated;
  st.br = br;
  st.out_pos = op;
  if (status != kInflateOk) {
    Fail(st, status);
  } else {
    st.phase = st.final_block ? 2 : 0;
  }
}

}  // namespace detail

// Inflates one raw DEFLATE stream of `in_size` bytes into exactly `out_size` bytes. Run by lanes
// [0, nlanes) of one warp together on the GPU (lane 0 decodes, all lanes fill tables), by one
// caller with lane 0, nlanes 1 on the host. Returns an InflateStatus.
KVTC_HD inline int32_t InflateChunk(const uint8_t* in, uint32_t in_size, uint8_t* out, uint32_t out_size,
                                    InflateState& st, int lane, int nlanes) {
  if (lane == 0) st.Begin(in, in_size);
  KVTC_SYNCWARP();
  for (;;) {
    if (lane == 0 && st.phase == 0) detail::ReadBlockHeader(st, out, out_size);
    KVTC_SYNCWARP();
    const int phase = st.phase;
    KVTC_SYNCWARP();
    if (phase == 2) break;
    if (phase == 1) {
      FillTable(st.lens, st.lit, lane, nlanes);
      FillTable(st.lens + 288, st.dist, lane, nlanes);
      if (lane == 0) detail::DecodeBlock(st, out, out_size);
      KVTC_SYNCWARP();
    }
  }
  int32_t status = st.status;
  if (status == kInflateOk && st.out_pos != out_size) status = kInflateShort;
  KVTC_SYNCWARP();
  return status;
}

namespace detail {

// One run of literals of an indexed stream being decoded (DecodeLiteralRun decodes one,
// DecodeLiteralRuns two at once). A symbol that is no literal sets `bad` and the run goes on to the
// end of its step (so that two runs' steps have no branch between them): the bytes written after
// it are garbage the caller's error status discards.
struct LiteralRun {
  BitReader br;
  uint8_t* out;
  uint32_t op, acc, left;
  int pending;
  bool words, bad;

  // False when `start` is past the input.
  KVTC_HD_INLINE bool Begin(const uint8_t* in, uint32_t in_size, uint64_t start, uint8_t* o, uint32_t count) {
    if (start >= uint64_t(in_size) * 8) return false;
    br.in = in;
    br.size = in_size;
    br.Start(uint32_t(start >> 3));
    br.Need(8);
    br.Drop(int(start & 7));
    out = o;
    op = acc = 0;
    left = count;
    pending = 0;
    bad = false;
    // Whole 32-bit words go out when `out` is word-aligned: a quarter of the stores, and the lanes
    // of a warp write 32 different places at once.
    words = (reinterpret_cast<uintptr_t>(o) & 3) == 0;
    return true;
  }
  KVTC_HD_INLINE void Emit(uint32_t v) {
    if (words) {
      acc |= v << (8 * pending);
      if (++pending == 4) {
        *reinterpret_cast<uint32_t*>(out + op) = acc;
        acc = 0;
        pending = 0;
        op += 4;
      }
    } else {
      out[op++] = uint8_t(v);
    }
  }
  // One literal; the reader holds at least kMaxBits bits.
  template <class Table>
  KVTC_HD_INLINE void One(const Table& lit) {
    const int sym = DecodeSym(br, lit);
    bad |= uint32_t(sym) >= 256u;
    Emit(uint32_t(sym) & 255u);
    --left;
  }
  // The rest of the run, two literals per refill check.
  template <class Table>
  KVTC_HD_INLINE int32_t Rest(const Table& lit) {
    while (left >= 2 && !bad) {
      if (!br.Need(2 * kMaxBits)) return kInflateTruncated;
      One(lit);
      One(lit);
    }
    if (left == 1 && !bad) {
      if (!br.Need(kMaxBits)) return kInflateTruncated;
      One(lit);
    }
    return kInflateOk;
  }
  // Ends the run (after Rest): flushes the last bytes; with `eob` the end-of-block code must
  // follow. *end = the bit after the last code read.
  template <class Table>
  KVTC_HD_INLINE int32_t Finish(int32_t rest, bool eob, const Table& lit, uint64_t* end) {
    if (bad) return kInflateBadData;
    if (rest != kInflateOk) return rest;
    for (int k = 0; k < pending; ++k) out[op + k] = uint8_t(acc >> (8 * k));
    if (eob) {
      if (!br.Need(kMaxBits)) return kInflateTruncated;
      if (DecodeSym(br, lit) != 256) return kInflateBadData;
    }
    if (br.Overrun()) return kInflateTruncated;
    *end = uint64_t(br.pos) * 8 - br.count;
    return kInflateOk;
  }
};

// Decodes `count` literals from bit `start` of [in, in + in_size) into out; with `eob`, the
// end-of-block code must follow them. A match or an end-of-block inside the run is kInflateBadData
// (an indexed stream holds literals only). *end = the bit after the last code read.
KVTC_HD inline int32_t DecodeLiteralRun(const uint8_t* in, uint32_t in_size, uint64_t start, uint8_t* out,
                                        uint32_t count, bool eob, const InflateState& st, uint64_t* end) {
  LiteralRun r;
  if (!r.Begin(in, in_size, start, out, count)) return kInflateTruncated;
  return r.Finish(r.Rest(st.lit), eob, st.lit, end);
}

// Two runs of DecodeLiteralRun at once (a is not the stream's last run; b may be, `b_eob`), their
// steps interleaved: a lane's table lookups form one chain of dependent loads per run, and the
// inflate is bound by their latency (run j: at about a fifth of the SMs' issue rate), so a second
// chain fills the waits. Statuses into *sa, *sb.
KVTC_HD inline void DecodeLiteralRuns(const uint8_t* in, uint32_t in_size, uint64_t a_start, uint8_t* a_out,
                                      uint32_t a_count, uint64_t b_start, uint8_t* b_out, uint32_t b_count,
                                      bool b_eob, const InflateState& st, uint64_t* a_end, uint64_t* b_end,
                                      int32_t* sa, int32_t* sb) {
  LiteralRun a{}, b{};  // initialized: g++ cannot see that a run that did not Begin is never read
  const bool a_ok = a.Begin(in, in_size, a_start, a_out, a_count);
  const bool b_ok = b.Begin(in, in_size, b_start, b_out, b_count);
  if (a_ok && b_ok) {
    while (a.left >= 2 && b.left >= 2) {
      const bool ra = a.br.Need(2 * kMaxBits), rb = b.br.Need(2 * kMaxBits);
      if (!ra || !rb) break;  // Rest reports it
      a.One(st.lit);
      b.One(st.lit);
      a.One(st.lit);
      b.One(st.lit);
      if (a.bad || b.bad) break;
    }
  }
  *sa = a_ok ? a.Finish(a.Rest(st.lit), false, st.lit, a_end) : kInflateTruncated;
  *sb = b_ok ? b.Finish(b.Rest(st.lit), b_eob, st.lit, b_end) : kInflateTruncated;
}

}  // namespace detail

// Inflates one chunk of an indexed section (kDeflateIndexed, entropy.h): a single final Huffman
// block of literals only, literal k * stride starting at bit entries[k - 1], k = 1..entry_count.
// Lane 0 reads the block header, the lanes prepare and fill the tables, then each lane decodes
// runs of `stride` literals from their entry points. Every run must end exactly where the next
// begins and the last one at the end-of-block, so the output is what a serial inflater gives, or
// an error status. Same lanes and contract as InflateChunk.
KVTC_HD inline int32_t InflateChunkIndexed(const uint8_t* in, uint32_t in_size, uint8_t* out, uint32_t out_size,
                                           const uint32_t* entries, uint32_t entry_count, uint32_t stride,
                                           InflateState& st, int lane, int nlanes) {
#if defined(__CUDA_ARCH__)
  // The chunk into L2 and its first KiB (the header, then the first run) into L1, from all lanes
  // at once: lane 0's bit reader would otherwise wait on memory for each word of the header in
  // turn. Prefetches do not fault and nothing waits for them.
  for (uint32_t at = uint32_t(lane) * 128; at < in_size; at += uint32_t(nlanes) * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(in + at));
  if (uint32_t(lane) * 32 < in_size) asm volatile("prefetch.global.L1 [%0];" ::"l"(in + lane * 32));
#endif
  if (lane == 0) {
    st.Begin(in, in_size);
    if (stride == 0 || uint64_t(entry_count) * stride >= out_size || uint64_t(entry_count + 1) * stride < out_size) {
      detail::Fail(st, kInflateBadData);  // the index does not cover the output in runs of `stride`
    } else {
      detail::ReadBlockHeader(st, out, out_size, false);
      // A stored block, or a block that is not the last: not an indexed stream.
      if (st.status == kInflateOk && (st.phase != 1 || !st.final_block)) detail::Fail(st, kInflateBadData);
    }
  }
  KVTC_SYNCWARP();
  const int32_t header_status = st.status;
  KVTC_SYNCWARP();
  if (header_status != kInflateOk) return header_status;
  if (!WarpPrepareTable(st.lens, 288, st.lit, lane, nlanes) ||
      !WarpPrepareTable(st.lens + 288, 32, st.dist, lane, nlanes)) {
    return kInflateBadData;
  }
  FillTable(st.lens, st.lit, lane, nlanes);
  const uint64_t first = uint64_t(st.br.pos) * 8 - st.br.count;
  // Run k: where it starts (bit), its bytes, and its status once it ended at bit `end` (every run
  // but the last must end where the next begins).
  auto start_of = [&](uint32_t k) { return k == 0 ? first : uint64_t(entries[k - 1]); };
  auto size_of = [&](uint32_t k) { return out_size - k * stride < stride ? out_size - k * stride : stride; };
  auto checked = [&](int32_t s, uint32_t k, uint64_t end) {
    return s == kInflateOk && k != entry_count && end != entries[k] ? int32_t(kInflateBadData) : s;
  };
  int32_t status = kInflateOk;
  for (uint32_t r = uint32_t(lane); r <= entry_count; r += uint32_t(nlanes)) {
    const uint32_t r2 = r + uint32_t(nlanes);
    int32_t s;
    if (r2 <= entry_count) {  // this lane has two runs left: both at once (DecodeLiteralRuns)
      uint64_t end = 0, end2 = 0;
      int32_t s2;
      detail::DecodeLiteralRuns(in, in_size, start_of(r), out + r * stride, size_of(r), start_of(r2), out + r2 * stride,
                                size_of(r2), r2 == entry_count, st, &end, &end2, &s, &s2);
      s = checked(s, r, end);
      if (s == kInflateOk) s = checked(s2, r2, end2);
      r = r2;
    } else {
      uint64_t end = 0;
      s = detail::DecodeLiteralRun(in, in_size, start_of(r), out + r * stride, size_of(r), r == entry_count, st, &end);
      s = checked(s, r, end);
    }
    if (status == kInflateOk) status = s;
  }
#if defined(__CUDA_ARCH__)
  for (int o = 16; o > 0; o >>= 1) status = max(status, __shfl_xor_sync(0xffffffffu, status, o));  // any lane's error
#endif
  return status;
}

}  // namespace kvtc::huff

#if defined(__CUDACC__)
#include <cuda_runtime.h>

namespace kvtc::huff {

// Compresses `payload` in chunks of chunk_bytes (the last may be shorter), one thread block per
// chunk, into slots of slot_bytes (a multiple of 4, >= chunk_bytes rounded up to 4) at `slots`;
// sizes[c] = DEFLATE bytes of chunk c, or the chunk's own size when it is to be stored (then
// its slot holds nothing useful). With entry_stride (a multiple of 16) > 0, chunk c's entry
// points go to entries[c * max_entries ...] as EncodeChunkSerial writes them. Bit-identical to
// EncodeChunkSerial.
// chunk_end (device, optional): chunk c ends at min((c + 1) * chunk_bytes, chunk_end[c]) instead of
// at payload_bytes, so one launch codes the payloads of several sequences, each starting on a
// chunk boundary with its own short last chunk (the encoder's fused groups).
void LaunchEncode(const uint8_t* payload, size_t payload_bytes, size_t chunk_bytes, uint8_t* slots, size_t slot_bytes,
                  size_t* sizes, uint32_t* entries, uint32_t entry_stride, uint32_t max_entries, cudaStream_t stream,
                  const uint64_t* chunk_end = nullptr);

// One compressed chunk to inflate: input at in_off of the input buffer (4-byte aligned for the
// fast loads), output at out_off of the output buffer.
// An indexed chunk (entry_stride > 0) has its entry_count entry points at entries[entries_at].
struct InflateJob {
  uint64_t in_off;
  uint64_t out_off;
  uint32_t in_size;
  uint32_t out_size;
  uint32_t entries_at;
  uint32_t entry_count;
  uint32_t entry_stride;
  uint32_t reserved;
};

// Inflates n jobs, one warp each; status[i] = InflateStatus of job i.
void LaunchInflate(const uint8_t* in, uint8_t* out, const InflateJob* jobs, const uint32_t* entries, uint32_t n,
                   int32_t* status, cudaStream_t stream);

}  // namespace kvtc::huff
#endif
