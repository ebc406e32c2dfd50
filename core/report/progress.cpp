#include "report/progress.hpp"

#include <iostream>
#include <unistd.h>

#include <fmt/format.h>

namespace ablate {

Progress::Progress(bool quiet, std::string label) : Progress(std::cerr, ::isatty(2) != 0, quiet, std::move(label)) {}

Progress::Progress(std::ostream& os, bool terminal, bool quiet, std::string label)
    : os_(os), terminal_(terminal), quiet_(quiet), label_(std::move(label)) {}

void Progress::update(long done, long total, double elapsed_s, double tokens_per_s) {
  done_ = done, total_ = total, elapsed_s_ = elapsed_s, tokens_per_s_ = tokens_per_s;
  pending_ = true;
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const auto every = terminal_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  if (shown_ && now - last_ < every) return;
  last_ = now;
  print(false);
}

void Progress::finish() {
  if (quiet_) return;
  if (pending_ || (terminal_ && shown_)) print(true);  // on a terminal: the final line, without eta
  shown_ = pending_ = false;
  last_width_ = 0;
}

void Progress::print(bool final) {
  std::string line = label_.empty() ? "" : label_ + ": ";
  line += fmt::format("{}/{} requests", done_, total_);
  if (total_ > 0) line += fmt::format(" ({:.0f}%)", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
  line += fmt::format("  {:.1f} s  {:.1f} tok/s", elapsed_s_, tokens_per_s_);
  if (!final && done_ > 0 && total_ > done_)
    line += fmt::format("  eta {:.0f} s", elapsed_s_ * static_cast<double>(total_ - done_) / static_cast<double>(done_));
  if (terminal_) {
    // Rewrite in place; pad over the rest of a longer previous line.
    const std::size_t width = line.size();
    if (width < last_width_) line.append(last_width_ - width, ' ');
    last_width_ = width;
    os_ << '\r' << line;
    if (final) os_ << '\n';
  } else {
    os_ << line << '\n';
  }
  os_.flush();
  shown_ = true;
  pending_ = false;
}

}  // namespace ablate
