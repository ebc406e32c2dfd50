#pragma once
// An experiment: every sweep point, its warm-up and timed repeats, each a fresh engine run
// over the same workload, and the results folder they fill.
#include <filesystem>
#include <ostream>
#include <string>

#include "config/load.hpp"

namespace ablate {

struct RunOptions {
  std::filesystem::path results_root;  // results/<experiment>/<run id>/ is created under it
  std::string run_id;                  // empty: UTC time + config hash
  bool force = false;                  // replace an existing run folder
  bool quiet = false;                  // no progress on stderr
};

// Runs everything, prints the summary table to `table`, and returns the run folder (written
// atomically at the end: an interrupted run leaves nothing behind).
std::filesystem::path run_experiment(const LoadedExperiment& exp, const RunOptions& opts, std::ostream& table);

}  // namespace ablate
