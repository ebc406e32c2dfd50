#pragma once
// A reader for Hugging Face's safetensors files: an 8-byte little-endian header length, a JSON
// header ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then
// the tensors' bytes. The header is parsed with nlohmann-json; the file is memory-mapped.
//
// Every length, offset and shape read from the file is checked before use: a truncated or
// malformed file throws SafetensorsError naming the file and the field, never reads out of
// bounds (tests/fuzz/fuzz_safetensors.cpp drives the parser with libFuzzer).
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ablate {

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SafetensorsTensor {
  std::string name;
  std::string dtype;                  // as written: "F32", "BF16", ...
  std::vector<std::uint64_t> shape;   // outermost first (row-major, as PyTorch)
  std::uint64_t begin = 0, end = 0;   // byte range within the data section
  std::uint64_t n_elements = 1;
};

class SafetensorsFile {
 public:
  // Maps and parses `path` (the header; tensor ranges are checked to lie inside the file).
  explicit SafetensorsFile(const std::string& path);
  // Parses bytes already in memory (not copied; must outlive the object); `name` stands in for the
  // path in errors. For the fuzzer and tests.
  SafetensorsFile(const void* data, std::size_t size, std::string name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;
  // The tensor's values as fp32 (F32, F16, BF16; any other dtype throws, naming the tensor).
  std::vector<float> to_float(const SafetensorsTensor& t) const;
  // The tensor's bytes as stored (little-endian, row-major); valid while the file is.
  const std::uint8_t* data(const SafetensorsTensor& t) const { return data_ + data_offset_ + t.begin; }

 private:
  void parse();
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;  // owned mapping (nullptr when parsing the caller's memory)
  std::uint64_t data_offset_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace ablate
