#pragma once
// A run's results folder, written atomically: results_root/<experiment>/<run_id>/ with
//   summary.csv     one row per sweep point and repeat: point, repeat, provenance columns, config
//                   columns, metrics (summarize())
//   requests.csv    one row per request of every run
//   steps.csv       one row per engine step of every run
//   config.yaml     the resolved config(s), as given
//   provenance.yaml the provenance, run_id, experiment and config_hash
// Everything goes to a hidden sibling `.<run_id>.partial-<pid>[-n]` that commit() renames into place,
// so a results folder is either complete or absent.
//
//   ResultsWriter out({root, cfg.experiment, run_id, force, yaml}, collect_provenance(...));
//   for each timed run: out.add_run({point, repeat, run_index, round}, config_columns, records, summarize(records, slo));
//   out.commit();
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "base/records.hpp"
#include "report/metrics.hpp"
#include "report/provenance.hpp"

namespace ablate {

struct ResultsOptions {
  std::filesystem::path results_root = "results";
  std::string experiment = "experiment";
  std::string run_id;        // empty: UTC YYYYmmdd-HHMMSS-<8 hex of config_hash(config_yaml)>
  bool force = false;        // replace an existing folder of the same run id
  std::string config_yaml;   // written as config.yaml
};

// Which run a row belongs to (summary.csv's first columns).
struct RunKey {
  int point = 0;
  int repeat = 0;
  int run_index = 0;  // place in the execution order, warm-ups included
  int round = 0;      // interleaving round (= repeat)
};

class ResultsWriter {
 public:
  // Throws std::runtime_error when an explicit run_id's folder exists and force is false (an
  // automatic id instead takes the suffix -2, -3, ...), or when the folder cannot be created.
  ResultsWriter(ResultsOptions opts, Provenance provenance);
  ~ResultsWriter();  // without commit(): removes the partial folder
  ResultsWriter(const ResultsWriter&) = delete;
  ResultsWriter& operator=(const ResultsWriter&) = delete;

  // Adds one timed run. `provenance`: this run's, when it differs from the writer's (a sweep over
  // threads or backend); summary.csv then shows it on that row.
  void add_run(const RunKey& key, const Columns& config, const RunRecords& records, const Metrics& metrics,
               const std::optional<Provenance>& provenance = std::nullopt);

  // Writes the remaining files and moves the folder into place; returns it. An automatic id that
  // was taken meanwhile moves on to the next suffix; with force an existing folder is replaced
  // (moved aside, the new one moved in, then the old one deleted, so one of them always exists).
  // extra_provenance: YAML lines appended to provenance.yaml (the runner's run order and targets).
  std::filesystem::path commit(const std::string& extra_provenance = "");

  const std::string& run_id() const { return run_id_; }  // final after commit()
  std::filesystem::path run_dir() const { return dir_ / run_id_; }
  const std::vector<SummaryRow>& rows() const { return rows_; }
  // The partial folder, for a caller's scratch files (removed before commit()).
  const std::filesystem::path& scratch_dir() const { return tmp_; }

 private:
  std::string pick_run_id() const;

  ResultsOptions opts_;
  Provenance provenance_;
  std::filesystem::path dir_;   // results_root/experiment
  std::string base_id_, run_id_, tag_;
  std::filesystem::path tmp_;
  std::ofstream requests_, steps_;
  std::vector<SummaryRow> rows_;
  std::vector<Columns> row_provenance_;
  bool committed_ = false;
};

}  // namespace ablate
