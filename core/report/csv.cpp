#include "report/csv.hpp"

#include <cmath>

#include <fmt/format.h>

namespace ablate {

std::string csv_quote(std::string_view field) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(field);
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out += '"';
    out += c;
  }
  return out += '"';
}

std::string format_number(double v) {
  if (std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 9007199254740992.0)
    return fmt::format("{}", static_cast<long long>(v));
  return fmt::format("{}", v);
}

std::string format_number(long long v) { return fmt::format("{}", v); }

void write_csv_row(std::ostream& os, const std::vector<std::string>& fields) {
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) os << ',';
    os << csv_quote(fields[i]);
  }
  os << '\n';
}

}  // namespace ablate
