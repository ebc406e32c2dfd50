#include "model/gguf.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/hf_checkpoint.hpp"
#include "model/weights.hpp"

namespace ablate {

namespace {

constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr std::uint64_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;


const char* value_type_name(std::uint32_t t) {
  static const char* names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                "bool",  "string", "array", "uint64", "int64", "float64"};
  return t < 13 ? names[t] : "unknown";
}

// Reads little-endian values from [data, data + size) with a running offset; every read is
// bounds-checked and a failure names the file, the field and the offset.
class Cursor {
 public:
  Cursor(const std::uint8_t* data, std::size_t size, const std::string& path) : d_(data), n_(size), path_(path) {}
  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return n_ - pos_; }

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw GgufError(fmt::format("{}: GGUF field {} at offset {}: {}", path_, field, pos_, what));
  }
  void need(std::uint64_t bytes, const std::string& field) const {
    if (bytes > remaining())
      fail(field, fmt::format("needs {} bytes but the file ends after {} (file is {} bytes; truncated?)", bytes,
                              remaining(), n_));
  }
  template <class T>
  T get(const std::string& field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const std::string& field) {
    const auto len = get<std::uint64_t>(field + " (string length)");
    need(len, field);
    std::string s(reinterpret_cast<const char*>(d_ + pos_), static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }
  // Element `index` of a string array: the field name is only built for an error.
  std::string str_at(const std::string& field, std::uint64_t index) {
    std::uint64_t len = 0;
    if (remaining() < 8 || (std::memcpy(&len, d_ + pos_, 8), len > remaining() - 8)) return str(fmt::format("{}[{}]", field, index));
    pos_ += 8;
    std::string s(reinterpret_cast<const char*>(d_ + pos_), static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }
  void skip(std::uint64_t bytes, const std::string& field) {
    need(bytes, field);
    pos_ += static_cast<std::size_t>(bytes);
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
  std::size_t pos_ = 0;
  const std::string& path_;
};

std::uint64_t scalar_size(std::uint32_t t) {
  switch (static_cast<GgufType>(t)) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

// Reads one scalar of type t into v (i/u/f/b set as they apply).
void read_scalar(Cursor& c, std::uint32_t t, const std::string& field, GgufValue& v) {
  const auto set_int = [&](std::int64_t x) { v.i = x; v.u = static_cast<std::uint64_t>(x); v.f = static_cast<double>(x); };
  const auto set_uint = [&](std::uint64_t x) { v.u = x; v.i = static_cast<std::int64_t>(x); v.f = static_cast<double>(x); };
  switch (static_cast<GgufType>(t)) {
    case GgufType::U8: set_uint(c.get<std::uint8_t>(field)); break;
    case GgufType::I8: set_int(c.get<std::int8_t>(field)); break;
    case GgufType::U16: set_uint(c.get<std::uint16_t>(field)); break;
    case GgufType::I16: set_int(c.get<std::int16_t>(field)); break;
    case GgufType::U32: set_uint(c.get<std::uint32_t>(field)); break;
    case GgufType::I32: set_int(c.get<std::int32_t>(field)); break;
    case GgufType::U64: set_uint(c.get<std::uint64_t>(field)); break;
    case GgufType::I64: set_int(c.get<std::int64_t>(field)); break;
    case GgufType::F32: v.f = c.get<float>(field); break;
    case GgufType::F64: v.f = c.get<double>(field); break;
    case GgufType::Bool: {
      const auto b = c.get<std::uint8_t>(field);
      if (b > 1) c.fail(field, fmt::format("bool value {} is neither 0 nor 1", b));
      v.b = b != 0;
      v.i = v.u = b;
      break;
    }
    default: c.fail(field, fmt::format("unknown value type {}", t));
  }
}

void read_value(Cursor& c, std::uint32_t t, const std::string& field, GgufValue& v, int depth) {
  v.type = static_cast<GgufType>(t);
  if (static_cast<GgufType>(t) == GgufType::String) {
    v.s = c.str(field);
    return;
  }
  if (static_cast<GgufType>(t) != GgufType::Array) {
    read_scalar(c, t, field, v);
    return;
  }
  if (depth >= kMaxArrayDepth) c.fail(field, fmt::format("arrays nested deeper than {}", kMaxArrayDepth));
  const auto et = c.get<std::uint32_t>(field + " (array element type)");
  const auto n = c.get<std::uint64_t>(field + " (array length)");
  v.elem_type = static_cast<GgufType>(et);
  v.count = n;
  const auto es = scalar_size(et);
  const bool is_string = static_cast<GgufType>(et) == GgufType::String;
  const bool is_array = static_cast<GgufType>(et) == GgufType::Array;
  if (es == 0 && !is_string && !is_array) c.fail(field, fmt::format("unknown array element type {}", et));
  // Each element takes at least this many bytes: a count beyond the file is rejected before
  // anything is allocated.
  const std::uint64_t min_bytes = is_string ? 8 : is_array ? 12 : es;
  if (n > c.remaining() / min_bytes)
    c.fail(field, fmt::format("array of {} {} elements does not fit in the {} bytes left", n, value_type_name(et),
                              c.remaining()));
  if (is_string) {
    v.strs.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t k = 0; k < n; ++k) v.strs.push_back(c.str_at(field, k));
  } else if (is_array) {
    for (std::uint64_t k = 0; k < n; ++k) {
      GgufValue inner;
      read_value(c, et, fmt::format("{}[{}]", field, k), inner, depth + 1);
    }
  } else {
    const bool fl = static_cast<GgufType>(et) == GgufType::F32 || static_cast<GgufType>(et) == GgufType::F64;
    if (fl) v.floats.reserve(static_cast<std::size_t>(n));
    else v.ints.reserve(static_cast<std::size_t>(n));
    GgufValue x;
    for (std::uint64_t k = 0; k < n; ++k) {
      read_scalar(c, et, field, x);
      if (fl) v.floats.push_back(x.f);
      else v.ints.push_back(x.i);
    }
  }
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw GgufError(fmt::format("{}: cannot open GGUF file: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw GgufError(fmt::format("{}: not a regular file", path));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw GgufError(fmt::format("{}: empty file, not a GGUF checkpoint", path));
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw GgufError(fmt::format("{}: mmap failed: {}", path, std::strerror(errno)));
  map_ = m;
  data_ = static_cast<const std::uint8_t*>(m);
  try {
    parse();
  } catch (...) {
    ::munmap(map_, size_);
    throw;
  }
}

GgufFile::GgufFile(const void* data, std::size_t size, std::string name)
    : path_(std::move(name)), data_(static_cast<const std::uint8_t*>(data)), size_(size) {
  parse();
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(map_, size_);
}

void GgufFile::parse() {
  Cursor c(data_, size_, path_);
  const auto magic = c.get<std::uint32_t>("magic");
  if (magic != kMagic)
    throw GgufError(fmt::format("{}: not a GGUF file (magic {:08x}, expected \"GGUF\")", path_, magic));
  version_ = c.get<std::uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    throw GgufError(fmt::format("{}: GGUF version {} is not supported (2 or 3)", path_, version_));
  const auto n_tensors = c.get<std::uint64_t>("tensor_count");
  const auto n_kv = c.get<std::uint64_t>("metadata_kv_count");
  // Smallest possible entries: key (8 + 1) + type (4) + 1-byte value; tensor info 8+1+4+8+4+8.
  if (n_kv > c.remaining() / 14)
    c.fail("metadata_kv_count", fmt::format("{} entries cannot fit in the {} bytes left (truncated?)", n_kv, c.remaining()));
  for (std::uint64_t k = 0; k < n_kv; ++k) {
    const std::string kf = fmt::format("metadata[{}]", k);
    std::string key = c.str(kf + ".key");
    if (key.empty()) c.fail(kf + ".key", "empty key");
    const std::string field = fmt::format("{} ({})", kf, key);
    const auto t = c.get<std::uint32_t>(field + ".type");
    GgufValue v;
    read_value(c, t, field, v, 0);
    if (!meta_.emplace(std::move(key), std::move(v)).second) c.fail(field, "key given twice");
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32 && a->type != GgufType::U64 && a->type != GgufType::I32)
      throw GgufError(fmt::format("{}: general.alignment has type {}, expected uint32", path_,
                                  value_type_name(static_cast<std::uint32_t>(a->type))));
    if (a->u == 0 || a->u > (1u << 20) || (a->u & (a->u - 1)) != 0)
      throw GgufError(fmt::format("{}: general.alignment = {} is not a power of two in 1..2^20", path_, a->u));
    alignment_ = a->u;
  }
  if (n_tensors > c.remaining() / 33)
    c.fail("tensor_count", fmt::format("{} tensor infos cannot fit in the {} bytes left (truncated?)", n_tensors, c.remaining()));
  tensors_.reserve(static_cast<std::size_t>(n_tensors));
  for (std::uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    const std::string tf = fmt::format("tensor_infos[{}]", k);
    t.name = c.str(tf + ".name");
    const std::string f = fmt::format("{} ({})", tf, t.name);
    const auto n_dims = c.get<std::uint32_t>(f + ".n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) c.fail(f + ".n_dims", fmt::format("{} dimensions; allowed 1..{}", n_dims, kMaxDims));
    t.n_elements = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = c.get<std::uint64_t>(fmt::format("{}.dims[{}]", f, d));
      if (ne == 0 || ne > (std::uint64_t{1} << 40) || t.n_elements > (std::uint64_t{1} << 50) / ne)
        c.fail(fmt::format("{}.dims[{}]", f, d), fmt::format("dimension {} is 0 or too large", ne));
      t.dims.push_back(ne);
      t.n_elements *= ne;
    }
    t.type = c.get<std::uint32_t>(f + ".type");
    const GgmlTypeTraits* tt = ggml_type_traits(t.type);
    if (!tt) c.fail(f + ".type", fmt::format("unknown ggml tensor type {}", t.type));
    if (t.dims[0] % tt->block != 0)
      c.fail(f + ".dims[0]", fmt::format("row length {} is not a multiple of {}'s block size {}", t.dims[0], tt->name, tt->block));
    t.n_bytes = t.n_elements / tt->block * tt->block_bytes;
    t.offset = c.get<std::uint64_t>(f + ".offset");
    if (t.offset % alignment_ != 0)
      c.fail(f + ".offset", fmt::format("offset {} is not a multiple of the alignment {}", t.offset, alignment_));
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) c.fail(f + ".name", "tensor name given twice");
    tensors_.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  const std::uint64_t end_infos = c.pos();
  data_offset_ = (end_infos + alignment_ - 1) / alignment_ * alignment_;
  for (std::size_t k = 0; k < tensors_.size(); ++k) {
    const auto& t = tensors_[k];
    const std::uint64_t avail = data_offset_ <= size_ ? size_ - data_offset_ : 0;
    if (t.offset > avail || t.n_bytes > avail - t.offset)
      throw GgufError(fmt::format("{}: GGUF field tensor_infos[{}] ({}).offset: data [{}, {}) of the data section "
                                  "(which starts at {}) runs past the end of the file ({} bytes; truncated?)",
                                  path_, k, t.name, t.offset, t.offset + t.n_bytes, data_offset_, size_));
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = meta_.find(key);
  return it == meta_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) throw GgufError(fmt::format("{}: GGUF metadata key {} is missing", path_, key));
  if (v->type != GgufType::String)
    throw GgufError(fmt::format("{}: GGUF metadata key {} has type {}, expected string", path_, key,
                                value_type_name(static_cast<std::uint32_t>(v->type))));
  return v->s;
}

std::optional<std::int64_t> GgufFile::get_int_opt(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_int_type(v->type))
    throw GgufError(fmt::format("{}: GGUF metadata key {} has type {}, expected an integer", path_, key,
                                value_type_name(static_cast<std::uint32_t>(v->type))));
  if (v->type == GgufType::U64 && v->u > static_cast<std::uint64_t>(INT64_MAX))
    throw GgufError(fmt::format("{}: GGUF metadata key {} = {} is too large", path_, key, v->u));
  return v->i;
}

std::int64_t GgufFile::get_int(const std::string& key) const {
  if (auto v = get_int_opt(key)) return *v;
  throw GgufError(fmt::format("{}: GGUF metadata key {} is missing", path_, key));
}

std::optional<double> GgufFile::get_float_opt(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufType::F32 && v->type != GgufType::F64 && !is_int_type(v->type))
    throw GgufError(fmt::format("{}: GGUF metadata key {} has type {}, expected a number", path_, key,
                                value_type_name(static_cast<std::uint32_t>(v->type))));
  return v->f;
}

double GgufFile::get_float(const std::string& key) const {
  if (auto v = get_float_opt(key)) return *v;
  throw GgufError(fmt::format("{}: GGUF metadata key {} is missing", path_, key));
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::Bool)
    throw GgufError(fmt::format("{}: GGUF metadata key {} has type {}, expected bool", path_, key,
                                value_type_name(static_cast<std::uint32_t>(v->type))));
  return v->b;
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) throw GgufError(fmt::format("{}: GGUF metadata key {} is missing", path_, key));
  if (v->type != GgufType::Array || v->elem_type != GgufType::String)
    throw GgufError(fmt::format("{}: GGUF metadata key {} is not an array of strings", path_, key));
  return v->strs;
}

const std::uint8_t* GgufFile::tensor_data(const GgufTensorInfo& t) const {
  return data_ + data_offset_ + t.offset;  // range checked in parse()
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& t) const {
  const GgmlTypeTraits* tt = ggml_type_traits(t.type);
  if (!tt || !tt->decoded)
    throw GgufError(fmt::format("{}: tensor {} has type {}, which is not supported; supported: {}", path_, t.name,
                                ggml_type_name(t.type), ggml_decoded_type_names()));
  std::vector<float> out(static_cast<std::size_t>(t.n_elements));
  const std::uint8_t* src = tensor_data(t);
  // Rows are independent: split the blocks among threads.
  const std::size_t row = static_cast<std::size_t>(t.dims[0]);
  const std::size_t rows = static_cast<std::size_t>(t.n_elements) / row;
  const std::size_t row_bytes = row / tt->block * tt->block_bytes;
#pragma omp parallel for schedule(static) if (t.n_elements >= (1u << 16))
  for (std::size_t r = 0; r < rows; ++r) dequantize_row(t.type, src + r * row_bytes, out.data() + r * row, row);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The llama and qwen2 architectures (qwen2: the llama layout plus Q/K/V biases, and Q/K rows in
// Hugging Face's order, which llama.cpp's converter leaves unpermuted for its NEOX-style RoPE)

ModelShape gguf_shape(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2")
    throw GgufError(fmt::format("{}: architecture \"{}\" is not supported; supported: llama, qwen2", f.path(), arch));
  const auto key = [&arch](const char* k) { return arch + "." + k; };
  const auto bad = [&](const std::string& k, long long v, const std::string& why) {
    return GgufError(fmt::format("{}: GGUF metadata {} = {} is not valid ({})", f.path(), k, v, why));
  };
  const auto geti = [&](const std::string& k, long long lo, long long hi) {
    const auto v = f.get_int(k);
    if (v < lo || v > hi) throw bad(k, v, fmt::format("allowed {}..{}", lo, hi));
    return static_cast<int>(v);
  };
  if (auto e = f.get_int_opt(key("expert_count")); e && *e > 0)
    throw GgufError(fmt::format("{}: mixture-of-experts {} ({} = {}) is not supported", f.path(), arch, key("expert_count"), *e));
  ModelShape s;
  s.name = std::filesystem::path(f.path()).stem().string();
  s.dim = geti(key("embedding_length"), 1, 65536);
  s.hidden_dim = geti(key("feed_forward_length"), 1, 1 << 20);
  s.n_layers = geti(key("block_count"), 1, 1024);
  s.n_heads = geti(key("attention.head_count"), 1, 1024);
  s.n_kv_heads = f.find(key("attention.head_count_kv")) ? geti(key("attention.head_count_kv"), 1, 1024) : s.n_heads;
  s.max_seq_len = geti(key("context_length"), 1, 1 << 24);
  if (s.dim % s.n_heads != 0) throw bad(key("attention.head_count"), s.n_heads, "must divide embedding_length");
  if (s.n_heads % s.n_kv_heads != 0) throw bad(key("attention.head_count_kv"), s.n_kv_heads, "must divide head_count");
  if (s.head_dim() % 2 != 0) throw bad(key("attention.head_count"), s.n_heads, "head size must be even for RoPE");
  for (const char* k : {"attention.key_length", "attention.value_length", "rope.dimension_count"})
    if (auto v = f.get_int_opt(key(k)); v && *v != s.head_dim())
      throw GgufError(fmt::format("{}: {} = {} differs from the head size {} (not supported)", f.path(), key(k), *v,
                                  s.head_dim()));
  if (const GgufValue* st = f.find(key("rope.scaling.type")); st && st->type == GgufType::String && st->s != "none")
    throw GgufError(fmt::format("{}: RoPE scaling \"{}\" is not supported", f.path(), st->s));
  s.rope_theta = static_cast<float>(f.get_float_opt(key("rope.freq_base")).value_or(10000.0));
  s.norm_eps = static_cast<float>(f.get_float_opt(key("attention.layer_norm_rms_epsilon")).value_or(1e-5));
  if (!(s.rope_theta > 0) || !std::isfinite(s.rope_theta))
    throw GgufError(fmt::format("{}: {} = {} is not valid", f.path(), key("rope.freq_base"), s.rope_theta));
  if (!(s.norm_eps > 0) || !(s.norm_eps < 1))
    throw GgufError(fmt::format("{}: {} = {} is not valid", f.path(), key("attention.layer_norm_rms_epsilon"), s.norm_eps));
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb) throw GgufError(fmt::format("{}: tensor token_embd.weight is missing", f.path()));
  if (emb->dims.size() != 2)
    throw GgufError(fmt::format("{}: tensor token_embd.weight has {} dimensions, expected 2", f.path(), emb->dims.size()));
  if (emb->dims[1] > (1u << 24)) throw bad("token_embd.weight dims[1]", static_cast<long long>(emb->dims[1]), "vocabulary too large");
  s.vocab_size = static_cast<int>(emb->dims[1]);
  if (auto v = f.get_int_opt(key("vocab_size")); v && *v != s.vocab_size)
    throw bad(key("vocab_size"), *v, fmt::format("token_embd.weight has {} rows", s.vocab_size));
  s.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  s.qkv_bias = arch == "qwen2";
  // llama.cpp stores Llama 3.1's rope scaling as per-pair divisors of the RoPE frequencies
  // (theta_i = pos * base^(-2i/d) / rope_freqs[i]).
  if (const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight")) {
    const auto pairs = static_cast<std::uint64_t>(s.head_dim() / 2);
    if (t->dims != std::vector<std::uint64_t>{pairs})
      throw GgufError(fmt::format("{}: tensor rope_freqs.weight has shape [{}], expected [{}] (head size {} / 2)", f.path(),
                                  fmt::join(t->dims, ", "), pairs, s.head_dim()));
    s.rope_scaling.freq_factors = f.dequantize(*t);
    for (std::size_t i = 0; i < s.rope_scaling.freq_factors.size(); ++i)
      if (const float v = s.rope_scaling.freq_factors[i]; !(v > 0) || !std::isfinite(v))
        throw GgufError(fmt::format("{}: tensor rope_freqs.weight[{}] = {} is not valid; allowed: finite and > 0", f.path(),
                                    i, v));
  }
  return s;
}

Weights load_gguf(const GgufFile& f, bool keep_stored) {
  Weights w;
  w.shape = gguf_shape(f);
  const ModelShape& s = w.shape;
  const auto d = static_cast<std::uint64_t>(s.dim), kv = static_cast<std::uint64_t>(s.kv_dim()),
             h = static_cast<std::uint64_t>(s.hidden_dim), V = static_cast<std::uint64_t>(s.vocab_size);
  // GGUF dims list the innermost first: a [out][in] row-major matrix is {in, out}.
  const auto get = [&](const std::string& name, std::vector<std::uint64_t> dims) {
    const GgufTensorInfo* t = f.find_tensor(name);
    if (!t) throw GgufError(fmt::format("{}: tensor {} is missing", f.path(), name));
    if (const GgmlTypeTraits* tt = ggml_type_traits(t->type); !tt || !tt->decoded)
      throw GgufError(fmt::format("{}: tensor {} has type {}, which is not supported; supported: {}", f.path(), name,
                                  ggml_type_name(t->type), ggml_decoded_type_names()));
    if (t->dims != dims)
      throw GgufError(fmt::format("{}: tensor {} has shape [{}], expected [{}]", f.path(), name, fmt::join(t->dims, ", "),
                                  fmt::join(dims, ", ")));
    return t;
  };
  const auto values = [&](const std::string& name, std::vector<std::uint64_t> dims) { return f.dequantize(*get(name, dims)); };
  // A matrix as fp32 into `fp32`, or (keep_stored) as the file has it into `stored`, rows
  // reordered for RoPE over rope_heads heads (qwen2's Q and K; 0: as stored).
  const auto matrix = [&](const std::string& name, std::vector<std::uint64_t> dims, std::vector<float>& fp32,
                          StoredMatrix& stored, int rope_heads = 0) {
    const GgufTensorInfo* t = get(name, dims);
    if (!keep_stored) {
      fp32 = f.dequantize(*t);
      if (rope_heads) fp32 = interleave_rope_rows(fp32, rope_heads, s.head_dim(), dims[0]);
      return;
    }
    stored.source = fmt::format("{}: tensor {}", f.path(), name);
    stored.ggml_type = t->type;
    stored.cols = dims[0], stored.rows = dims[1];
    const std::uint8_t* src = f.tensor_data(*t);
    stored.bytes.assign(src, src + t->n_bytes);
    if (rope_heads) interleave_rope_rows(stored, rope_heads, s.head_dim());  // the fp32 path's row order
  };
  w.token_embedding = values("token_embd.weight", {d, V});
  w.layers.resize(static_cast<std::size_t>(s.n_layers));
  for (int l = 0; l < s.n_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    const std::string p = fmt::format("blk.{}.", l);
    L.rms_att = values(p + "attn_norm.weight", {d});
    // llama.cpp's converter permutes the Q and K rows of Hugging Face checkpoints so that RoPE
    // rotates adjacent pairs (x[2i], x[2i+1]): the same convention as llama2.c and the CPU
    // backend, so these load as they are. qwen2: biases, and Q/K rows still in Hugging Face's order.
    matrix(p + "attn_q.weight", {d, d}, L.wq, L.stored.wq, s.qkv_bias ? s.n_heads : 0);
    matrix(p + "attn_k.weight", {d, kv}, L.wk, L.stored.wk, s.qkv_bias ? s.n_kv_heads : 0);
    if (s.qkv_bias) {
      L.bq = interleave_rope_rows(values(p + "attn_q.bias", {d}), s.n_heads, s.head_dim(), 1);
      L.bk = interleave_rope_rows(values(p + "attn_k.bias", {kv}), s.n_kv_heads, s.head_dim(), 1);
      L.bv = values(p + "attn_v.bias", {kv});
    }
    matrix(p + "attn_v.weight", {d, kv}, L.wv, L.stored.wv);
    matrix(p + "attn_output.weight", {d, d}, L.wo, L.stored.wo);
    L.rms_ffn = values(p + "ffn_norm.weight", {d});
    matrix(p + "ffn_gate.weight", {d, h}, L.w1, L.stored.w1);
    matrix(p + "ffn_down.weight", {h, d}, L.w2, L.stored.w2);
    matrix(p + "ffn_up.weight", {d, h}, L.w3, L.stored.w3);
  }
  w.rms_final = values("output_norm.weight", {d});
  if (!s.tied_embeddings) {
    matrix("output.weight", {d, V}, w.classifier, w.stored_lm_head);
  } else if (keep_stored) {
    std::vector<float> unused;
    matrix("token_embd.weight", {d, V}, unused, w.stored_lm_head);
  }
  return w;
}

Weights load_gguf(const std::string& path) {
  const GgufFile f(path);
  return load_gguf(f, false);
}

}  // namespace ablate
