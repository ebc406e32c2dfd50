#include "experiment/ci_target.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "base/paths.hpp"
#include "report/csv.hpp"

namespace ablate {

namespace {

std::string python() {
  const char* p = std::getenv("ABLATE_PYTHON");
  return p && *p ? p : "/usr/bin/python3";
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// stdout of `cmd`, and its exit status.
std::pair<std::string, int> capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {"", -1};
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  return {out, status};
}

std::string stats_script() { return (project_root() / "plots" / "stats.py").string(); }

}  // namespace

void check_stats_available() {
  const auto [out, status] = capture(shell_quote(python()) + " " + shell_quote(stats_script()) + " --help >/dev/null 2>&1");
  if (status != 0)
    throw std::runtime_error(fmt::format("target_ci needs {} to run {} (Debian's python3-scipy and python3-pandas; set "
                                         "$ABLATE_PYTHON to another interpreter that has them)",
                                         python(), stats_script()));
}

std::map<int, PointInterval> point_intervals(const std::vector<SummaryRow>& rows, const std::string& metric,
                                             const std::filesystem::path& scratch_dir) {
  const auto csv = scratch_dir / "target_ci_rows.csv";
  {
    std::ofstream f(csv, std::ios::binary);
    write_csv_row(f, {"point", "repeat", metric});
    for (const auto& r : rows) {
      const auto it = std::find_if(r.metrics.begin(), r.metrics.end(), [&](const auto& m) { return m.first == metric; });
      if (it == r.metrics.end())
        throw std::runtime_error(fmt::format("target_metric: \"{}\" is not a summary metric", metric));
      write_csv_row(f, {std::to_string(r.point), std::to_string(r.repeat), format_number(it->second)});
    }
    if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", csv.string()));
  }
  const std::string cmd = fmt::format("{} {} ci {} --metric {} --group-by point", shell_quote(python()),
                                      shell_quote(stats_script()), shell_quote(csv.string()), shell_quote(metric));
  const auto [out, status] = capture(cmd);
  std::filesystem::remove(csv);
  if (status != 0) throw std::runtime_error(fmt::format("target_ci: `{}` failed (exit status {})", cmd, status));
  std::map<int, PointInterval> result;
  const YAML::Node doc = YAML::Load(out);  // JSON is YAML
  for (const auto& g : doc["groups"]) {
    PointInterval pi;
    pi.centre = g["centre"].as<double>();
    pi.n = g["n"].as<int>();
    if (g["half_width"] && !g["half_width"].IsNull()) pi.half_width = g["half_width"].as<double>();
    result[g["point"].as<int>()] = pi;
  }
  return result;
}

}  // namespace ablate
