#pragma once
// `ablate slurm CONFIG`: a sweep as a Slurm array job, one shard per task, and a merge job that
// runs when every task has succeeded. The scripts are plain sbatch files, written into
// <out>/<experiment>/<run id>/slurm/, for a user to read, edit and submit.
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "config/load.hpp"

namespace ablate {

struct SlurmOptions {
  std::filesystem::path config;        // the experiment config, as given to `ablate run`
  std::vector<std::string> overrides;  // its --set values
  std::filesystem::path results_root;  // --out
  std::string run_id;                  // empty: UTC time + config hash, fixed here for every task
  int shards = 2;
  std::string partition, time, account;
  int gpus_per_task = 0, cpus_per_task = 0;
  std::vector<std::string> extra;      // more "#SBATCH ..." lines, as given
  bool submit = false;                 // sbatch them (the array, then the merge depending on it)
  std::filesystem::path ablate;        // this program, by absolute path
};

struct SlurmScripts {
  std::filesystem::path run_dir, array_script, merge_script;
  std::string array_job, merge_job;  // job ids when submitted
};

// Writes the two scripts (never over existing ones) and, with submit, submits them. Throws
// std::invalid_argument on bad options and when sbatch is not on the PATH for a submit.
SlurmScripts write_slurm_job(const LoadedExperiment& exp, const SlurmOptions& opts);

}  // namespace ablate
