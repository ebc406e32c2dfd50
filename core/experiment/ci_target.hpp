#pragma once
// target_ci: the 95 % confidence intervals of each point's metric so far, computed by the
// project's one statistics module (plots/stats.py, scipy's bootstrap) rather than a second
// implementation in C++.
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "report/metrics.hpp"

namespace ablate {

struct PointInterval {
  double centre = 0;
  std::optional<double> half_width;  // (hi - lo) / 2 / |centre|; none below 3 repeats
  int n = 0;
};

// Runs `python plots/stats.py ci` over the rows' `metric`, grouped by point. The interpreter is
// $ABLATE_PYTHON, else /usr/bin/python3 (Debian's, which has scipy). Throws std::runtime_error
// with what to install when it cannot run.
std::map<int, PointInterval> point_intervals(const std::vector<SummaryRow>& rows, const std::string& metric,
                                             const std::filesystem::path& scratch_dir);

// Fails early, before any run, when the statistics module cannot run here.
void check_stats_available();

}  // namespace ablate
