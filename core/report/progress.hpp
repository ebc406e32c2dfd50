#pragma once
// Progress of a run on stderr: on a terminal one line rewritten in place (at most ~10 times a
// second); otherwise (a log file, CI) a plain line at most every 5 s. Nothing in quiet mode.
#include <chrono>
#include <iosfwd>
#include <string>

namespace ablate {

class Progress {
 public:
  explicit Progress(bool quiet = false, std::string label = "");
  // For tests: write to `os`, as a terminal or not.
  Progress(std::ostream& os, bool terminal, bool quiet = false, std::string label = "");

  void update(long done, long total, double elapsed_s, double tokens_per_s);
  // Prints the last state (if not already shown) and ends the line.
  void finish();

 private:
  void print(bool final);

  std::ostream& os_;
  bool terminal_, quiet_;
  std::string label_;
  long done_ = 0, total_ = 0;
  double elapsed_s_ = 0, tokens_per_s_ = 0;
  bool shown_ = false, pending_ = false;
  std::size_t last_width_ = 0;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace ablate
