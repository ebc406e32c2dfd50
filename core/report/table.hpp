#pragma once
// The summary of a sweep as an aligned markdown table, for the terminal and for pasting.
#include <ostream>
#include <string>
#include <vector>

#include "report/metrics.hpp"

namespace ablate {

// One line per row: point (and repeat when any row has one), the swept config keys, then
// output_throughput, request_throughput, ttft_median_ms, ttft_p99_ms, tpot_median_ms,
// e2el_median_ms, kv_waste (as %), peak_concurrency. swept_keys empty: every config key whose
// value differs between rows.
void print_summary_table(std::ostream& os, const std::vector<SummaryRow>& rows,
                         std::vector<std::string> swept_keys = {});

}  // namespace ablate
