#include "report/table.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace ablate {

namespace {

std::string config_value(const SummaryRow& row, const std::string& key) {
  for (const auto& [k, v] : row.config)
    if (k == key) return v;
  return "";
}

// Three significant figures or more, never scientific: 1234.5 -> 1234.5, 12.345 -> 12.35, 0.01234 -> 0.0123.
std::string readable(double v) {
  const double a = std::fabs(v);
  if (a >= 100 || v == 0) return fmt::format("{:.1f}", v);
  if (a >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3g}", v);
}

}  // namespace

void print_summary_table(std::ostream& os, const std::vector<SummaryRow>& rows, std::vector<std::string> swept_keys) {
  if (swept_keys.empty()) {
    for (const auto& row : rows)
      for (const auto& kv : row.config)  // (no structured binding: clang 14 cannot capture one)
        if (std::find(swept_keys.begin(), swept_keys.end(), kv.first) == swept_keys.end() &&
            std::any_of(rows.begin(), rows.end(), [&](const SummaryRow& r) { return config_value(r, kv.first) != kv.second; }))
          swept_keys.push_back(kv.first);
  }
  // A swept map (sweep: {kv: [{layout: ...}, ...]}) is shown as its leaf keys that vary.
  std::vector<std::string> leaves;
  for (const auto& k : swept_keys) {
    if (rows.empty() || std::any_of(rows.front().config.begin(), rows.front().config.end(),
                                    [&](const auto& c) { return c.first == k; })) {
      leaves.push_back(k);
      continue;
    }
    for (const auto& c : rows.front().config)
      if (c.first.rfind(k + ".", 0) == 0 && std::find(leaves.begin(), leaves.end(), c.first) == leaves.end() &&
          std::any_of(rows.begin(), rows.end(), [&](const SummaryRow& r) { return config_value(r, c.first) != c.second; }))
        leaves.push_back(c.first);
  }
  swept_keys = std::move(leaves);
  const bool repeats = std::any_of(rows.begin(), rows.end(), [](const SummaryRow& r) { return r.repeat > 0; });

  struct Col {
    std::string header;
    bool numeric;
  };
  std::vector<Col> cols = {{"point", true}};
  if (repeats) cols.push_back({"repeat", true});
  for (const auto& k : swept_keys) {  // numbers right-aligned, text left-aligned
    const bool numeric = std::all_of(rows.begin(), rows.end(), [&](const SummaryRow& r) {
      const std::string v = config_value(r, k);
      double x;
      return !v.empty() && std::from_chars(v.data(), v.data() + v.size(), x).ptr == v.data() + v.size();
    });
    cols.push_back({k, numeric});
  }
  const std::pair<const char*, const char*> headline[] = {
      {"output_throughput", "out tok/s"},  {"request_throughput", "req/s"},   {"ttft_median_ms", "TTFT p50 ms"},
      {"ttft_p99_ms", "TTFT p99 ms"},      {"tpot_median_ms", "TPOT p50 ms"}, {"e2el_median_ms", "E2EL p50 ms"},
      {"kv_waste", "KV waste"},            {"peak_concurrency", "peak conc."}};
  for (const auto& [name, header] : headline) cols.push_back({header, true});

  std::vector<std::vector<std::string>> cells;
  for (const auto& row : rows) {
    std::vector<std::string> line = {std::to_string(row.point)};
    if (repeats) line.push_back(std::to_string(row.repeat));
    for (const auto& k : swept_keys) line.push_back(config_value(row, k));
    for (const auto& [name, header] : headline) {
      const double v = metric(row.metrics, name);
      const std::string n = name;
      line.push_back(n == "kv_waste" ? fmt::format("{:.1f}%", 100 * v)
                     : n == "peak_concurrency" ? fmt::format("{}", std::llround(v))
                     : readable(v));
    }
    cells.push_back(std::move(line));
  }

  std::vector<std::size_t> width(cols.size(), 3);
  for (std::size_t c = 0; c < cols.size(); ++c) {
    width[c] = std::max(width[c], cols[c].header.size());
    for (const auto& line : cells) width[c] = std::max(width[c], line[c].size());
  }
  auto print_line = [&](auto cell) {
    os << '|';
    for (std::size_t c = 0; c < cols.size(); ++c) os << ' ' << cell(c) << " |";
    os << '\n';
  };
  auto pad = [&](const std::string& s, std::size_t c) {
    return cols[c].numeric ? fmt::format("{:>{}}", s, width[c]) : fmt::format("{:<{}}", s, width[c]);
  };
  print_line([&](std::size_t c) { return pad(cols[c].header, c); });
  print_line([&](std::size_t c) {
    return cols[c].numeric ? std::string(width[c] - 1, '-') + ":" : std::string(width[c], '-');
  });
  for (const auto& line : cells) print_line([&](std::size_t c) { return pad(line[c], c); });
}

}  // namespace ablate
