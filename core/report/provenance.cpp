#include "report/provenance.hpp"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include "build_commit.h"  // generated at every build (cmake/BuildCommit.cmake)
#include "base/paths.hpp"
#include "base/system.hpp"

// The build defines these (core/CMakeLists.txt); defaults let a file compile on its own.
#ifndef ABLATE_VERSION
#define ABLATE_VERSION "unknown"
#endif
#ifndef ABLATE_COMPILER
#if defined(__clang__)
#define ABLATE_COMPILER "Clang " __clang_version__
#elif defined(__GNUC__)
#define ABLATE_COMPILER "GNU " __VERSION__
#else
#define ABLATE_COMPILER "unknown"
#endif
#endif
#ifndef ABLATE_BUILD_TYPE
#define ABLATE_BUILD_TYPE "unknown"
#endif

namespace ablate {

namespace {


std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

}  // namespace

Columns Provenance::columns() const {
  return {{"git_commit", git_commit},   {"git_dirty", git_dirty},   {"build_commit", build_commit},
          {"ablate_version", ablate_version},
          {"compiler", compiler},       {"build_type", build_type}, {"backend", backend},
          {"device", device},           {"threads", std::to_string(threads)},
          {"hostname", hostname},       {"start_time", start_time}};
}

Provenance collect_provenance(int threads, const std::string& backend, const std::string& device_name) {
  Provenance p;
  const std::string git = "git -C " + shell_quote(project_root().string());
  std::string out;
  if (run_command(git + " rev-parse HEAD 2>/dev/null", out) && !out.empty()) {
    p.git_commit = out;
    if (run_command(git + " status --porcelain 2>/dev/null", out)) p.git_dirty = out.empty() ? "false" : "true";
  }
  p.build_commit = ABLATE_BUILD_COMMIT;
  p.ablate_version = ABLATE_VERSION;
  p.compiler = ABLATE_COMPILER;
  p.build_type = ABLATE_BUILD_TYPE;
  p.backend = backend;
  p.device = device_name.empty() ? cpu_model() : device_name;
  p.threads = threads;
  char host[256] = {};
  p.hostname = ::gethostname(host, sizeof host - 1) == 0 ? host : "unknown";
  p.start_time = iso8601_utc(std::chrono::system_clock::now());
  return p;
}

std::size_t peak_rss_bytes() {
  rusage u{};
  if (::getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<std::size_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

std::string iso8601_utc(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string config_hash(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ULL;
  return fmt::format("{:016x}", h);
}

}  // namespace ablate
