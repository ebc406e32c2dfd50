#include "experiment/ci_target.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "base/paths.hpp"
#include "base/system.hpp"
#include "report/csv.hpp"

namespace ablate {

namespace {

std::string python() {
  const char* p = std::getenv("ABLATE_PYTHON");
  return p && *p ? p : "/usr/bin/python3";
}

std::string stats_script() { return (project_root() / "plots" / "stats.py").string(); }

}  // namespace

void check_stats_available() {
  std::string out;
  if (!run_command(shell_quote(python()) + " " + shell_quote(stats_script()) + " --help >/dev/null 2>&1", out))
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
  std::string out;
  const bool ok = run_command(cmd, out);
  std::filesystem::remove(csv);
  if (!ok) throw std::runtime_error(fmt::format("target_ci: `{}` failed", cmd));
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
