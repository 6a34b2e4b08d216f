#include "kvtc/rope.h"

#include <cmath>

#include "kvtc/error.h"

namespace kvtc {

void ValidateRope(const RopeParams& rope, int head_dim) {
  KVTC_CHECK(rope.rotary_dim > 0 && rope.rotary_dim % 2 == 0 && rope.rotary_dim <= head_dim,
             kInvalidArgument,
             "Expected an even rotary_dim in 2.." << head_dim << " but received " << rope.rotary_dim);
  KVTC_CHECK(rope.theta > 1.0 && std::isfinite(rope.theta), kInvalidArgument,
             "Expected rope theta > 1 but received " << rope.theta);
  KVTC_CHECK(rope.factor > 0.0, kInvalidArgument, "Expected rope factor > 0 but received " << rope.factor);
}

std::vector<double> RopeInvFreq(const RopeParams& rope) {
  const int half = rope.rotary_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) {
    inv[i] = 1.0 / std::pow(rope.theta, (2.0 * i) / rope.rotary_dim);
  }
  if (rope.scaling == RopeScaling::kLinear) {
    for (double& f : inv) f /= rope.factor;
  } else if (rope.scaling == RopeScaling::kLlama3) {
    // Llama 3.1 frequency-dependent scaling: long wavelengths are slowed by `factor`, short ones
    // kept, and the band between interpolated smoothly.
    const double low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor;
    const double high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / rope.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) /
                              (rope.high_freq_factor - rope.low_freq_factor);
        f = (1.0 - smooth) * f / rope.factor + smooth * f;
      }
    }
  }
  return inv;
}

void RopeRotate(float* x, int64_t tokens, int64_t heads, int head_dim, int64_t pos0,
                const RopeParams& rope, bool inverse) {
  ValidateRope(rope, head_dim);
  const std::vector<double> inv = RopeInvFreq(rope);
  const int half = rope.rotary_dim / 2;
  const bool neox = rope.layout == RopeLayout::kNeox;
#pragma omp parallel
  {
    std::vector<double> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const double pos = static_cast<double>(pos0 + t);
      for (int i = 0; i < half; ++i) {
        const double a = pos * inv[i];
        cs[i] = std::cos(a);
        sn[i] = inverse ? -std::sin(a) : std::sin(a);
      }
      float* row = x + t * heads * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = row + h * head_dim;
        for (int i = 0; i < half; ++i) {
          const int a = neox ? i : 2 * i;
          const int b = neox ? i + half : 2 * i + 1;
          const double x0 = v[a], x1 = v[b];
          v[a] = static_cast<float>(x0 * cs[i] - x1 * sn[i]);
          v[b] = static_cast<float>(x1 * cs[i] + x0 * sn[i]);
        }
      }
    }
  }
}

}  // namespace kvtc
