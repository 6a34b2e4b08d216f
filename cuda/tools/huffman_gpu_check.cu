// GPU check and micro-benchmark of kvtc's DEFLATE coder (src/cuda_huffman.cu) against the host
// reference (include/kvtc/cuda_huffman.h, itself checked against libdeflate by huffman_check)
// and nvCOMP's batched DEFLATE:
//  1. the encode kernel's chunks are byte-identical to EncodeChunkSerial and inflate with
//     libdeflate (mixed data, 16 KiB / 64 KiB / odd 10001-byte chunks);
//  2. the inflate kernel reproduces the input from libdeflate level-1/6/12 streams and from our
//     own streams; corrupted streams (truncated, bit-flipped) give error statuses, no fault;
//  3. device-timeline throughput (median of 20, events) of encode and inflate, kvtc vs nvCOMP,
//     on a 24 MiB payload of 4-bit Laplacian codes (the shape of a quantized payload).
// Usage: kvtc_huffman_gpu_check [payload_mib]   (exit status 0 = all checks passed)
#include <cuda_runtime.h>
#include <libdeflate.h>
#include <nvcomp/deflate.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kvtc/cuda_huffman.h"

using namespace kvtc::huff;

#define CU(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)
#define NV(x)                                                                               \
  do {                                                                                      \
    nvcompStatus_t s_ = (x);                                                                \
    if (s_ != nvcompSuccess) {                                                              \
      std::fprintf(stderr, "nvCOMP status %d at %s:%d\n", int(s_), __FILE__, __LINE__);     \
      std::exit(2);                                                                         \
    }                                                                                       \
  } while (0)

static int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      if (++failures < 20) {                               \
        std::fprintf(stderr, "FAIL line %d: ", __LINE__);  \
        std::fprintf(stderr, __VA_ARGS__);                 \
        std::fprintf(stderr, "\n");                        \
      }                                                    \
    }                                                      \
  } while (0)

static std::mt19937_64 rng(7);

static void Fill(uint8_t* v, size_t n, int kind) {
  switch (kind) {
    case 0: {  // 4-bit Laplacian-ish codes, two per byte
      std::normal_distribution<double> g(0.0, 1.6);
      for (size_t i = 0; i < n; ++i) {
        auto q = [&] { return unsigned(std::clamp(int(std::lround(g(rng))) + 8, 0, 15)); };
        v[i] = uint8_t(q() | (q() << 4));
      }
      break;
    }
    case 1:
      for (size_t i = 0; i < n; ++i) v[i] = uint8_t(rng());
      break;
    case 2:
      std::memset(v, 0, n);
      break;
    case 3: {
      std::geometric_distribution<int> g(0.6);
      for (size_t i = 0; i < n; ++i) v[i] = uint8_t(std::min(g(rng), 255));
      break;
    }
    case 4: {  // repeats (matches for libdeflate)
      const char* w[] = {"kv ", "cache ", "tensor ", "compress ", "pca "};
      for (size_t i = 0; i < n;) {
        for (const char* p = w[rng() % 5]; *p && i < n; ++p) v[i++] = uint8_t(*p);
      }
      break;
    }
    default: {  // Fibonacci frequencies: code lengths past 15 before limiting
      uint64_t a = 1, b = 1;
      size_t k = 0;
      for (int s = 0; k < n; ++s) {
        for (uint64_t j = 0; j < a && k < n; ++j) v[k++] = uint8_t(s);
        const uint64_t c = a + b;
        a = b;
        b = c;
      }
      std::shuffle(v, v + n, rng);
    }
  }
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
  }
  template <typename F>
  double MedianMs(F&& f, int reps = 20) {
    f();
    CU(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int r = 0; r < reps; ++r) {
      CU(cudaEventRecord(a));
      f();
      CU(cudaEventRecord(b));
      CU(cudaEventSynchronize(b));
      float ms;
      CU(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

// The entry stride for a chunk size: about `runs` runs, 32 (a run per lane of the inflating warp) or
// 64 (two per lane, decoded at once), a multiple of 16 (entropy.cc's rule without its 256-byte floor,
// so small chunks are indexed too).
static uint32_t StrideFor(size_t chunk, size_t runs = 32) {
  return uint32_t(std::max<size_t>(16, ((chunk + runs - 1) / runs + 15) / 16 * 16));
}

// Compressed chunks staged at 16-byte aligned offsets, with their jobs (and entry points, for
// indexed chunks).
struct Staged {
  std::vector<uint8_t> bytes;
  std::vector<InflateJob> jobs;
  std::vector<uint32_t> entries;
  void Add(const uint8_t* p, size_t n, uint64_t out_off, uint32_t out_size, const uint32_t* e = nullptr,
           uint32_t stride = 0) {
    const size_t at = bytes.size();
    bytes.resize(at + (n + 15) / 16 * 16 + 16, 0xa5);  // poisoned padding
    std::memcpy(bytes.data() + at, p, n);
    const uint32_t count = stride ? EntryCount(out_size, stride) : 0;
    jobs.push_back({at, out_off, uint32_t(n), out_size, uint32_t(entries.size()), count, count ? stride : 0u, 0u});
    if (count) entries.insert(entries.end(), e, e + count);
  }
};

static uint32_t* UploadEntries(const Staged& s) {
  uint32_t* d;
  CU(cudaMalloc(&d, std::max<size_t>(1, s.entries.size()) * 4));
  if (!s.entries.empty()) CU(cudaMemcpy(d, s.entries.data(), s.entries.size() * 4, cudaMemcpyHostToDevice));
  return d;
}

static std::vector<int32_t> RunInflate(const Staged& s, size_t out_bytes, std::vector<uint8_t>& out) {
  uint8_t *din, *dout;
  InflateJob* djobs;
  int32_t* dst;
  const uint32_t n = uint32_t(s.jobs.size());
  CU(cudaMalloc(&din, std::max<size_t>(1, s.bytes.size())));
  CU(cudaMalloc(&dout, std::max<size_t>(1, out_bytes)));
  CU(cudaMalloc(&djobs, std::max<size_t>(1, n) * sizeof(InflateJob)));
  CU(cudaMalloc(&dst, std::max<size_t>(1, n) * 4));
  CU(cudaMemcpy(din, s.bytes.data(), s.bytes.size(), cudaMemcpyHostToDevice));
  CU(cudaMemcpy(djobs, s.jobs.data(), n * sizeof(InflateJob), cudaMemcpyHostToDevice));
  CU(cudaMemset(dout, 0x5a, out_bytes));
  CU(cudaMemset(dst, 0x7f, std::max<size_t>(1, n) * 4));
  uint32_t* dentries = UploadEntries(s);
  LaunchInflate(din, dout, djobs, dentries, n, dst, 0);
  CU(cudaGetLastError());
  CU(cudaDeviceSynchronize());
  std::vector<int32_t> st(n);
  out.resize(out_bytes);
  CU(cudaMemcpy(st.data(), dst, n * 4, cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(out.data(), dout, out_bytes, cudaMemcpyDeviceToHost));
  cudaFree(din);
  cudaFree(dout);
  cudaFree(djobs);
  cudaFree(dst);
  cudaFree(dentries);
  return st;
}

// Correctness on one configuration: kinds vary per chunk.
static void CheckConfig(size_t payload, size_t chunk, size_t runs = 32) {
  std::vector<uint8_t> host(payload);
  const size_t chunks = (payload + chunk - 1) / chunk;
  for (size_t c = 0; c < chunks; ++c) {
    const size_t n = std::min(chunk, payload - c * chunk);
    Fill(host.data() + c * chunk, n, int(c % 6));
  }
  const size_t slot = (chunk + 255) / 256 * 256;
  const uint32_t stride = StrideFor(chunk, runs), max_entries = EntryCount(chunk, stride);
  uint8_t *dp, *ds;
  size_t* dsz;
  uint32_t* de;
  CU(cudaMalloc(&dp, payload));
  CU(cudaMalloc(&ds, chunks * slot));
  CU(cudaMalloc(&dsz, chunks * sizeof(size_t)));
  CU(cudaMalloc(&de, std::max<size_t>(1, chunks * max_entries) * 4));
  CU(cudaMemcpy(dp, host.data(), payload, cudaMemcpyHostToDevice));
  CU(cudaMemset(ds, 0xcc, chunks * slot));
  LaunchEncode(dp, payload, chunk, ds, slot, dsz, de, stride, max_entries, 0);
  CU(cudaGetLastError());
  CU(cudaDeviceSynchronize());
  std::vector<size_t> sizes(chunks);
  std::vector<uint8_t> slots(chunks * slot);
  std::vector<uint32_t> entries(std::max<size_t>(1, chunks * max_entries));
  CU(cudaMemcpy(sizes.data(), dsz, chunks * sizeof(size_t), cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(slots.data(), ds, chunks * slot, cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(entries.data(), de, entries.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(dp);
  cudaFree(ds);
  cudaFree(dsz);
  cudaFree(de);
  std::unique_ptr<EncodeScratch> scratch(new EncodeScratch);
  std::vector<uint8_t> ref(slot + 8);
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  size_t stored = 0, coded = 0, mismatch = 0;
  Staged own, indexed, lib[3];
  std::vector<uint32_t> ref_entries(max_entries + 1);
  const int levels[3] = {1, 6, 12};
  libdeflate_compressor* lc[3];
  for (int l = 0; l < 3; ++l) lc[l] = libdeflate_alloc_compressor(levels[l]);
  std::vector<uint8_t> tmp(chunk + 1024), back(chunk);
  for (size_t c = 0; c < chunks; ++c) {
    const uint8_t* in = host.data() + c * chunk;
    const size_t n = std::min(chunk, payload - c * chunk);
    const size_t m = EncodeChunkSerial(in, n, ref.data(), *scratch, ref_entries.data(), stride);
    const size_t ne = EntryCount(n, stride);
    if (sizes[c] != m || (m < n && std::memcmp(ref.data(), slots.data() + c * slot, m) != 0)) ++mismatch;
    if (m < n && std::memcmp(ref_entries.data(), entries.data() + c * max_entries, ne * 4) != 0) ++mismatch;
    if (m == n) {
      ++stored;
    } else {
      ++coded;
      size_t actual = 0;
      const auto r = libdeflate_deflate_decompress(d, slots.data() + c * slot, sizes[c], back.data(), n, &actual);
      CHECK(r == LIBDEFLATE_SUCCESS && actual == n && std::memcmp(back.data(), in, n) == 0,
            "chunk %zu: libdeflate rejects the GPU stream", c);
      own.Add(slots.data() + c * slot, sizes[c], c * chunk, uint32_t(n));
      indexed.Add(slots.data() + c * slot, sizes[c], c * chunk, uint32_t(n), entries.data() + c * max_entries, stride);
    }
    for (int l = 0; l < 3; ++l) {
      const size_t k = libdeflate_deflate_compress(lc[l], in, n, tmp.data(), tmp.size());
      lib[l].Add(tmp.data(), k, c * chunk, uint32_t(n));
    }
  }
  CHECK(mismatch == 0, "payload %zu chunk %zu: %zu chunks differ from the host reference", payload, chunk, mismatch);
  std::printf("encode %9zu B in %6zu B chunks, entry points every %u B: %zu coded, %zu stored, %zu differ from host "
              "reference\n",
              payload, chunk, stride, coded, stored, mismatch);
  // Inflate: every job's bytes land where they belong; compare the chunks that were coded.
  auto verify = [&](const Staged& s, const char* what) {
    std::vector<uint8_t> out;
    const std::vector<int32_t> st = RunInflate(s, payload, out);
    size_t bad = 0;
    for (size_t i = 0; i < s.jobs.size(); ++i) {
      const InflateJob& j = s.jobs[i];
      if (st[i] != 0 || std::memcmp(out.data() + j.out_off, host.data() + j.out_off, j.out_size) != 0) ++bad;
    }
    CHECK(bad == 0, "%s: %zu of %zu chunks wrong", what, bad, s.jobs.size());
    std::printf("inflate %-14s %6zu chunks: %zu wrong\n", what, s.jobs.size(), bad);
  };
  verify(own, "kvtc streams");
  verify(indexed, "kvtc indexed");
  verify(lib[0], "libdeflate-1");
  verify(lib[1], "libdeflate-6");
  verify(lib[2], "libdeflate-12");
  // Corruption: truncations must fail; flips may do anything but fault.
  Staged cut, flip;
  for (int which = 0; which < 3; ++which) {
    const Staged& src = which == 2 ? indexed : which ? lib[1] : own;
    for (size_t i = 0; i < src.jobs.size() && i < 3000; ++i) {
      const InflateJob& j = src.jobs[i];
      const uint8_t* p = src.bytes.data() + j.in_off;
      const uint32_t* e = src.entries.data() + j.entries_at;
      cut.Add(p, rng() % j.in_size, j.out_off, j.out_size, e, j.entry_stride);
      std::vector<uint8_t> b(p, p + j.in_size);
      for (int f = 0; f < 3; ++f) b[rng() % b.size()] ^= uint8_t(1u << (rng() % 8));
      flip.Add(b.data(), b.size(), j.out_off, j.out_size, e, j.entry_stride);
      if (j.entry_count) {  // an entry point moved by one bit: the run before it must catch it
        std::vector<uint32_t> moved(e, e + j.entry_count);
        moved[rng() % moved.size()] += 1;
        cut.Add(p, j.in_size, j.out_off, j.out_size, moved.data(), j.entry_stride);
      }
    }
  }
  std::vector<uint8_t> out;
  std::vector<int32_t> st = RunInflate(cut, payload, out);
  size_t accepted = 0;
  for (int32_t v : st) accepted += v == 0;
  CHECK(accepted == 0, "%zu truncated streams accepted", accepted);
  st = RunInflate(flip, payload, out);
  size_t errs = 0, weird = 0;
  for (int32_t v : st) {
    errs += v != 0;
    weird += v < 0 || v > 4;
  }
  CHECK(weird == 0, "%zu statuses out of range", weird);
  std::printf("corrupt: %zu truncated (or entry point moved) all rejected: %s; %zu bit-flipped, %zu rejected\n", cut.jobs.size(),
              accepted == 0 ? "yes" : "NO", flip.jobs.size(), errs);
  for (int l = 0; l < 3; ++l) libdeflate_free_compressor(lc[l]);
  libdeflate_free_decompressor(d);
}

// Throughput on a quantized-payload-like buffer, kvtc vs nvCOMP, device timeline.
static void Bench(size_t payload, size_t chunk, size_t runs = 32) {
  std::vector<uint8_t> host(payload);
  Fill(host.data(), payload, 0);
  const size_t chunks = (payload + chunk - 1) / chunk;
  uint8_t* dp;
  CU(cudaMalloc(&dp, payload));
  CU(cudaMemcpy(dp, host.data(), payload, cudaMemcpyHostToDevice));
  Timer timer;
  // kvtc encode
  const size_t slot = (chunk + 255) / 256 * 256;
  const uint32_t stride = StrideFor(chunk, runs), max_entries = EntryCount(chunk, stride);
  uint8_t* ds;
  size_t* dsz;
  uint32_t* de;
  CU(cudaMalloc(&ds, chunks * slot));
  CU(cudaMalloc(&dsz, chunks * sizeof(size_t)));
  CU(cudaMalloc(&de, std::max<size_t>(1, chunks * max_entries) * 4));
  const double enc_ms =
      timer.MedianMs([&] { LaunchEncode(dp, payload, chunk, ds, slot, dsz, de, stride, max_entries, 0); });
  CU(cudaGetLastError());
  std::vector<size_t> sizes(chunks);
  std::vector<uint32_t> entries(std::max<size_t>(1, chunks * max_entries));
  CU(cudaMemcpy(sizes.data(), dsz, chunks * sizeof(size_t), cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(entries.data(), de, entries.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(de);
  size_t own_total = 0;
  for (size_t s : sizes) own_total += s;
  // nvCOMP compress
  nvcompBatchedDeflateCompressOpts_t copts = nvcompBatchedDeflateCompressDefaultOpts;
  copts.algorithm = 1;
  size_t max_out = 0, temp = 0;
  NV(nvcompBatchedDeflateCompressGetMaxOutputChunkSize(chunk, copts, &max_out));
  max_out = (max_out + 255) / 256 * 256;
  NV(nvcompBatchedDeflateCompressGetTempSize(chunks, chunk, copts, &temp, payload, 0));
  uint8_t *ntemp, *nout;
  CU(cudaMalloc(&ntemp, std::max<size_t>(1, temp)));
  CU(cudaMalloc(&nout, chunks * max_out));
  std::vector<void*> in_ptrs(chunks), out_ptrs(chunks);
  std::vector<size_t> in_sizes(chunks);
  for (size_t i = 0; i < chunks; ++i) {
    in_ptrs[i] = dp + i * chunk;
    out_ptrs[i] = nout + i * max_out;
    in_sizes[i] = std::min(chunk, payload - i * chunk);
  }
  void **dinp, **doutp;
  size_t *dins, *douts;
  nvcompStatus_t* dst;
  CU(cudaMalloc(&dinp, chunks * sizeof(void*)));
  CU(cudaMalloc(&doutp, chunks * sizeof(void*)));
  CU(cudaMalloc(&dins, chunks * sizeof(size_t)));
  CU(cudaMalloc(&douts, 2 * chunks * sizeof(size_t)));
  CU(cudaMalloc(&dst, chunks * sizeof(nvcompStatus_t)));
  CU(cudaMemcpy(dinp, in_ptrs.data(), chunks * sizeof(void*), cudaMemcpyHostToDevice));
  CU(cudaMemcpy(doutp, out_ptrs.data(), chunks * sizeof(void*), cudaMemcpyHostToDevice));
  CU(cudaMemcpy(dins, in_sizes.data(), chunks * sizeof(size_t), cudaMemcpyHostToDevice));
  const double nenc_ms = timer.MedianMs([&] {
    NV(nvcompBatchedDeflateCompressAsync(dinp, dins, chunk, chunks, ntemp, temp, doutp, douts, copts, dst, 0));
  });
  std::vector<size_t> nsizes(chunks);
  CU(cudaMemcpy(nsizes.data(), douts, chunks * sizeof(size_t), cudaMemcpyDeviceToHost));
  size_t nv_total = 0;
  for (size_t i = 0; i < chunks; ++i) nv_total += std::min(nsizes[i], in_sizes[i]);
  // libdeflate level 6 for the ratio, and as decode input
  libdeflate_compressor* c6 = libdeflate_alloc_compressor(6);
  Staged lib, own, indexed;
  std::vector<uint8_t> tmp(chunk + 1024), slots(chunks * slot);
  CU(cudaMemcpy(slots.data(), ds, chunks * slot, cudaMemcpyDeviceToHost));
  size_t lib_total = 0;
  for (size_t i = 0; i < chunks; ++i) {
    const size_t k = libdeflate_deflate_compress(c6, host.data() + i * chunk, in_sizes[i], tmp.data(), tmp.size());
    lib_total += (k && k < in_sizes[i]) ? k : in_sizes[i];
    lib.Add(tmp.data(), k, i * chunk, uint32_t(in_sizes[i]));
    if (sizes[i] < in_sizes[i]) {
      own.Add(slots.data() + i * slot, sizes[i], i * chunk, uint32_t(in_sizes[i]));
      indexed.Add(slots.data() + i * slot, sizes[i], i * chunk, uint32_t(in_sizes[i]), entries.data() + i * max_entries,
                  stride);
    }
  }
  libdeflate_free_compressor(c6);
  // kvtc inflate of its own streams and of libdeflate-6 streams; nvCOMP inflate of the same
  auto time_inflate = [&](const Staged& s, bool nvcomp) {
    const size_t n = s.jobs.size();
    uint8_t *din, *dout;
    InflateJob* dj;
    int32_t* dstat;
    CU(cudaMalloc(&din, s.bytes.size()));
    CU(cudaMalloc(&dout, payload));
    CU(cudaMalloc(&dj, n * sizeof(InflateJob)));
    CU(cudaMalloc(&dstat, n * 4));
    CU(cudaMemcpy(din, s.bytes.data(), s.bytes.size(), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dj, s.jobs.data(), n * sizeof(InflateJob), cudaMemcpyHostToDevice));
    uint32_t* dentries = UploadEntries(s);
    double ms;
    if (!nvcomp) {
      ms = timer.MedianMs([&] { LaunchInflate(din, dout, dj, dentries, uint32_t(n), dstat, 0); });
      std::vector<int32_t> st(n);
      CU(cudaMemcpy(st.data(), dstat, n * 4, cudaMemcpyDeviceToHost));
      for (int32_t v : st) CHECK(v == 0, "bench inflate status %d", v);
    } else {
      std::vector<void*> ip(n), op(n);
      std::vector<size_t> is(n), oc(n);
      size_t max_raw = 0;
      for (size_t i = 0; i < n; ++i) {
        ip[i] = din + s.jobs[i].in_off;
        op[i] = dout + s.jobs[i].out_off;
        is[i] = s.jobs[i].in_size;
        oc[i] = s.jobs[i].out_size;
        max_raw = std::max(max_raw, oc[i]);
      }
      nvcompBatchedDeflateDecompressOpts_t dopts{};
      dopts.backend = NVCOMP_DECOMPRESS_BACKEND_CUDA;
      size_t dtemp = 0;
      NV(nvcompBatchedDeflateDecompressGetTempSize(n, max_raw, dopts, &dtemp, payload, 0));
      uint8_t* dt;
      CU(cudaMalloc(&dt, std::max<size_t>(1, dtemp)));
      void **dip, **dop;
      size_t *dis, *doc;
      CU(cudaMalloc(&dip, n * sizeof(void*)));
      CU(cudaMalloc(&dop, n * sizeof(void*)));
      CU(cudaMalloc(&dis, n * sizeof(size_t)));
      CU(cudaMalloc(&doc, 2 * n * sizeof(size_t)));
      CU(cudaMemcpy(dip, ip.data(), n * sizeof(void*), cudaMemcpyHostToDevice));
      CU(cudaMemcpy(dop, op.data(), n * sizeof(void*), cudaMemcpyHostToDevice));
      CU(cudaMemcpy(dis, is.data(), n * sizeof(size_t), cudaMemcpyHostToDevice));
      CU(cudaMemcpy(doc, oc.data(), n * sizeof(size_t), cudaMemcpyHostToDevice));
      ms = timer.MedianMs([&] {
        NV(nvcompBatchedDeflateDecompressAsync(dip, dis, doc, doc + n, n, dt, dtemp, dop, dopts, dst, 0));
      });
      cudaFree(dt);
      cudaFree(dip);
      cudaFree(dop);
      cudaFree(dis);
      cudaFree(doc);
    }
    std::vector<uint8_t> back(payload);
    CU(cudaMemcpy(back.data(), dout, payload, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (const InflateJob& j : s.jobs) bad += std::memcmp(back.data() + j.out_off, host.data() + j.out_off, j.out_size) != 0;
    CHECK(bad == 0, "bench inflate (%s): %zu chunks wrong", nvcomp ? "nvcomp" : "kvtc", bad);
    cudaFree(din);
    cudaFree(dout);
    cudaFree(dj);
    cudaFree(dstat);
    cudaFree(dentries);
    return ms;
  };
  const double dec_own = time_inflate(own, false), dec_lib = time_inflate(lib, false);
  const double dec_indexed = time_inflate(indexed, false);
  const double ndec_own = time_inflate(own, true), ndec_lib = time_inflate(lib, true);
  const double gb = payload / 1e6;
  std::printf("bench %zu MiB, %zu B chunks (%zu chunks), 4-bit Laplacian payload:\n", payload >> 20, chunk, chunks);
  std::printf("  ratio (stored/raw): kvtc %.4f  nvCOMP %.4f  libdeflate-6 %.4f\n", double(own_total) / payload,
              double(nv_total) / payload, double(lib_total) / payload);
  std::printf("  encode: kvtc %.3f ms (%.1f GB/s)  nvCOMP %.3f ms (%.1f GB/s)\n", enc_ms, gb / enc_ms, nenc_ms,
              gb / nenc_ms);
  std::printf("  inflate kvtc streams: kvtc %.3f ms (%.1f GB/s)  nvCOMP %.3f ms (%.1f GB/s)\n", dec_own, gb / dec_own,
              ndec_own, gb / ndec_own);
  std::printf("  inflate kvtc indexed streams (entry point every %u B): kvtc %.3f ms (%.1f GB/s)\n", stride,
              dec_indexed, gb / dec_indexed);
  std::printf("  inflate libdeflate-6 streams: kvtc %.3f ms (%.1f GB/s)  nvCOMP %.3f ms (%.1f GB/s)\n", dec_lib,
              gb / dec_lib, ndec_lib, gb / ndec_lib);
  cudaFree(dp);
  cudaFree(ds);
  cudaFree(dsz);
  cudaFree(ntemp);
  cudaFree(nout);
  cudaFree(dinp);
  cudaFree(doutp);
  cudaFree(dins);
  cudaFree(douts);
  cudaFree(dst);
}

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 24;
  cudaDeviceProp prop;
  CU(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s\n", prop.name);
  CheckConfig(size_t(6) << 20, 16384);
  CheckConfig(size_t(6) << 20, 65536);
  CheckConfig(1000003, 10001);
  CheckConfig(777, 65536);
  // Two runs per lane (InflateChunkIndexed's DecodeLiteralRuns), the last run short or not.
  CheckConfig(size_t(6) << 20, 16384, 64);
  CheckConfig(1000003, 10001, 64);
  if (mib > 0) {
    Bench(mib << 20, 16384);
    Bench(mib << 20, 16384, 64);
    Bench(mib << 20, 32768, 64);
    Bench(mib << 20, 65536);
  }
  if (failures) {
    std::printf("FAILED: %d checks\n", failures);
    return 1;
  }
  std::printf("huffman_gpu_check: all checks passed\n");
  return 0;
}
