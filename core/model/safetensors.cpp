#include "model/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/gguf.hpp"  // fp16_to_float, bf16_to_float

namespace ablate {

namespace {

// The safetensors library's own cap on the header (MAX_HEADER_SIZE): a larger length is corrupt.
constexpr std::uint64_t kMaxHeader = 100'000'000;
// Real headers nest 3 deep ({name: {shape: [..]}}); a cap keeps hostile input from costing stack.
constexpr int kMaxDepth = 8;

// Bytes per element of each safetensors dtype (the format's list); fp32 conversion exists for
// the first three.
std::uint64_t dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "BOOL" || d == "U8" || d == "I8" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SafetensorsError(fmt::format("{}: cannot open safetensors file: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw SafetensorsError(fmt::format("{}: not a regular file", path));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw SafetensorsError(fmt::format("{}: empty file, not a safetensors file", path));
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw SafetensorsError(fmt::format("{}: mmap failed: {}", path, std::strerror(errno)));
  map_ = m;
  data_ = static_cast<const std::uint8_t*>(m);
  try {
    parse();
  } catch (...) {
    ::munmap(map_, size_);
    throw;
  }
}

SafetensorsFile::SafetensorsFile(const void* data, std::size_t size, std::string name)
    : path_(std::move(name)), data_(static_cast<const std::uint8_t*>(data)), size_(size) {
  parse();
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

void SafetensorsFile::parse() {
  const auto fail = [&](const std::string& field, const std::string& what) {
    throw SafetensorsError(fmt::format("{}: safetensors {}: {}", path_, field, what));
  };
  if (size_ < 8) fail("header length", fmt::format("the file has {} bytes, fewer than the 8 of the length (truncated?)", size_));
  std::uint64_t n = 0;
  std::memcpy(&n, data_, 8);  // little-endian, as every host this builds for
  if (n > kMaxHeader) fail("header length", fmt::format("{} bytes is above the format's limit of {} (not a safetensors file?)", n, kMaxHeader));
  if (n > size_ - 8) fail("header length", fmt::format("{} bytes, but only {} follow the length (truncated?)", n, size_ - 8));
  data_offset_ = 8 + n;
  const auto* begin = reinterpret_cast<const char*>(data_ + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(begin, begin + n, [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
      if (depth > kMaxDepth) throw SafetensorsError(fmt::format("JSON nested deeper than {}", kMaxDepth));
      return true;
    });
  } catch (const SafetensorsError& e) {
    fail("header", e.what());
  } catch (const nlohmann::json::exception& e) {
    fail("header", fmt::format("not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) fail("header", fmt::format("is a JSON {}, expected an object of tensors", header.type_name()));
  const std::uint64_t data_size = size_ - data_offset_;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail("__metadata__", "is not an object");
      for (const auto& [k, v] : info.items())
        if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    const std::string field = fmt::format("tensor \"{}\"", name);
    if (!info.is_object()) fail(field, fmt::format("is a JSON {}, expected {{dtype, shape, data_offsets}}", info.type_name()));
    SafetensorsTensor t;
    t.name = name;
    const auto dt = info.find("dtype");
    if (dt == info.end() || !dt->is_string()) fail(field + ".dtype", "missing or not a string");
    t.dtype = dt->get<std::string>();
    const std::uint64_t es = dtype_size(t.dtype);
    if (es == 0)
      fail(field + ".dtype", fmt::format("\"{}\" is not a safetensors dtype (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, ...)", t.dtype));
    const auto sh = info.find("shape");
    if (sh == info.end() || !sh->is_array() || sh->size() > 8) fail(field + ".shape", "missing, not an array, or more than 8 dimensions");
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(field + ".shape", fmt::format("{} is not a non-negative integer", d.dump()));
      const auto v = d.get<std::uint64_t>();
      // Every element takes at least a byte of the file: larger shapes are corrupt, and the
      // product cannot overflow.
      if (v != 0 && t.n_elements > data_size / v) fail(field + ".shape", fmt::format("{} elements cannot fit in the {} data bytes", sh->dump(), data_size));
      t.shape.push_back(v);
      t.n_elements *= v;
    }
    const auto off = info.find("data_offsets");
    if (off == info.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(field + ".data_offsets", "missing or not two non-negative integers [begin, end]");
    t.begin = (*off)[0].get<std::uint64_t>();
    t.end = (*off)[1].get<std::uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      fail(field + ".data_offsets", fmt::format("[{}, {}) is not a range within the {} data bytes after the header (truncated?)",
                                                t.begin, t.end, data_size));
    if (t.end - t.begin != t.n_elements * es)
      fail(field + ".data_offsets", fmt::format("[{}, {}) holds {} bytes, but shape {} of {} needs {}", t.begin, t.end,
                                                t.end - t.begin, sh->dump(), t.dtype, t.n_elements * es));
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
  // Tensors must not share bytes (the format forbids it; an overlap means a corrupt header).
  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end && by_offset[i]->begin != by_offset[i]->end)
      fail(fmt::format("tensor \"{}\".data_offsets", by_offset[i]->name),
           fmt::format("[{}, {}) overlaps tensor \"{}\" [{}, {})", by_offset[i]->begin, by_offset[i]->end, by_offset[i - 1]->name,
                       by_offset[i - 1]->begin, by_offset[i - 1]->end));
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> SafetensorsFile::to_float(const SafetensorsTensor& t) const {
  const std::uint8_t* src = data_ + data_offset_ + t.begin;  // range checked in parse()
  const std::size_t n = static_cast<std::size_t>(t.n_elements);
  std::vector<float> out(n);
  const auto u16 = [src](std::size_t i) {
    std::uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    return v;
  };
  if (t.dtype == "F32") {
    std::memcpy(out.data(), src, n * sizeof(float));
  } else if (t.dtype == "F16") {
#pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (std::size_t i = 0; i < n; ++i) out[i] = fp16_to_float(u16(i));
  } else if (t.dtype == "BF16") {
#pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (std::size_t i = 0; i < n; ++i) out[i] = bf16_to_float(u16(i));
  } else {
    throw SafetensorsError(fmt::format("{}: tensor \"{}\" has dtype {}, which is not supported; supported: F32, F16, BF16",
                                       path_, t.name, t.dtype));
  }
  return out;
}

}  // namespace ablate
