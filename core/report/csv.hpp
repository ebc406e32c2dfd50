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

}  // namespace ablate
