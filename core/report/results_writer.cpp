#include "report/results_writer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "base/system.hpp"
#include "report/csv.hpp"

namespace ablate {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPartialSuffix = ".partial";

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

std::string ms(double seconds) { return format_number(seconds * 1000.0); }

const std::vector<std::string> kRequestColumns = {"point",   "repeat",  "request_id",  "arrival_s",  "queue_time_ms", "ttft_ms",
                                                  "tpot_ms", "e2el_ms", "itl_mean_ms", "prompt_len", "output_len",    "preemptions",
                                                  "cached_prompt_tokens", "conversation", "turn"};
const std::vector<std::string> kStepColumns = {
    "point",         "repeat",      "step",         "start_s",        "wall_s",        "forward_s",
    "device_s",      "batch_size",  "prefill_seqs", "decode_seqs",    "prefill_tokens", "decode_tokens",
    "padding_rows",  "running",     "running_at_forward", "waiting",  "preempted",     "kv_reserved_bytes",
    "kv_used_bytes", "kv_blocks_allocated", "kv_blocks_shared", "kv_tokens_stored", "kv_fragmentation_bytes"};

std::string requests_text(const std::string& p, const std::string& r, const RunRecords& records) {
  std::string out;
  for (const RequestRecord& q : records.requests) {
    double itl_sum = 0;
    for (double g : q.itl_s) itl_sum += g;
    out += csv_row({p, r, std::to_string(q.request_id), format_number(q.arrival_s), ms(q.queue_time()), ms(q.ttft()),
                    q.has_tpot() ? ms(q.tpot()) : "", ms(q.e2el()),
                    q.itl_s.empty() ? "" : ms(itl_sum / static_cast<double>(q.itl_s.size())), std::to_string(q.prompt_len),
                    std::to_string(q.output_len), std::to_string(q.preemptions), std::to_string(q.cached_prompt_tokens),
                    std::to_string(q.conversation), std::to_string(q.turn)});
  }
  return out;
}

std::string steps_text(const std::string& p, const std::string& r, const RunRecords& records) {
  std::string out;
  for (const StepRecord& s : records.steps)
    out += csv_row({p, r, std::to_string(s.step), format_number(s.start_s), format_number(s.wall_s),
                    format_number(s.forward_s), s.device_s ? format_number(*s.device_s) : "", std::to_string(s.batch_size),
                    std::to_string(s.prefill_seqs), std::to_string(s.decode_seqs), std::to_string(s.prefill_tokens),
                    std::to_string(s.decode_tokens), std::to_string(s.padding_rows), std::to_string(s.running),
                    std::to_string(s.running_at_forward), std::to_string(s.waiting), std::to_string(s.preempted),
                    std::to_string(s.kv_reserved_bytes), std::to_string(s.kv_used_bytes),
                    std::to_string(s.kv_blocks_allocated), std::to_string(s.kv_blocks_shared), std::to_string(s.kv_tokens_stored),
                    std::to_string(s.kv_fragmentation_bytes())});
  return out;
}

std::optional<int> to_int(const std::string& s) {
  try {
    std::size_t used = 0;
    const int v = std::stoi(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> read_provenance_file(const fs::path& file) {
  std::vector<std::pair<std::string, std::string>> out;
  YAML::Node doc;
  try {
    doc = YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(fmt::format("'{}' is not a provenance file: {}", file.string(), e.what()));
  }
  if (!doc.IsMap()) throw std::runtime_error(fmt::format("'{}' is not a provenance file", file.string()));
  for (auto it = doc.begin(); it != doc.end(); ++it)
    if (it->second.IsScalar()) out.emplace_back(it->first.Scalar(), it->second.Scalar());
  return out;
}

ResultsWriter::ResultsWriter(ResultsOptions opts, Provenance provenance)
    : opts_(std::move(opts)), provenance_(std::move(provenance)) {
  if (!opts_.resume.empty()) {
    resume_from(opts_.resume);
    return;
  }
  check_name("experiment", opts_.experiment);
  dir_ = opts_.results_root / opts_.experiment;
  if (opts_.run_id.empty()) {
    const std::string stamp = iso8601_utc(std::chrono::system_clock::now());  // YYYY-MM-DDTHH:MM:SSZ
    base_id_ = stamp.substr(0, 4) + stamp.substr(5, 2) + stamp.substr(8, 2) + "-" + stamp.substr(11, 2) +
               stamp.substr(14, 2) + stamp.substr(17, 2) + "-" + config_hash(opts_.config_yaml).substr(0, 8);
  } else {
    check_name("run id", opts_.run_id);
    base_id_ = opts_.run_id;
    const fs::path done = dir_ / base_id_, partial = dir_ / (base_id_ + kPartialSuffix);
    if (!opts_.force && fs::exists(done))
      throw std::runtime_error(fmt::format(
          "results folder '{}' already exists; use --force to replace it or --out to write elsewhere", done.string()));
    if (fs::exists(partial)) {
      if (!opts_.force)
        throw std::runtime_error(fmt::format("an unfinished run of this id is in '{}'; continue it with --resume {} (or "
                                             "--force to start over, --out to write elsewhere)",
                                             partial.string(), partial.string()));
      fs::remove_all(partial);
    }
  }
  fs::create_directories(dir_);
  run_id_ = pick_run_id();
  tmp_ = dir_ / (run_id_ + kPartialSuffix);
  fs::create_directory(tmp_);
  write_file_atomically(tmp_ / "config.yaml", opts_.config_yaml);
  write_provenance("running", opts_.total_units, "");
  append_file_durably(tmp_ / "requests.csv", csv_row(kRequestColumns));
  append_file_durably(tmp_ / "steps.csv", csv_row(kStepColumns));
  if (!opts_.config_columns.empty() && !opts_.metric_columns.empty()) {
    Columns c;
    Metrics m;
    for (const auto& k : opts_.config_columns) c.emplace_back(k, "");
    for (const auto& k : opts_.metric_columns) m.emplace_back(k, 0.0);
    write_headers(c, m);
  }
}

ResultsWriter::~ResultsWriter() {
  if (committed_ || tmp_.empty() || !done_.empty() || !opts_.resume.empty() || interrupted_) return;
  std::error_code ec;  // nothing done: nothing worth keeping
  fs::remove_all(tmp_, ec);
}

std::string ResultsWriter::pick_run_id() const {
  if (!opts_.run_id.empty()) return base_id_;
  const auto taken = [&](const std::string& id) {
    return fs::exists(dir_ / id) || fs::exists(dir_ / (id + kPartialSuffix));
  };
  std::string id = base_id_;
  for (int k = 2; taken(id); ++k) id = fmt::format("{}-{}", base_id_, k);
  return id;
}

void ResultsWriter::write_headers(const Columns& config, const Metrics& metrics) {
  header_ = {"point", "repeat", "run_index", "round"};
  for (const auto& [k, v] : provenance_.columns()) header_.push_back(k);
  std::set<std::string> used(header_.begin(), header_.end());
  config_keys_.clear();
  metric_keys_.clear();
  // A name that repeats an earlier column's gets a "config." / "metric." prefix: every header unique.
  for (const auto& [k, v] : config) config_keys_.push_back(k), header_.push_back(used.insert(k).second ? k : "config." + k);
  for (const auto& [k, v] : metrics) metric_keys_.push_back(k), header_.push_back(used.insert(k).second ? k : "metric." + k);
  if (!fs::exists(tmp_ / "summary.csv")) append_file_durably(tmp_ / "summary.csv", csv_row(header_));
}

void ResultsWriter::add_run(const RunKey& key, const Columns& config, const RunRecords& records, const Metrics& metrics,
                            const std::optional<Provenance>& provenance) {
  if (committed_) throw std::logic_error("ResultsWriter::add_run after commit()");
  if (header_.empty()) write_headers(config, metrics);
  const Columns prov = (provenance ? *provenance : provenance_).columns();
  std::vector<std::string> cells = {std::to_string(key.point), std::to_string(key.repeat), std::to_string(key.run_index),
                                    std::to_string(key.round)};
  for (const auto& [k, v] : prov) cells.push_back(v);
  const auto find = [](const auto& pairs, const std::string& k) {
    return std::find_if(pairs.begin(), pairs.end(), [&](const auto& kv) { return kv.first == k; });
  };
  for (const auto& k : config_keys_) {
    const auto it = find(config, k);
    cells.push_back(it == config.end() ? "" : it->second);
  }
  for (const auto& k : metric_keys_) {
    const auto it = find(metrics, k);
    cells.push_back(it == metrics.end() ? "" : format_number(it->second));
  }
  for (const auto& [k, v] : metrics)
    if (std::find(metric_keys_.begin(), metric_keys_.end(), k) == metric_keys_.end())
      throw std::logic_error(fmt::format("ResultsWriter: metric '{}' is not a summary.csv column", k));
  const std::string p = std::to_string(key.point), r = std::to_string(key.repeat);
  append_file_durably(tmp_ / "requests.csv", requests_text(p, r, records));
  append_file_durably(tmp_ / "steps.csv", steps_text(p, r, records));
  append_file_durably(tmp_ / "summary.csv", csv_row(cells));  // last: the unit is done
  rows_.push_back({key.point, key.repeat, key.run_index, key.round, config, metrics});
  done_.insert({key.point, key.repeat});
  next_run_index_ = std::max(next_run_index_, key.run_index + 1);
}

void ResultsWriter::resume_from(const fs::path& dir_in) {
  const fs::path dir = fs::absolute(dir_in).lexically_normal();
  const std::string name = (dir.has_filename() ? dir : dir.parent_path()).filename().string();
  const fs::path folder = dir.has_filename() ? dir : dir.parent_path();
  if (!fs::is_directory(folder) || !fs::exists(folder / "provenance.yaml") || !fs::exists(folder / "summary.csv"))
    throw std::runtime_error(fmt::format("'{}' is not a run folder (no provenance.yaml and summary.csv)", dir_in.string()));
  std::string status;
  for (const auto& [k, v] : read_provenance_file(folder / "provenance.yaml"))
    if (k == "status") status = v;
  if (status == "complete" || name.size() <= std::strlen(kPartialSuffix) ||
      name.compare(name.size() - std::strlen(kPartialSuffix), std::string::npos, kPartialSuffix) != 0)
    throw std::runtime_error(fmt::format("'{}' is a complete run (status: {}); there is nothing to resume",
                                         dir_in.string(), status.empty() ? "complete" : status));
  tmp_ = folder;
  dir_ = folder.parent_path();
  run_id_ = base_id_ = name.substr(0, name.size() - std::strlen(kPartialSuffix));

  // summary.csv: the units done. Its columns must be this build's.
  std::string text = read_file(tmp_ / "summary.csv");
  std::size_t torn = 0;
  auto records = read_csv_records(text, &torn);
  if (torn < text.size()) {
    fs::resize_file(tmp_ / "summary.csv", torn);
    resume_.repairs.push_back("summary.csv: dropped a torn last line (a unit cut off mid-write)");
  }
  if (records.empty()) throw std::runtime_error(fmt::format("'{}': summary.csv has no header", dir_in.string()));
  if (!opts_.config_columns.empty() || !opts_.metric_columns.empty()) {
    Columns c;
    Metrics m;
    for (const auto& k : opts_.config_columns) c.emplace_back(k, "");
    for (const auto& k : opts_.metric_columns) m.emplace_back(k, 0.0);
    write_headers(c, m);
    if (header_ != records.front().fields)
      throw std::runtime_error(fmt::format("'{}': summary.csv's columns are not the ones this build writes; resume it "
                                           "with the build that started it", dir_in.string()));
  } else {
    throw std::logic_error("ResultsWriter: a resume needs the summary's config and metric columns");
  }
  const std::size_t first_config = 4 + provenance_.columns().size();
  for (std::size_t i = 1; i < records.size(); ++i) {
    const auto& f = records[i].fields;
    if (f.size() != header_.size()) throw std::runtime_error(fmt::format("'{}': summary.csv row {} has {} fields, not {}",
                                                                        dir_in.string(), i + 1, f.size(), header_.size()));
    SummaryRow row;
    row.point = to_int(f[0]).value_or(-1);
    row.repeat = to_int(f[1]).value_or(-1);
    row.run_index = to_int(f[2]).value_or(0);
    row.round = to_int(f[3]).value_or(0);
    for (std::size_t c = 0; c < config_keys_.size(); ++c) row.config.emplace_back(config_keys_[c], f[first_config + c]);
    for (std::size_t m = 0; m < metric_keys_.size(); ++m) {
      const std::string& v = f[first_config + config_keys_.size() + m];
      if (!v.empty()) row.metrics.emplace_back(metric_keys_[m], std::stod(v));
    }
    done_.insert({row.point, row.repeat});
    next_run_index_ = std::max(next_run_index_, row.run_index + 1);
    rows_.push_back(std::move(row));
  }

  // requests.csv and steps.csv: rows of units without a summary row were cut off with their unit.
  for (const char* file : {"requests.csv", "steps.csv"}) {
    const fs::path p = tmp_ / file;
    text = read_file(p);
    records = read_csv_records(text, &torn);
    if (torn < text.size()) resume_.repairs.push_back(fmt::format("{}: dropped a torn last line", file));
    std::string kept;
    std::size_t dropped = 0;
    for (std::size_t i = 0; i < records.size(); ++i) {
      const auto& f = records[i].fields;
      const bool header = i == 0;
      if (header || (f.size() >= 2 && done_.count({to_int(f[0]).value_or(-1), to_int(f[1]).value_or(-1)})))
        kept += csv_row(f);
      else
        ++dropped;
    }
    if (dropped) resume_.repairs.push_back(fmt::format("{}: dropped {} rows of units that did not finish", file, dropped));
    if (dropped || torn < text.size()) write_file_atomically(p, kept);
  }
  resume_.units_done = static_cast<int>(done_.size());
  write_provenance("running", opts_.total_units, "");
}

void ResultsWriter::write_provenance(const std::string& status, int total_units, const std::string& extra) const {
  std::string prov = fmt::format("run_id: {}\nexperiment: {}\nconfig_hash: {}\n", yaml_quote(run_id_),
                                 yaml_quote(opts_.experiment), yaml_quote(config_hash(opts_.config_yaml)));
  for (const auto& [k, v] : provenance_.columns()) prov += fmt::format("{}: {}\n", k, yaml_quote(v));
  prov += fmt::format("status: {}\nunits_done: {}\nunits_total: {}\n", status, done_.size(), total_units);
  prov += extra;
  write_file_atomically(tmp_ / "provenance.yaml", prov);
}

void ResultsWriter::mark_interrupted(int total_units, const std::string& reason) {
  interrupted_ = true;  // kept even with no unit done: the message names it
  write_provenance("interrupted", total_units, fmt::format("interrupted_by: {}\n", yaml_quote(reason)));
}

fs::path ResultsWriter::commit(const std::string& extra_provenance) {
  if (committed_) throw std::logic_error("ResultsWriter::commit called twice");
  if (header_.empty()) write_headers({}, {});  // a run with no unit still has its files
  write_provenance("complete", static_cast<int>(done_.size()), extra_provenance);
  const fs::path target = dir_ / run_id_;
  if (fs::exists(target)) {
    if (!opts_.force)
      throw std::runtime_error(fmt::format(
          "results folder '{}' already exists; use --force to replace it or --out to write elsewhere", target.string()));
    // Old aside, new in, old deleted: a failure in between leaves one complete folder in place.
    const fs::path aside = dir_ / fmt::format(".{}.old-{}", run_id_, ::getpid());
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
