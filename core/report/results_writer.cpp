#include "report/results_writer.hpp"

#include <algorithm>
#include <atomic>
#include <set>
#include <stdexcept>
#include <unistd.h>

#include <fmt/format.h>

#include "report/csv.hpp"

namespace ablate {

namespace fs = std::filesystem;

namespace {

void check_name(const std::string& what, const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.front() == '.' || name.find('/') != std::string::npos)
    throw std::runtime_error(fmt::format("{} '{}' cannot name a results folder (empty, '/' or leading '.')", what, name));
}

// A YAML double-quoted scalar.
std::string yaml_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c == '\n') out += "\\n";
    else if (c < 0x20) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", path.string()));
}

std::string ms(double seconds) { return format_number(seconds * 1000.0); }

const char* kRequestColumns[] = {"point",   "repeat",       "request_id", "arrival_s",  "queue_time_ms", "ttft_ms",
                                 "tpot_ms", "e2el_ms",      "itl_mean_ms", "prompt_len", "output_len",   "preemptions"};
const char* kStepColumns[] = {"point",          "repeat",        "step",         "start_s",      "wall_s",
                              "forward_s",      "device_s",      "batch_size",    "prefill_seqs", "decode_seqs",  "prefill_tokens",
                              "decode_tokens",  "padding_rows",  "running",      "running_at_forward", "waiting",      "preempted",
                              "kv_reserved_bytes", "kv_used_bytes", "kv_blocks_allocated", "kv_tokens_stored",
                              "kv_fragmentation_bytes"};

}  // namespace

ResultsWriter::ResultsWriter(ResultsOptions opts, Provenance provenance)
    : opts_(std::move(opts)), provenance_(std::move(provenance)) {
  check_name("experiment", opts_.experiment);
  dir_ = opts_.results_root / opts_.experiment;
  if (opts_.run_id.empty()) {
    const auto now = std::chrono::system_clock::now();
    const std::string stamp = iso8601_utc(now);  // YYYY-MM-DDTHH:MM:SSZ -> YYYYmmdd-HHMMSS
    base_id_ = stamp.substr(0, 4) + stamp.substr(5, 2) + stamp.substr(8, 2) + "-" + stamp.substr(11, 2) +
               stamp.substr(14, 2) + stamp.substr(17, 2) + "-" + config_hash(opts_.config_yaml).substr(0, 8);
  } else {
    check_name("run id", opts_.run_id);
    base_id_ = opts_.run_id;
    if (!opts_.force && fs::exists(dir_ / base_id_))
      throw std::runtime_error(fmt::format(
          "results folder '{}' already exists; use --force to replace it or --out to write elsewhere",
          (dir_ / base_id_).string()));
  }
  fs::create_directories(dir_);
  // pid, and a count for more writers in one process: unique among live writers.
  static std::atomic<int> writers{0};
  const int n = writers++;
  tag_ = n == 0 ? fmt::format("{}", ::getpid()) : fmt::format("{}-{}", ::getpid(), n);
  run_id_ = pick_run_id();
  tmp_ = dir_ / fmt::format(".{}.partial-{}", run_id_, tag_);
  fs::remove_all(tmp_);  // a leftover of a crashed process that had our pid
  fs::create_directory(tmp_);
  requests_.open(tmp_ / "requests.csv", std::ios::binary);
  steps_.open(tmp_ / "steps.csv", std::ios::binary);
  if (!requests_ || !steps_) {
    requests_.close(), steps_.close();
    std::error_code ec;
    fs::remove_all(tmp_, ec);
    throw std::runtime_error(fmt::format("cannot create files in '{}'", tmp_.string()));
  }
  write_csv_row(requests_, {std::begin(kRequestColumns), std::end(kRequestColumns)});
  write_csv_row(steps_, {std::begin(kStepColumns), std::end(kStepColumns)});
}

ResultsWriter::~ResultsWriter() {
  if (committed_) return;
  requests_.close(), steps_.close();
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

std::string ResultsWriter::pick_run_id() const {
  if (!opts_.run_id.empty() || opts_.force) return base_id_;
  // Taken: a finished folder, or another writer's partial one (two writers in the same second).
  auto taken = [&](const std::string& id) {
    if (fs::exists(dir_ / id)) return true;
    const std::string prefix = "." + id + ".partial-";
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(prefix, 0) == 0 && e.path() != tmp_) return true;
    }
    return false;
  };
  std::string id = base_id_;
  for (int k = 2; taken(id); ++k) id = fmt::format("{}-{}", base_id_, k);
  return id;
}

void ResultsWriter::add_run(const RunKey& key, const Columns& config, const RunRecords& records,
                            const Metrics& metrics, const std::optional<Provenance>& provenance) {
  if (committed_) throw std::logic_error("ResultsWriter::add_run after commit()");
  const int point = key.point, repeat = key.repeat;
  rows_.push_back({point, repeat, key.run_index, key.round, config, metrics});
  row_provenance_.push_back((provenance ? *provenance : provenance_).columns());
  const std::string p = std::to_string(point), r = std::to_string(repeat);
  for (const RequestRecord& q : records.requests) {
    double itl_sum = 0;
    for (double g : q.itl_s) itl_sum += g;
    write_csv_row(requests_, {p, r, std::to_string(q.request_id), format_number(q.arrival_s), ms(q.queue_time()),
                              ms(q.ttft()), q.has_tpot() ? ms(q.tpot()) : "", ms(q.e2el()),
                              q.itl_s.empty() ? "" : ms(itl_sum / static_cast<double>(q.itl_s.size())),
                              std::to_string(q.prompt_len), std::to_string(q.output_len), std::to_string(q.preemptions)});
  }
  for (const StepRecord& s : records.steps) {
    write_csv_row(steps_, {p, r, std::to_string(s.step), format_number(s.start_s), format_number(s.wall_s),
                           format_number(s.forward_s), s.device_s ? format_number(*s.device_s) : "",
                           std::to_string(s.batch_size), std::to_string(s.prefill_seqs),
                           std::to_string(s.decode_seqs), std::to_string(s.prefill_tokens),
                           std::to_string(s.decode_tokens), std::to_string(s.padding_rows), std::to_string(s.running),
                           std::to_string(s.running_at_forward),
                           std::to_string(s.waiting), std::to_string(s.preempted),
                           std::to_string(s.kv_reserved_bytes), std::to_string(s.kv_used_bytes),
                           std::to_string(s.kv_blocks_allocated), std::to_string(s.kv_tokens_stored),
                           std::to_string(s.kv_fragmentation_bytes())});
  }
}

fs::path ResultsWriter::commit(const std::string& extra_provenance) {
  if (committed_) throw std::logic_error("ResultsWriter::commit called twice");
  requests_.close(), steps_.close();
  if (!requests_ || !steps_) throw std::runtime_error(fmt::format("writing '{}' failed", tmp_.string()));

  // summary.csv: the union of config and metric columns in first-seen order; a name that repeats
  // an earlier column's gets a "config." / "metric." prefix so every header is unique.
  std::vector<std::string> header = {"point", "repeat", "run_index", "round"};
  for (const auto& [k, v] : provenance_.columns()) header.push_back(k);
  std::set<std::string> used(header.begin(), header.end());
  std::vector<std::string> config_keys, metric_keys;
  for (const auto& row : rows_) {
    for (const auto& [k, v] : row.config)
      if (std::find(config_keys.begin(), config_keys.end(), k) == config_keys.end()) config_keys.push_back(k);
    for (const auto& [k, v] : row.metrics)
      if (std::find(metric_keys.begin(), metric_keys.end(), k) == metric_keys.end()) metric_keys.push_back(k);
  }
  for (const auto& k : config_keys) header.push_back(used.insert(k).second ? k : "config." + k);
  for (const auto& k : metric_keys) header.push_back(used.insert(k).second ? k : "metric." + k);
  {
    std::ofstream f(tmp_ / "summary.csv", std::ios::binary);
    write_csv_row(f, header);
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const SummaryRow& row = rows_[i];
      std::vector<std::string> cells = {std::to_string(row.point), std::to_string(row.repeat), std::to_string(row.run_index),
                                        std::to_string(row.round)};
      for (const auto& [k, v] : row_provenance_[i]) cells.push_back(v);
      for (const auto& key : config_keys) {
        auto it = std::find_if(row.config.begin(), row.config.end(), [&](const auto& kv) { return kv.first == key; });
        cells.push_back(it == row.config.end() ? "" : it->second);
      }
      for (const auto& key : metric_keys) {
        auto it = std::find_if(row.metrics.begin(), row.metrics.end(), [&](const auto& kv) { return kv.first == key; });
        cells.push_back(it == row.metrics.end() ? "" : format_number(it->second));
      }
      write_csv_row(f, cells);
    }
    f.close();
    if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", (tmp_ / "summary.csv").string()));
  }
  write_text(tmp_ / "config.yaml", opts_.config_yaml);

  run_id_ = pick_run_id();  // an automatic id may have been taken since the constructor
  std::string prov = fmt::format("run_id: {}\nexperiment: {}\nconfig_hash: {}\n", yaml_quote(run_id_),
                                 yaml_quote(opts_.experiment), yaml_quote(config_hash(opts_.config_yaml)));
  for (const auto& [k, v] : provenance_.columns()) prov += fmt::format("{}: {}\n", k, yaml_quote(v));
  prov += extra_provenance;
  write_text(tmp_ / "provenance.yaml", prov);

  const fs::path target = dir_ / run_id_;
  if (fs::exists(target)) {
    if (!opts_.force)
      throw std::runtime_error(fmt::format(
          "results folder '{}' already exists; use --force to replace it or --out to write elsewhere", target.string()));
    // Old aside, new in, old deleted: a failure in between leaves one complete folder in place.
    const fs::path aside = dir_ / fmt::format(".{}.old-{}", run_id_, tag_);
    std::error_code ec;
    fs::remove_all(aside, ec);
    fs::rename(target, aside);
    try {
      fs::rename(tmp_, target);
    } catch (...) {
      fs::rename(aside, target, ec);
      throw;
    }
    fs::remove_all(aside, ec);
  } else {
    fs::rename(tmp_, target);
  }
  committed_ = true;
  return target;
}

}  // namespace ablate
