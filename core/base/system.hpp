#pragma once
// The few operating-system chores several layers share: shell commands, and files written whole
// (atomically) or appended durably.
#include <filesystem>
#include <string>

namespace ablate {

// Runs a shell command into `out` (trailing whitespace removed); false when it fails.
bool run_command(const std::string& cmd, std::string& out);
// `s` as one single-quoted shell word.
std::string shell_quote(const std::string& s);

// The whole file; throws std::runtime_error naming it.
std::string read_file(const std::filesystem::path& p);
// Replaces `p` with `text` atomically: a sibling temporary, synced, renamed over it.
void write_file_atomically(const std::filesystem::path& p, const std::string& text);
// Appends `text` in one piece and waits for it to reach the disk (fsync).
void append_file_durably(const std::filesystem::path& p, const std::string& text);

}  // namespace ablate
