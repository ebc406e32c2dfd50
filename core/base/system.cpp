#include "base/system.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ablate {

namespace fs = std::filesystem;

bool run_command(const std::string& cmd, std::string& out) {
  out.clear();
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return false;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return status == 0;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

namespace {

[[noreturn]] void io_error(const std::string& what, const fs::path& p) {
  throw std::runtime_error("cannot " + what + " '" + p.string() + "': " + std::strerror(errno));
}

void write_all(int fd, const std::string& text, const fs::path& p) {
  for (std::size_t off = 0; off < text.size();) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) io_error("write", p);
    off += static_cast<std::size_t>(n);
  }
}

}  // namespace

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) io_error("read", p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomically(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("create", tmp);
  write_all(fd, text, tmp);
  if (::fsync(fd) != 0) io_error("sync", tmp);
  ::close(fd);
  fs::rename(tmp, p);
}

void append_file_durably(const fs::path& p, const std::string& text) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) io_error("open", p);
  write_all(fd, text, p);
  if (::fsync(fd) != 0) io_error("sync", p);
  ::close(fd);
}

}  // namespace ablate
