#include "experiment/run_order.hpp"

#include <utility>

#include "workload/workload.hpp"

namespace ablate {

std::vector<int> round_order(const std::vector<int>& points, std::uint64_t seed, int round) {
  // Fisher-Yates with the project's own generator (std::shuffle's algorithm differs between
  // standard libraries, so a seed would not name the same order everywhere).
  constexpr std::uint64_t kRunOrderStream = 0x52554e4f52444552ULL;  // "RUNORDER"
  Rng rng(stream_seed(stream_seed(seed, kRunOrderStream), static_cast<std::uint64_t>(round)));
  std::vector<int> out = points;
  for (std::size_t i = out.size(); i > 1; --i)
    std::swap(out[i - 1], out[static_cast<std::size_t>(rng.uniform_int(0, static_cast<std::int64_t>(i) - 1))]);
  return out;
}

}  // namespace ablate
