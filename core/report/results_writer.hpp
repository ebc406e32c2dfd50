#pragma once
// A run's results folder: results_root/<experiment>/<run_id>/ with
//   summary.csv     one row per timed run (a unit: a sweep point's repeat): point, repeat,
//                   run_index, round, provenance columns, config columns, metrics (summarize())
//   requests.csv    one row per request of every unit
//   steps.csv       one row per engine step of every unit
//   config.yaml     the resolved config(s), as given
//   provenance.yaml the provenance, run_id, experiment, config_hash, status, units
//
// Durable and resumable: while the run goes, the folder is `<run_id>.partial/` (visible, so an
// interrupted run is found). Each unit's rows are appended whole as soon as it finishes (requests,
// then steps, then its summary row, which marks the unit done), flushed and fsynced: a crash loses
// at most the unit in flight. A complete run is renamed to `<run_id>/` (status: complete); a
// folder of that name is therefore always complete. An interrupted one keeps `.partial` with
// status: interrupted and can be resumed: its torn last lines and the rows of units that have no
// summary row are dropped, and the run goes on appending.
//
//   ResultsWriter out({root, cfg.experiment, run_id, force, yaml, config_cols, metric_cols}, provenance);
//   for each unit: out.add_run({point, repeat, run_index, round}, config_columns, records, summarize(...));
//   out.commit();            // or out.mark_interrupted(...) when stopped
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/records.hpp"
#include "report/metrics.hpp"
#include "report/provenance.hpp"

namespace ablate {

struct ResultsOptions {
  std::filesystem::path results_root = "results";
  std::string experiment = "experiment";
  std::string run_id;        // empty: UTC YYYYmmdd-HHMMSS-<8 hex of config_hash(config_yaml)>
  bool force = false;        // replace an existing folder of the same run id (complete or partial)
  std::string config_yaml;   // written as config.yaml
  // summary.csv's config and metric columns, in order; empty: the first add_run's.
  std::vector<std::string> config_columns, metric_columns;
  // Continue this partial run folder instead of starting one (run_id and force are ignored).
  std::filesystem::path resume;
  int total_units = 0;       // units the run plans (provenance.yaml, progress of a resume)
};

// Which run a row belongs to (summary.csv's first columns).
struct RunKey {
  int point = 0;
  int repeat = 0;
  int run_index = 0;  // place in the execution order, warm-ups included
  int round = 0;      // interleaving round (= repeat)
};

// What resuming a folder found and repaired.
struct ResumeReport {
  std::vector<std::string> repairs;  // "steps.csv: dropped a torn last line", ...
  int units_done = 0;
};

class ResultsWriter {
 public:
  // Throws std::runtime_error when an explicit run_id's folder exists (complete or partial) and
  // force is false (an automatic id instead takes the suffix -2, -3, ...), when the folder cannot
  // be created, or when `resume` is not a partial run folder.
  ResultsWriter(ResultsOptions opts, Provenance provenance);
  ~ResultsWriter();  // without commit(): a partial folder with no unit done is removed, else kept
  ResultsWriter(const ResultsWriter&) = delete;
  ResultsWriter& operator=(const ResultsWriter&) = delete;

  // Appends one timed run's rows, durably. `provenance`: this run's, when it differs from the
  // writer's (a sweep over threads or backend); summary.csv then shows it on that row.
  void add_run(const RunKey& key, const Columns& config, const RunRecords& records, const Metrics& metrics,
               const std::optional<Provenance>& provenance = std::nullopt);

  // The run stopped before its end: provenance.yaml says status: interrupted, with the units done.
  void mark_interrupted(int total_units, const std::string& reason);

  // Writes provenance.yaml (status: complete) and renames the folder into place; returns it. An
  // automatic id taken meanwhile moves on to the next suffix; with force an existing folder is
  // replaced (moved aside, the new one moved in, then the old one deleted).
  // extra_provenance: YAML lines appended to provenance.yaml (the runner's run order and targets).
  std::filesystem::path commit(const std::string& extra_provenance = "");

  const std::string& run_id() const { return run_id_; }  // final after commit()
  std::filesystem::path run_dir() const { return dir_ / run_id_; }
  // The <run id>.partial folder the run writes into (also room for a caller's scratch files,
  // removed before commit()).
  const std::filesystem::path& partial_dir() const { return tmp_; }
  const std::vector<SummaryRow>& rows() const { return rows_; }
  bool done(int point, int repeat) const { return done_.count({point, repeat}) > 0; }
  int next_run_index() const { return next_run_index_; }
  const ResumeReport& resume_report() const { return resume_; }

 private:
  std::string pick_run_id() const;
  void resume_from(const std::filesystem::path& dir);
  void write_headers(const Columns& config, const Metrics& metrics);
  void write_provenance(const std::string& status, int total_units, const std::string& extra) const;

  ResultsOptions opts_;
  Provenance provenance_;
  std::filesystem::path dir_;   // results_root/experiment
  std::string base_id_, run_id_;
  std::filesystem::path tmp_;   // <run_id>.partial
  std::vector<std::string> header_, config_keys_, metric_keys_;
  std::vector<SummaryRow> rows_;
  std::set<std::pair<int, int>> done_;  // (point, repeat) units with a summary row
  int next_run_index_ = 0;
  ResumeReport resume_;
  bool committed_ = false, interrupted_ = false;
};

// Reads provenance.yaml's flat `key: "value"` lines (the file this writer writes).
std::vector<std::pair<std::string, std::string>> read_provenance_file(const std::filesystem::path& file);

}  // namespace ablate
