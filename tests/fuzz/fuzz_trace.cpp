// libFuzzer target for the request-trace CSV reader (core/workload/workload.cpp read_trace).
// Input: one byte start_row (0..15), one byte count (-1..14; -1 = to the end), then the CSV.
// read_trace must return the rows asked for (times non-negative and non-decreasing, lengths
// >= 0) or throw a std::runtime_error. Run by tests/fuzz/run_fuzz.sh trace.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "fuzz_common.hpp"
#include "workload/workload.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
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
