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

std::string csv_row(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += csv_quote(fields[i]);
  }
  return out += '\n';
}

std::vector<CsvRecord> read_csv_records(std::string_view text, std::size_t* torn_at) {
  std::vector<CsvRecord> out;
  CsvRecord rec;
  std::string field;
  bool quoted = false, field_started = false;
  std::size_t i = 0;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"' && !field_started) {
      quoted = field_started = true;
    } else if (c == ',') {
      rec.fields.push_back(std::move(field));
      field.clear();
      field_started = false;
    } else if (c == '\n') {
      if (!field.empty() && field.back() == '\r') field.pop_back();
      rec.fields.push_back(std::move(field));
      field.clear();
      field_started = false;
      rec.end = i + 1;
      out.push_back(std::move(rec));
      rec = CsvRecord{};
    } else {
      field += c;
      field_started = true;
    }
  }
  const std::size_t last_end = out.empty() ? 0 : out.back().end;
  if (torn_at) *torn_at = last_end < text.size() ? last_end : text.size();
  return out;
}

}  // namespace ablate
