#pragma once
// Greedy and temperature / top-p sampling. Each sequence draws from its own generator seeded
// by (run seed, request id), so its tokens do not depend on what else shares the batch.
#include <cstdint>
#include <random>
#include <span>

namespace ablate {

// Inverse-CDF draw of a token from probabilities that need not sum to exactly 1 (a residual
// max(0, p - q) in speculative verification is normalised here); the last token with mass when
// rounding leaves the uniform above the total.
int sample_from(std::span<const float> probs, std::mt19937_64& rng);

class Sampler {
 public:
  Sampler(double temperature, double top_p) : temperature_(temperature), top_p_(top_p) {}
  static std::mt19937_64 generator_for(std::uint64_t seed, int request_id);
  // Greedy (argmax, lowest id on ties) when temperature is 0.
  int sample(std::span<const float> logits, std::mt19937_64& rng) const;
  static int argmax(std::span<const float> logits);
  // Probabilities after temperature and top-p, as sample() draws from them (for verification).
  void probabilities(std::span<const float> logits, std::span<float> probs) const;
  static double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
  bool greedy() const { return temperature_ == 0.0; }

 private:
  double temperature_;
  double top_p_;
};

}  // namespace ablate
