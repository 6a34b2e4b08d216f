// The projection's GEMMs through cuBLASLt: D (column-major, fp32 or bf16) = op(A) op(B), fp32
// accumulation, bf16 or e4m3 operands. Each shape's descriptors and the algorithm cuBLASLt's heuristic picks for
// it are built once per host thread's context and reused: a sidecar encodes and restores the same
// few shapes again and again, and the heuristic query costs host time on every launch otherwise.
// Internal to cuda_codec.cu.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "cuda_common.cuh"

namespace kvtc::cuda {

// A GEMM's shape in cuBLAS terms: op(A) is m x k, op(B) is k x n, D is m x n (ldd).
struct GemmShape {
  cublasOperation_t op_a = CUBLAS_OP_N, op_b = CUBLAS_OP_N;
  int m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldd = 0;
  cudaDataType_t operands = CUDA_R_16BF;  // CUDA_R_16BF or CUDA_R_8F_E4M3
  cudaDataType_t out = CUDA_R_32F;        // D: CUDA_R_32F, or CUDA_R_16BF (bf16 operands)
  auto Key() const { return std::tuple(int(op_a), int(op_b), m, n, k, lda, ldb, ldd, int(operands), int(out)); }
  bool operator<(const GemmShape& o) const { return Key() < o.Key(); }
};

// cuBLASLt resources of one host thread's context: the handle, a workspace, and a plan per shape.
class LtHandle {
 public:
  static constexpr size_t kWorkspace = size_t(32) << 20;
  static constexpr size_t kMaxPlans = 256;
  LtHandle() = default;
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  ~LtHandle() {
    for (auto& [shape, plan] : plans_) plan.Destroy();
    if (handle_) cublasLtDestroy(handle_);
  }

  void Gemm(cudaStream_t stream, const GemmShape& shape, const void* a, const void* b, void* d) {
    const Plan& plan = PlanFor(shape);
    const float one = 1.0f, zero = 0.0f;
    KVTC_CUBLAS_CALL(cublasLtMatmul(handle_, plan.op, &one, a, plan.a, b, plan.b, &zero, d, plan.d, d, plan.d,
                                    &plan.algo, workspace_.ptr, kWorkspace, stream));
  }

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    void Destroy() {
      if (d) cublasLtMatrixLayoutDestroy(d);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (op) cublasLtMatmulDescDestroy(op);
      *this = Plan{};
    }
  };

  const Plan& PlanFor(const GemmShape& s) {
    if (auto it = plans_.find(s); it != plans_.end()) return it->second;
    // n is a request's token count, so a long-lived sidecar meets many shapes: the cache starts
    // over when full rather than growing without bound (a plan costs one heuristic query).
    if (plans_.size() >= kMaxPlans) {
      for (auto& [shape, plan] : plans_) plan.Destroy();
      plans_.clear();
    }
    if (!handle_) {
      KVTC_CUBLAS_CALL(cublasLtCreate(&handle_));
      workspace_.resize(kWorkspace);
    }
    Plan plan;
    struct Guard {  // destroys a half-built plan on a throw
      Plan* p;
      ~Guard() {
        if (p) p->Destroy();
      }
    } guard{&plan};
    cublasLtMatmulPreference_t pref = nullptr;
    struct PrefGuard {
      cublasLtMatmulPreference_t& p;
      ~PrefGuard() {
        if (p) cublasLtMatmulPreferenceDestroy(p);
      }
    } pref_guard{pref};
    KVTC_CUBLAS_CALL(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    KVTC_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &s.op_a, sizeof(s.op_a)));
    KVTC_CUBLAS_CALL(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &s.op_b, sizeof(s.op_b)));
    // Stored shapes: A is m x k (k x m when transposed), B is k x n (n x k).
    const bool ta = s.op_a != CUBLAS_OP_N, tb = s.op_b != CUBLAS_OP_N;
    KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&plan.a, s.operands, uint64_t(ta ? s.k : s.m), uint64_t(ta ? s.m : s.k),
                                                s.lda));
    KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&plan.b, s.operands, uint64_t(tb ? s.n : s.k), uint64_t(tb ? s.k : s.n),
                                                s.ldb));
    KVTC_CUBLAS_CALL(cublasLtMatrixLayoutCreate(&plan.d, s.out, uint64_t(s.m), uint64_t(s.n), s.ldd));
    KVTC_CUBLAS_CALL(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspace;
    KVTC_CUBLAS_CALL(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t best{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.d, plan.d, pref, 1, &best, &found);
    KVTC_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, kBackendUnavailable,
               "cuBLASLt has no " << (s.operands == CUDA_R_8F_E4M3 ? "fp8 (needs sm_89 or newer)" : "bf16")
                                  << " GEMM for m=" << s.m << " n=" << s.n << " k=" << s.k << " on this device");
    plan.algo = best.algo;
    guard.p = nullptr;
    return plans_.emplace(s, plan).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
  std::map<GemmShape, Plan> plans_;
};

// D[m, n] (column-major fp32, ldd) = A^T B with A e4m3 [k, m] (column-major, lda) and B e4m3
// [k, n] (ldb): the "TN" form Hopper's fp8 tensor cores take; unit scales, fp32 accumulation.
inline void Fp8Gemm(LtHandle& lt, cudaStream_t stream, int m, int n, int k, const __nv_fp8_e4m3* a, int lda,
                    const __nv_fp8_e4m3* b, int ldb, float* d, int ldd) {
  lt.Gemm(stream, {CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, lda, ldb, ldd, CUDA_R_8F_E4M3}, a, b, d);
}

// D[m, n] (column-major, ldd, fp32 or bf16 as d_type) = op_a(A) B with bf16 A and B (column-major;
// B is k x n).
inline void Bf16Gemm(LtHandle& lt, cudaStream_t stream, cublasOperation_t op_a, int m, int n, int k,
                     const __nv_bfloat16* a, int lda, const __nv_bfloat16* b, int ldb, void* d, int ldd,
                     cudaDataType_t d_type) {
  lt.Gemm(stream, {op_a, CUBLAS_OP_N, m, n, k, lda, ldb, ldd, CUDA_R_16BF, d_type}, a, b, d);
}

}  // namespace kvtc::cuda
