#pragma once
#include <filesystem>
#include <string>

namespace ablate {

// The project's reference data: $ABLATE_SHARED, else ../shared beside the project root.
std::filesystem::path shared_dir();
// The project root (where CMakeLists.txt is), fixed at build time.
std::filesystem::path project_root();
// Expands "${shared}" and "${root}" at the start of a path from a config.
std::string expand_path(const std::string& path);

}  // namespace ablate
