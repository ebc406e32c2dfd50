#pragma once
#include <stdexcept>
// Greedy and temperature / top-p sampling. Each sequence draws from its own generator seeded
// by (run seed, request id), so its tokens do not depend on what else shares the batch.
#include <cstdint>
#include <random>
#include <span>

namespace ablate {

// Inverse-CDF draw of a token from probabilities that need not sum to exactly 1 (a residual
// max(0, p - q) in speculative verification is normalised here); the last token with mass when
// rounding leaves the uniform above the total. u in [0, 1): the first token whose cumulative
// mass (summed in index order, in double) exceeds u * total.
int sample_from(std::span<const float> probs, std::mt19937_64& rng);
int sample_from_uniform(std::span<const float> probs, double u);

class Sampler {
 public:
  // top_p in (0, 1]: a zero mass keeps no token (every draw would divide by zero).
  Sampler(double temperature, double top_p) : temperature_(temperature), top_p_(top_p) {
    if (!(top_p > 0.0 && top_p <= 1.0)) throw std::invalid_argument("sampling: top_p must be in (0, 1]");
    if (!(temperature >= 0.0)) throw std::invalid_argument("sampling: temperature must be >= 0");
  }
  static std::mt19937_64 generator_for(std::uint64_t seed, int request_id);
  // Greedy (argmax, lowest id on ties) when temperature is 0; else one uniform(rng) drawn, as
  // sample_uniform.
  int sample(std::span<const float> logits, std::mt19937_64& rng) const;
  // The same draw with the uniform given (greedy ignores it): a backend that samples elsewhere
  // (cuda::sample_rows on the device) takes the uniforms the engine draws, so that a sequence's
  // tokens do not depend on where they were sampled.
  int sample_uniform(std::span<const float> logits, double u) const;
  static int argmax(std::span<const float> logits);
  // Probabilities after temperature and top-p, as sample() draws from them (for verification).
  void probabilities(std::span<const float> logits, std::span<float> probs) const;
  static double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
  bool greedy() const { return temperature_ == 0.0; }
  double temperature() const { return temperature_; }
  double top_p() const { return top_p_; }

 private:
  double temperature_;
  double top_p_;
};

}  // namespace ablate
