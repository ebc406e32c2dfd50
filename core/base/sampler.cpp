#include "base/sampler.hpp"

#include "cpu/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace ablate {

std::mt19937_64 Sampler::generator_for(std::uint64_t seed, int request_id) {
  std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                    static_cast<std::uint32_t>(request_id), 0x5A3D1E5u};
  return std::mt19937_64(seq);
}

int Sampler::argmax(std::span<const float> logits) {
  int id = 0;
  cpu::argmax_rows(logits.data(), 1, static_cast<int>(logits.size()), &id);
  return id;
}

void Sampler::probabilities(std::span<const float> logits, std::span<float> probs) const {
  const std::size_t n = logits.size();
  if (greedy()) {
    std::fill(probs.begin(), probs.end(), 0.0f);
    probs[static_cast<std::size_t>(argmax(logits))] = 1.0f;
    return;
  }
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    probs[i] = static_cast<float>(std::exp((logits[i] - mx) / temperature_));
    sum += probs[i];
  }
  for (auto& p : probs) p = static_cast<float>(p / sum);
  if (top_p_ >= 1.0) return;
  // Keep the smallest set of most likely tokens whose mass reaches top_p, renormalised.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
  double mass = 0;
  std::size_t keep = 0;
  while (keep < n && mass < top_p_) mass += probs[static_cast<std::size_t>(order[keep++])];
  for (std::size_t i = keep; i < n; ++i) probs[static_cast<std::size_t>(order[i])] = 0.0f;
  for (auto& p : probs) p = static_cast<float>(p / mass);
}

int sample_from(std::span<const float> probs, std::mt19937_64& rng) { return sample_from_uniform(probs, Sampler::uniform(rng)); }

int sample_from_uniform(std::span<const float> probs, double uniform) {
  double total = 0;
  for (float p : probs) total += p;
  const double u = uniform * total;
  double acc = 0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    acc += probs[i];
    if (u < acc) return static_cast<int>(i);
  }
  for (std::size_t i = probs.size(); i-- > 0;)
    if (probs[i] > 0) return static_cast<int>(i);
  return 0;
}

int Sampler::sample(std::span<const float> logits, std::mt19937_64& rng) const {
  if (greedy()) return argmax(logits);
  return sample_uniform(logits, uniform(rng));
}

int Sampler::sample_uniform(std::span<const float> logits, double u) const {
  if (greedy()) return argmax(logits);
  std::vector<float> probs(logits.size());
  probabilities(logits, probs);
  return sample_from_uniform(probs, u);
}

}  // namespace ablate
