// Internal to the CUDA backend: error macros, RAII device and pinned buffers, typed element
// access, and the per-thread job stream shared by the codec (cuda_codec.cu) and the paged-cache
// data plane (cuda_paged.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

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

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void resize(size_t n) {
    if (n <= count) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    count = 0;
    if (n == 0) return;
    KVTC_CUDA_CALL(cudaMalloc(&ptr, n * sizeof(T)));
    count = n;
  }
};

struct PinnedBuffer {
  uint8_t* ptr = nullptr;
  size_t size = 0;
  ~PinnedBuffer() {
    if (ptr) cudaFreeHost(ptr);
  }
  void resize(size_t n) {
    if (n <= size) return;
    if (ptr) cudaFreeHost(ptr);
    ptr = nullptr;
    KVTC_CUDA_CALL(cudaMallocHost(&ptr, n));
    size = n;
  }
};

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
