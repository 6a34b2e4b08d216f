// Rotary position embedding, removed from keys before projection and re-applied after
// reconstruction, at each token's absolute position. Rotation is orthonormal, so
// Remove(Apply(x)) == x up to float rounding. Angles are computed in double precision from the
// model's exact RoPE variant (theta, Llama-3 or linear frequency scaling, NeoX rotate-half or
// interleaved pairs, partial rotary dimension); the same parameters come from the calibration.
#pragma once

#include <cstdint>
#include <vector>

namespace kvtc {

enum class RopeLayout : uint8_t { kNeox = 0, kInterleaved = 1 };
enum class RopeScaling : uint8_t { kDefault = 0, kLinear = 1, kLlama3 = 2 };

struct RopeParams {
  double theta = 10000.0;
  int rotary_dim = 0;  // <= head_dim, even; dims at and beyond it are not rotated
  RopeLayout layout = RopeLayout::kNeox;
  RopeScaling scaling = RopeScaling::kDefault;
  double factor = 1.0;  // linear and llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

// inv_freq[i], i < rotary_dim / 2, after scaling.
std::vector<double> RopeInvFreq(const RopeParams& rope);

// x: [tokens, heads, head_dim] float32, rotated in place; token t sits at position pos0 + t.
// `heads` is every (layer, kv head) pair of a token: they all share the token's angles.
void RopeRotate(float* x, int64_t tokens, int64_t heads, int head_dim, int64_t pos0,
                const RopeParams& rope, bool inverse);

void ValidateRope(const RopeParams& rope, int head_dim);

}  // namespace kvtc
