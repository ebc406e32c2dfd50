#pragma once
// The order an experiment's runs go in. Interleaved (the default): round r runs repeat r of every
// point, the points of a round in an order drawn from the seed, so that drift (another job on a
// core, clocks, a noisy neighbour) spreads over every arm instead of landing on one.
// Sequential: each point's repeats back to back, points in sweep order.
#include <cstdint>
#include <vector>

namespace ablate {

// The points of round `round` (a permutation of `points`), reproducible from (seed, round).
std::vector<int> round_order(const std::vector<int>& points, std::uint64_t seed, int round);

}  // namespace ablate
