// Calibration math (paper section 3.1, Appendix B.17): randomized SVD for the PCA basis, and the
// exact dynamic program that allocates bits to groups of PCA components under a per-token budget.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kvtc/quantize.h"

namespace kvtc {

struct PcaResult {
  std::vector<float> mean;      // [p]
  std::vector<float> basis;     // [p, rank] row-major, columns by decreasing singular value
  std::vector<float> singular;  // [rank]
  double total_energy = 0;      // squared Frobenius norm of the centred samples
};

// Halko et al. randomized SVD of the centred samples x [n, p]: `power_iters` subspace
// iterations, `oversample` extra columns, Gaussian test matrix from `seed`.
PcaResult FitPca(const float* x, int64_t n, int64_t p, int64_t rank, int power_iters, int oversample,
                 uint64_t seed, const std::function<void(double)>& progress = {});

struct DpResult {
  std::vector<Plan> plans;  // one per budget, in the order given
  double energy = 0;        // squared norm of the projected DP rows
};

// projected: [n, f] row-major PCA coefficients of the calibration rows (columns by decreasing
// variance). For each budget (bits per token), the allocation of groups (sizes {1,16,64,256,1024},
// types {dropped, int2, int4, fp8}) minimising the simulated-quantization squared error, with
// each kept group costing size * bits + 32 bits per token. Block errors are computed once; one
// table serves every budget. Plan::expected_error is the squared error over `energy`.
DpResult AllocateBits(const float* projected, int64_t n, int64_t f, const std::vector<uint32_t>& budgets,
                      const std::function<void(double)>& progress = {});

}  // namespace kvtc
