#pragma once
// An experiment: every sweep point, its warm-up and timed repeats, each a fresh engine run
// over the same workload, and the results folder they fill, durably and resumably.
#include <filesystem>
#include <ostream>
#include <string>

#include "config/load.hpp"

namespace ablate {

struct RunOptions {
  std::filesystem::path results_root;  // results/<experiment>/<run id>/ is created under it
  std::string run_id;                  // empty: UTC time + config hash
  bool force = false;                  // replace an existing run folder; resume despite differences
  bool quiet = false;                  // no progress on stderr
  std::filesystem::path resume;        // continue this unfinished run folder (<run id>.partial)
  int shard_index = -1, shard_count = 0;  // --shard I/N: this process runs units I, I+N, I+2N, ...
  std::string resume_command;          // how this run was started, for the "resume with" hint
};

// Runs every unit (a sweep point's timed repeat, after its warm-ups) not already done, appending
// each one's rows durably; prints the summary table to `table` and returns the run folder.
// Interrupted (SIGINT/SIGTERM, after install_stop_handlers()): marks the folder interrupted,
// says how to resume, and throws RunInterrupted. A shard writes <run id>/shards/<I>/ and resumes
// its own unfinished folder by itself.
std::filesystem::path run_experiment(const LoadedExperiment& exp, const RunOptions& opts, std::ostream& table);

// `ablate merge RUN_DIR`: the shards' rows as one run's summary.csv, requests.csv and steps.csv
// (plus `shard` and `host` columns), written atomically into RUN_DIR; refuses a missing,
// unfinished or mismatched shard. Idempotent. Returns RUN_DIR.
std::filesystem::path merge_shards(const std::filesystem::path& run_dir, std::ostream& log);

}  // namespace ablate
