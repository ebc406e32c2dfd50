// libFuzzer target for the request-trace CSV reader (core/workload/workload.cpp read_trace).
// Input: one byte start_row (0..15), one byte count (-1..14; -1 = to the end), then the CSV.
// read_trace must return the rows asked for (times non-negative and non-decreasing, lengths
// >= 0) or throw a std::runtime_error. Run by tests/fuzz/run_fuzz.sh trace.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string_view>

#include "fuzz_common.hpp"
#include "workload/workload.hpp"

namespace {

// Known and reported, not yet fixed (tests/fuzz/crashes/trace/year_1167_ns_overflow): a timestamp
// whose year is outside 1678..2261 overflows int64 nanoseconds in parse_timestamp_ns (UB). With
// ABLATE_FUZZ_SKIP_KNOWN=1 such inputs are skipped, so a long run explores past it; CI does not
// set it. Delete this once read_trace refuses or handles those years.
bool known_open_bug(const std::uint8_t* data, std::size_t size) {
  static const bool skip = [] {
    const char* e = std::getenv("ABLATE_FUZZ_SKIP_KNOWN");
    return e && *e == '1';
  }();
  if (!skip) return false;
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  for (std::size_t i = 0; i + 5 <= s.size(); ++i) {
    if (s[i + 4] != '-') continue;
    int y = 0;
    bool digits = true;
    for (std::size_t k = i; k < i + 4; ++k) digits = digits && s[k] >= '0' && s[k] <= '9', y = y * 10 + (s[k] - '0');
    if (digits && (y < 1678 || y > 2261)) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2 || known_open_bug(data, size)) return 0;
  const int start_row = data[0] % 16, count = data[1] % 16 - 1;
  const std::string path = ablate::fuzz::write_input(data + 2, size - 2, ".csv");
  try {
    const auto rows = ablate::read_trace(path, start_row, count);
    if (count >= 0 && rows.size() != static_cast<std::size_t>(count)) ablate::fuzz::violated("read_trace returned a different number of rows");
    double prev = 0;
    for (const auto& r : rows) {
      if (!std::isfinite(r.time_s) || r.time_s < prev || r.prompt_len < 0 || r.output_len < 0)
        ablate::fuzz::violated("read_trace returned a row with a bad time or length");
      prev = r.time_s;
    }
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("read_trace", e);
  }
  return 0;
}
