#include "kvtc/calibrate.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "kvtc/error.h"

extern "C" {
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work, const int* lwork,
             int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau, float* work,
             const int* lwork, int* info);
void sgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork, int* info);
}

namespace kvtc {
namespace {

// Orthonormalizes the columns of the column-major m x n matrix a (m >= n) in place.
void Orthonormalize(float* a, int m, int n) {
  std::vector<float> tau(n);
  int info = 0, lwork = -1;
  float query = 0;
  sgeqrf_(&m, &n, a, &m, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  std::vector<float> work(lwork);
  sgeqrf_(&m, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  KVTC_CHECK(info == 0, kNumerical, "LAPACK sgeqrf failed with info " << info);
  lwork = -1;
  sorgqr_(&m, &n, &n, a, &m, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  work.resize(lwork);
  sorgqr_(&m, &n, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  KVTC_CHECK(info == 0, kNumerical, "LAPACK sorgqr failed with info " << info);
}

}  // namespace

PcaResult FitPca(const float* x, int64_t n, int64_t p, int64_t rank, int power_iters, int oversample, uint64_t seed,
                 const std::function<void(double)>& progress) {
  KVTC_CHECK(n >= 2 && p >= 1, kInvalidArgument, "Expected at least 2 samples but received " << n);
  KVTC_CHECK(rank >= 1 && rank <= std::min(n, p), kInvalidArgument,
             "Expected a rank in 1.." << std::min(n, p) << " but received " << rank);
  KVTC_CHECK(n * p < (int64_t{1} << 31) * 4, kInvalidArgument, "sample matrix too large");
  PcaResult r;
  // Column means in double, then centred samples A = (x - mean)^T stored column-major p x n
  // (the same bytes as row-major x).
  std::vector<double> mean(p, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < p; ++j) mean[j] += x[t * p + j];
  r.mean.resize(p);
  for (int64_t j = 0; j < p; ++j) r.mean[j] = static_cast<float>(mean[j] / static_cast<double>(n));
  std::vector<float> a(static_cast<size_t>(n) * p);
  double energy = 0;
  bool finite = true;
#pragma omp parallel for reduction(+ : energy) reduction(&& : finite) schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < p; ++j) {
      const float v = x[t * p + j] - r.mean[j];
      finite = finite && std::isfinite(v);
      a[t * p + j] = v;
      energy += static_cast<double>(v) * v;
    }
  }
  KVTC_CHECK(finite, kNumerical, "calibration samples contain NaN or infinite values");
  r.total_energy = energy;

  const int l = static_cast<int>(std::min<int64_t>(rank + oversample, std::min(n, p)));
  const int ip = static_cast<int>(p), in = static_cast<int>(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> omega(static_cast<size_t>(n) * l);  // n x l
  for (float& v : omega) v = normal(rng);
  std::vector<float> y(static_cast<size_t>(p) * l);  // p x l
  std::vector<float> z(static_cast<size_t>(n) * l);  // n x l
  const double steps = 2.0 + 2.0 * power_iters;
  double done = 0;
  auto tick = [&] {
    done += 1;
    if (progress) progress(done / steps);
  };
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, ip, l, in, 1.0f, a.data(), ip, omega.data(), in, 0.0f,
              y.data(), ip);
  Orthonormalize(y.data(), ip, l);
  tick();
  for (int it = 0; it < power_iters; ++it) {
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, in, l, ip, 1.0f, a.data(), ip, y.data(), ip, 0.0f, z.data(),
                in);
    Orthonormalize(z.data(), in, l);
    tick();
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, ip, l, in, 1.0f, a.data(), ip, z.data(), in, 0.0f,
                y.data(), ip);
    Orthonormalize(y.data(), ip, l);
    tick();
  }
  // B = Q^T A (l x n); its left singular vectors rotate Q onto the principal directions.
  std::vector<float> b(static_cast<size_t>(l) * n);
  cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, l, in, ip, 1.0f, y.data(), ip, a.data(), ip, 0.0f, b.data(), l);
  std::vector<float>().swap(a);
  std::vector<float> s(l), u(static_cast<size_t>(l) * l);
  {
    int info = 0, lwork = -1;
    float query = 0, vt_dummy = 0;
    const int one = 1;
    sgesvd_("S", "N", &l, &in, b.data(), &l, s.data(), u.data(), &l, &vt_dummy, &one, &query, &lwork, &info);
    lwork = std::max(1, static_cast<int>(query));
    std::vector<float> work(lwork);
    sgesvd_("S", "N", &l, &in, b.data(), &l, s.data(), u.data(), &l, &vt_dummy, &one, work.data(), &lwork, &info);
    KVTC_CHECK(info == 0, kNumerical, "LAPACK sgesvd failed with info " << info);
  }
  // basis (column-major p x rank) = Q U[:, :rank]; stored row-major [p, rank] = its transpose.
  std::vector<float> qu(static_cast<size_t>(p) * rank);
  cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, ip, static_cast<int>(rank), l, 1.0f, y.data(), ip, u.data(),
              l, 0.0f, qu.data(), ip);
  r.basis.resize(static_cast<size_t>(p) * rank);
  for (int64_t c = 0; c < rank; ++c)
    for (int64_t j = 0; j < p; ++j) r.basis[j * rank + c] = qu[c * p + j];
  r.singular.assign(s.begin(), s.begin() + rank);
  tick();
  return r;
}

namespace {

constexpr GroupType kKeptTypes[] = {GroupType::kInt2, GroupType::kInt4, GroupType::kFp8};
constexpr int kNumSizes = 5;
constexpr int kNumKept = 3;
constexpr int kBudgetUnitBits = 2;  // every cost (size * {2,4,8} + 32) is even
constexpr uint8_t kChoiceInit = 0;  // everything before i dropped
constexpr uint8_t kChoiceCarry = 1;  // same as (i, b - 1)
// 2 + size_index * 4 + type_index, type_index 0 dropped, 1..3 kKeptTypes

}  // namespace

DpResult AllocateBits(const float* projected, int64_t n, int64_t f, const std::vector<uint32_t>& budgets,
                      const std::function<void(double)>& progress) {
  KVTC_CHECK(n >= 1 && f >= 1, kInvalidArgument, "Expected a non-empty projected matrix but received " << n << " x " << f);
  KVTC_CHECK(!budgets.empty(), kInvalidArgument, "Expected at least one budget");
  DpResult result;
  // Block errors: delta[i][s][k] = error change when components [i - g, i) are kept with type k.
  std::vector<double> col_energy(f, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < f; ++j) col_energy[j] += static_cast<double>(projected[t * f + j]) * projected[t * f + j];
  for (double e : col_energy) result.energy += e;
  std::vector<double> delta(static_cast<size_t>(f + 1) * kNumSizes * kNumKept, 0.0);
  int64_t rows_done = 0;
#pragma omp parallel
  {
    std::vector<float> blk(1024);
#pragma omp for schedule(dynamic, 4)
    for (int64_t i = 1; i <= f; ++i) {
      for (int s = 0; s < kNumSizes; ++s) {
        const int g = kGroupSizes[s];
        if (g > i) break;
        double blk_energy = 0;
        for (int64_t j = i - g; j < i; ++j) blk_energy += col_energy[j];
        for (int k = 0; k < kNumKept; ++k) {
          double err = 0;
          for (int64_t t = 0; t < n; ++t) {
            const float* row = projected + t * f + (i - g);
            std::copy(row, row + g, blk.begin());
            QuantizeDequantizeGroup(blk.data(), g, kKeptTypes[k]);
            for (int j = 0; j < g; ++j) {
              const double e = static_cast<double>(row[j]) - blk[j];
              err += e * e;
            }
          }
          delta[(i * kNumSizes + s) * kNumKept + k] = err - blk_energy;
        }
      }
      if (progress) {
#pragma omp atomic
        ++rows_done;
#pragma omp critical
        progress(0.9 * static_cast<double>(rows_done) / f);
      }
    }
  }

  uint32_t max_budget = *std::max_element(budgets.begin(), budgets.end());
  const int64_t units = max_budget / kBudgetUnitBits;
  const int64_t width = units + 1;
  // Error rows are needed back to i - 1024 only: a ring of 1025 rows. Choices are kept in full.
  constexpr int64_t kRing = 1025;
  std::vector<double> err(static_cast<size_t>(std::min<int64_t>(f + 1, kRing)) * width, result.energy);
  std::vector<uint8_t> choice(static_cast<size_t>(f + 1) * width, kChoiceInit);
  auto row = [&](int64_t i) { return err.data() + (i % kRing) * width; };
  for (int64_t i = 1; i <= f; ++i) {
    double* e = row(i);
    uint8_t* ch = choice.data() + i * width;
    for (int64_t b = 0; b < width; ++b) {
      double best = result.energy;
      uint8_t pick = kChoiceInit;
      if (b > 0 && e[b - 1] < best) {
        best = e[b - 1];
        pick = kChoiceCarry;
      }
      for (int s = 0; s < kNumSizes; ++s) {
        const int g = kGroupSizes[s];
        if (g > i) break;
        const double* prev = row(i - g);
        if (prev[b] < best) {  // dropped group: no bits, no error change
          best = prev[b];
          pick = static_cast<uint8_t>(2 + s * 4);
        }
        for (int k = 0; k < kNumKept; ++k) {
          const int64_t cost = GroupCostBits(kKeptTypes[k], g) / kBudgetUnitBits;
          if (cost > b) continue;
          const double cand = prev[b - cost] + delta[(i * kNumSizes + s) * kNumKept + k];
          if (cand < best) {
            best = cand;
            pick = static_cast<uint8_t>(2 + s * 4 + 1 + k);
          }
        }
      }
      e[b] = best;
      ch[b] = pick;
    }
  }
  if (progress) progress(1.0);

  for (uint32_t budget : budgets) {
    std::vector<Group> reversed;
    int64_t i = f, b = budget / kBudgetUnitBits;
    while (i > 0) {
      const uint8_t pick = choice[i * width + b];
      if (pick == kChoiceInit) break;  // [0, i) all dropped
      if (pick == kChoiceCarry) {
        --b;
        continue;
      }
      const int s = (pick - 2) / 4, k = (pick - 2) % 4;
      const int g = kGroupSizes[s];
      const GroupType type = k == 0 ? GroupType::kDropped : kKeptTypes[k - 1];
      reversed.push_back({static_cast<uint32_t>(i - g), static_cast<uint32_t>(g), type});
      b -= GroupCostBits(type, g) / kBudgetUnitBits;
      i -= g;
    }
    Plan plan;
    // Components [0, i) dropped: spelled with the largest allowed sizes that fit.
    uint32_t pos = 0;
    while (pos < i) {
      int g = 1;
      for (int size : kGroupSizes)
        if (size <= i - pos) g = size;
      plan.groups.push_back({pos, static_cast<uint32_t>(g), GroupType::kDropped});
      pos += g;
    }
    for (auto it = reversed.rbegin(); it != reversed.rend(); ++it) plan.groups.push_back(*it);
    // Trim trailing dropped groups: the basis needs only the components up to the last kept one.
    while (!plan.groups.empty() && plan.groups.back().type == GroupType::kDropped) plan.groups.pop_back();
    plan.rank = plan.groups.empty() ? 0 : plan.groups.back().start + plan.groups.back().size;
    plan.budget_bits = budget;
    // Error of the plan, recomputed from the block table (the DP value at (f, budget)).
    double e = result.energy;
    for (const Group& g : plan.groups) {
      if (g.type == GroupType::kDropped) continue;
      int s = 0;
      while (kGroupSizes[s] != static_cast<int>(g.size)) ++s;
      const int k = static_cast<int>(g.type) - 1;
      e += delta[((g.start + g.size) * kNumSizes + s) * kNumKept + k];
    }
    plan.expected_error = result.energy > 0 ? std::max(0.0, e) / result.energy : 0.0;
    result.plans.push_back(std::move(plan));
  }
  return result;
}

}  // namespace kvtc
