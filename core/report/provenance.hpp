#pragma once
// What produced a result: code version, build, machine, time (shared/reference/metrics.md).
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "report/metrics.hpp"

namespace ablate {

struct Provenance {
  std::string git_commit = "unknown";  // HEAD of project_root(), "unknown" outside a repository
  std::string git_dirty = "unknown";   // "true" when `git status --porcelain` lists anything
  std::string build_commit = "unknown";  // the commit the binary was built from ("-dirty": with local changes)
  std::string ablate_version;
  std::string compiler;
  std::string build_type;
  std::string backend;
  std::string device;                  // the given device name, else the CPU model
  int threads = 0;
  std::string hostname;
  std::string start_time;              // ISO 8601 UTC, e.g. 2024-05-01T12:34:56Z

  // The fields above, in this order, as text (the provenance columns of summary.csv).
  Columns columns() const;
};

// Reads git state (runs git), the build macros, /proc/cpuinfo and the hostname; start_time = now.
Provenance collect_provenance(int threads, const std::string& backend, const std::string& device_name);

// The process's peak resident set size so far (getrusage), in bytes.
std::size_t peak_rss_bytes();

// "YYYY-MM-DDTHH:MM:SSZ".
std::string iso8601_utc(std::chrono::system_clock::time_point t);

// A stable 64-bit hash (FNV-1a) of a resolved config's text, as 16 hex digits.
std::string config_hash(std::string_view text);

}  // namespace ablate
