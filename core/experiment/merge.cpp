// `ablate merge RUN_DIR`: a sharded run's shards/<I>/ folders as one run's CSVs.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "base/system.hpp"
#include "experiment/runner.hpp"
#include "report/csv.hpp"
#include "report/results_writer.hpp"

namespace ablate {

namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> provenance_of(const fs::path& folder) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : read_provenance_file(folder / "provenance.yaml")) m[k] = v;
  return m;
}

int as_int(const std::string& s, const std::string& what) {
  try {
    std::size_t used = 0;
    const int v = std::stoi(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(fmt::format("{}: \"{}\" is not an integer", what, s));
}

}  // namespace

fs::path merge_shards(const fs::path& run_dir, std::ostream& log) {
  const fs::path shards = run_dir / "shards";
  if (!fs::is_directory(shards))
    throw std::invalid_argument(fmt::format("'{}' is not a sharded run folder (no shards/ inside; `ablate run --shard I/N "
                                            "--run-id ID` writes them)", run_dir.string()));
  std::map<int, fs::path> done;
  std::vector<std::string> unfinished;
  for (const auto& e : fs::directory_iterator(shards)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".partial") == 0) {
      unfinished.push_back(name);
      continue;
    }
    if (e.is_directory() && !name.empty() && std::all_of(name.begin(), name.end(), ::isdigit)) done[std::stoi(name)] = e.path();
  }
  if (done.empty() && unfinished.empty()) throw std::invalid_argument(fmt::format("'{}' holds no shards", shards.string()));
  // Every shard knows the count; they must agree, and all must be there and complete.
  int count = -1;
  std::string hash, build;
  std::map<int, std::map<std::string, std::string>> prov;
  for (const auto& [i, dir] : done) {
    auto p = provenance_of(dir);
    if (p["status"] != "complete") unfinished.push_back(std::to_string(i));
    const int n = as_int(p["shards"], (dir / "provenance.yaml").string() + ": shards");
    if (count >= 0 && n != count)
      throw std::invalid_argument(fmt::format("shard {} is one of {} shards, another one of {}: not the same sharded run", i, n, count));
    count = n;
    if (!hash.empty() && p["config_hash"] != hash)
      throw std::invalid_argument(fmt::format("shard {} ran another config (config_hash {} vs {}); refusing to merge", i,
                                              p["config_hash"], hash));
    if (!build.empty() && p["build_commit"] != build)
      throw std::invalid_argument(fmt::format("shard {} was built from {}, another from {}; refusing to merge", i,
                                              p["build_commit"], build));
    hash = p["config_hash"];
    build = p["build_commit"];
    prov[i] = std::move(p);
  }
  if (!unfinished.empty()) {
    std::sort(unfinished.begin(), unfinished.end());
    std::string list;
    for (const auto& u : unfinished) list += (list.empty() ? "" : ", ") + u;
    throw std::invalid_argument(fmt::format("shards not finished: {} (resume each with its `ablate run ... --shard I/N`)", list));
  }
  std::vector<int> missing;
  for (int i = 0; i < count; ++i)
    if (!done.count(i)) missing.push_back(i);
  if (!missing.empty()) {
    std::string list;
    for (int i : missing) list += (list.empty() ? "" : ", ") + std::to_string(i);
    throw std::invalid_argument(fmt::format("shards missing: {} of 0..{}", list, count - 1));
  }

  // The three CSVs, each shard's rows with its shard and host; summary rows in run_index order,
  // the same order a one-process run writes.
  std::size_t units = 0;
  for (const char* file : {"summary.csv", "requests.csv", "steps.csv"}) {
    std::vector<std::string> header;
    std::vector<std::pair<std::pair<int, int>, std::string>> rows;  // ((run_index or seq, order), text)
    int order = 0;
    for (const auto& [i, dir] : done) {
      const auto records = read_csv_records(read_file(dir / file));
      if (records.empty()) throw std::invalid_argument(fmt::format("'{}' is empty", (dir / file).string()));
      if (header.empty()) header = records.front().fields;
      else if (header != records.front().fields)
        throw std::invalid_argument(fmt::format("'{}' has other columns than shard {}'s", (dir / file).string(), done.begin()->first));
      const auto ri = std::find(header.begin(), header.end(), "run_index");
      for (std::size_t r = 1; r < records.size(); ++r) {
        auto f = records[r].fields;
        const int key = ri != header.end() ? as_int(f[static_cast<std::size_t>(ri - header.begin())], file) : 0;
        f.push_back(std::to_string(i));
        f.push_back(prov[i]["hostname"]);
        rows.push_back({{key, order++}, csv_row(f)});
      }
    }
    std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    header.push_back("shard");
    header.push_back("host");
    std::string text = csv_row(header);
    for (const auto& r : rows) text += r.second;
    write_file_atomically(run_dir / file, text);
    if (std::string(file) == "summary.csv") units = rows.size();
    log << fmt::format("{}: {} rows from {} shards\n", file, rows.size(), count);
  }
  write_file_atomically(run_dir / "config.yaml", read_file(done.begin()->second / "config.yaml"));
  std::string p = read_file(done.begin()->second / "provenance.yaml");
  // The merged run's own provenance: the first shard's, without its shard line, plus the hosts.
  std::string merged;
  for (std::size_t b = 0, e; b < p.size(); b = e + 1) {
    e = p.find('\n', b);
    if (e == std::string::npos) e = p.size();
    const std::string line = p.substr(b, e - b);
    if (line.rfind("shard:", 0) == 0 || line.rfind("hostname:", 0) == 0 || line.rfind("units_", 0) == 0) continue;
    merged += line + "\n";
  }
  merged += fmt::format("units_done: {}\nunits_total: {}\nmerged_shards: {}\nhosts:\n", units, units, count);
  for (const auto& [i, pr] : prov) merged += fmt::format("  - {{shard: {}, hostname: \"{}\"}}\n", i, pr.at("hostname"));
  write_file_atomically(run_dir / "provenance.yaml", merged);
  return run_dir;
}

}  // namespace ablate
