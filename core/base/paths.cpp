#include "base/paths.hpp"

#include <cstdlib>

namespace ablate {

std::filesystem::path project_root() { return std::filesystem::path(ABLATE_SOURCE_DIR); }

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("ABLATE_SHARED"); env && *env) return std::filesystem::path(env);
  return (project_root() / ".." / "shared").lexically_normal();
}

std::string expand_path(const std::string& path) {
  for (const auto& [var, dir] : {std::pair{std::string("${shared}"), shared_dir()},
                                 std::pair{std::string("${root}"), project_root()}}) {
    if (path.rfind(var, 0) == 0) {
      std::string rest = path.substr(var.size());
      while (!rest.empty() && rest.front() == '/') rest.erase(0, 1);
      return (dir / rest).string();
    }
  }
  return path;
}

}  // namespace ablate
