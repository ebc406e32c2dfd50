#pragma once
// CSV output: RFC 4180 quoting, '\n' line ends, numbers that read back exactly.
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace ablate {

// A field as RFC 4180 writes it: quoted when it holds a comma, a quote, CR or LF, quotes doubled.
std::string csv_quote(std::string_view field);
// Integers as integers; doubles in the shortest form that reads back to the same value (fmt "{}").
// A double holding an integer below 2^53 is written as that integer ("3", "1048576").
std::string format_number(double v);
std::string format_number(long long v);

// Writes one record: the fields quoted as needed, separated by commas, then '\n'.
void write_csv_row(std::ostream& os, const std::vector<std::string>& fields);
// The same record as text.
std::string csv_row(const std::vector<std::string>& fields);

// The records of RFC 4180 text (quoted fields may hold commas, quotes and line breaks), each with
// the byte offset just past its line end. A last record without its line end is torn (a write cut
// short): not returned; *torn_at (when given) is its offset, else text.size().
struct CsvRecord {
  std::vector<std::string> fields;
  std::size_t end = 0;
};
std::vector<CsvRecord> read_csv_records(std::string_view text, std::size_t* torn_at = nullptr);

}  // namespace ablate
