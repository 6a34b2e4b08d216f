// Internal to the CUDA backend: error macros, RAII device and pinned buffers, typed element
// access, and the per-thread job stream shared by the codec (cuda_codec.cu) and the paged-cache
// data plane (cuda_paged.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kvtc/error.h"

namespace kvtc::cuda {

#define KVTC_CUDA_CALL(expr)                                                                      \
  do {                                                                                            \
    cudaError_t kvtc_e_ = (expr);                                                                 \
    KVTC_CHECK(kvtc_e_ == cudaSuccess, kInternal, "CUDA error " << cudaGetErrorString(kvtc_e_) << " at " #expr); \
  } while (0)
#define KVTC_CUBLAS_CALL(expr)                                                                        \
  do {                                                                                                \
    cublasStatus_t kvtc_s_ = (expr);                                                                  \
    KVTC_CHECK(kvtc_s_ == CUBLAS_STATUS_SUCCESS, kInternal, "cuBLAS status " << int(kvtc_s_) << " at " #expr); \
  } while (0)


// ---- device buffers ------------------------------------------------------------------------

// A grow-only buffer of T in device memory, or (kPinned) in page-locked host memory.
template <typename T, bool kPinned = false>
struct CudaBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  CudaBuffer() = default;
  explicit CudaBuffer(size_t n) { resize(n); }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  ~CudaBuffer() { Free(); }
  // Grows to n, or to an eighth more than before when n is only a little larger: records of
  // slightly different sizes would otherwise reallocate at every one (page-locking tens of MB
  // costs tens of ms). The first allocation is exact.
  void resize(size_t n) {
    if (n <= count) return;
    if (count > 0) n = std::max(n, count + count / 8);
    Free();
    void* p = nullptr;
    if (kPinned) {
      KVTC_CUDA_CALL(cudaMallocHost(&p, n * sizeof(T)));
    } else {
      KVTC_CUDA_CALL(cudaMalloc(&p, n * sizeof(T)));
    }
    ptr = static_cast<T*>(p);
    count = n;
  }

 private:
  void Free() {
    if (ptr) kPinned ? cudaFreeHost(ptr) : cudaFree(ptr);
    ptr = nullptr;
    count = 0;
  }
};

template <typename T>
using DeviceBuffer = CudaBuffer<T>;
using PinnedBuffer = CudaBuffer<uint8_t, /*kPinned=*/true>;

// The device's address of page-locked host memory from cudaMallocHost (mapped; under unified
// addressing the same pointer, asked for rather than assumed), for kernels that write results the
// host reads after an event, without a copy on the stream.
template <typename T>
T* HostMapped(T* host) {
  void* device = nullptr;
  KVTC_CUDA_CALL(cudaHostGetDevicePointer(&device, host, 0));
  return static_cast<T*>(device);
}

// This host thread's T for the current device, made on first use. A thread serves jobs on any
// device (a sidecar saving from one GPU's cache and restoring into another's), and streams, library
// handles and scratch memory each belong to one device.
template <typename T>
T& OfCurrentDevice() {
  int device = 0;
  KVTC_CUDA_CALL(cudaGetDevice(&device));
  thread_local std::vector<std::unique_ptr<T>> per_device;
  if (per_device.size() <= size_t(device)) per_device.resize(size_t(device) + 1);
  std::unique_ptr<T>& state = per_device[size_t(device)];
  if (!state) state = std::make_unique<T>();
  return *state;
}

// Sizes `dst` for n elements and queues the copy of host `src` into it on `stream`. A pageable
// source is staged by the driver before the call returns, so it may be a temporary.
template <typename T>
void UploadAsync(DeviceBuffer<T>& dst, const T* src, size_t n, cudaStream_t stream) {
  dst.resize(n);
  if (n) KVTC_CUDA_CALL(cudaMemcpyAsync(dst.ptr, src, n * sizeof(T), cudaMemcpyHostToDevice, stream));
}


template <typename T>
__device__ __forceinline__ float LoadAsFloat(const T* p, size_t i);
template <>
__device__ __forceinline__ float LoadAsFloat<float>(const float* p, size_t i) { return p[i]; }
template <>
__device__ __forceinline__ float LoadAsFloat<__half>(const __half* p, size_t i) { return __half2float(p[i]); }
template <>
__device__ __forceinline__ float LoadAsFloat<__nv_bfloat16>(const __nv_bfloat16* p, size_t i) {
  return __bfloat162float(p[i]);
}

template <typename T>
__device__ __forceinline__ void StoreFromFloat(T* p, size_t i, float v);
template <>
__device__ __forceinline__ void StoreFromFloat<float>(float* p, size_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void StoreFromFloat<__half>(__half* p, size_t i, float v) { p[i] = __float2half_rn(v); }
template <>
__device__ __forceinline__ void StoreFromFloat<__nv_bfloat16>(__nv_bfloat16* p, size_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// The calling host thread's stream: every job of a libuv pool thread runs on it, in order.
cudaStream_t JobStream();

}  // namespace kvtc::cuda
