#pragma once
// Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <set>
#include <string>
#include <typeinfo>

namespace ablate::fuzz {

// The readers under test take a path: the input is written to one file per process (in
// /dev/shm when there is one), overwritten for every input; `suffix` picks the reader's format.
inline std::string write_input(const std::uint8_t* data, std::size_t size, const std::string& suffix) {
  static const std::string dir = [] {
    if (access("/dev/shm", W_OK) == 0) return std::string("/dev/shm");
    const char* t = std::getenv("TMPDIR");
    return std::string(t && *t ? t : "/tmp");
  }();
  const std::string path = dir + "/ablate_fuzz_" + std::to_string(getpid()) + suffix;
  struct Remove {  // at exit (libFuzzer ends a run with exit()); a crashed process leaves its files
    std::set<std::string> paths;
    ~Remove() {
      for (const auto& p : paths) std::remove(p.c_str());
    }
  };
  static Remove remove_at_exit;
  remove_at_exit.paths.insert(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// An exception of a type the reader does not promise: the harness stops with a report
// (libFuzzer saves the input as crash-*).
[[noreturn]] inline void unexpected(const char* reader, const std::exception& e) {
  std::fprintf(stderr, "fuzz harness: %s let an unexpected exception escape: %s: %s\n", reader, typeid(e).name(), e.what());
  std::abort();
}

[[noreturn]] inline void violated(const char* what) {
  std::fprintf(stderr, "fuzz harness: property violated: %s\n", what);
  std::abort();
}

}  // namespace ablate::fuzz
