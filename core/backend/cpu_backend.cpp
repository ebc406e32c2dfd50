#include "backend/cpu_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "cpu/kernels.hpp"
#include "base/nvtx.hpp"
#include "kv/kv_cache.hpp"
#include "model/ggml_blocks.hpp"
#include "model/gguf.hpp"

namespace ablate {

namespace {
// Rows of `parts`, in order, as one matrix; the parts are freed as they are copied.
std::vector<float> stack_rows(std::initializer_list<std::vector<float>*> parts) {
  std::size_t n = 0;
  for (auto* p : parts) n += p->size();
  std::vector<float> out;
  out.reserve(n);
  for (auto* p : parts) {
    out.insert(out.end(), p->begin(), p->end());
    std::vector<float>().swap(*p);
  }
  return out;
}
static_assert(int(cpu::LatticeType::IQ2_XXS) == int(GgmlType::IQ2_XXS) && int(cpu::LatticeType::IQ2_XS) == int(GgmlType::IQ2_XS) &&
                  int(cpu::LatticeType::IQ2_S) == int(GgmlType::IQ2_S) && int(cpu::LatticeType::IQ3_XXS) == int(GgmlType::IQ3_XXS) &&
                  int(cpu::LatticeType::IQ3_S) == int(GgmlType::IQ3_S) && int(cpu::LatticeType::IQ1_S) == int(GgmlType::IQ1_S) &&
                  int(cpu::LatticeType::IQ1_M) == int(GgmlType::IQ1_M),
              "a lattice type's value is its ggml type id");

// A ternary matrix (TQ1_0, TQ2_0: x = d (t - 1), t in 0..2, one fp16 d per 256 values, the last 2
// bytes of each block) as Q2_K blocks with every sub-block's scale and min 1 and dmin = d: Q2_K's
// d sc q - dmin m is then d t - d, the same value exactly, and the Q2_K kernel runs it (84 bytes a
// block: TQ2_0 holds 66, TQ1_0 54).
std::vector<cpu::BlockQ2_K> ternary_as_q2_k(std::uint32_t type, const std::vector<std::uint8_t>& bytes, std::size_t n) {
  const std::size_t block_bytes = static_cast<GgmlType>(type) == GgmlType::TQ1_0 ? 54 : 66;
  std::vector<float> v(n);
  dequantize_row(type, bytes.data(), v.data(), n);
  std::vector<cpu::BlockQ2_K> out(n / 256);
  for (std::size_t b = 0; b < out.size(); ++b) {
    cpu::BlockQ2_K& q = out[b];
    std::memcpy(&q.d, bytes.data() + (b + 1) * block_bytes - sizeof q.d, sizeof q.d);
    q.dmin = q.d;
    std::fill(std::begin(q.scales), std::end(q.scales), std::uint8_t{0x11});
    std::fill(std::begin(q.qs), std::end(q.qs), std::uint8_t{0});
    const float d = cpu::to_float(q.d);
    for (int i = 0; i < 256; ++i) {  // t - 1 = v / d exactly (0 when d is)
      const int t = d == 0.0f ? 1 : static_cast<int>(std::lround(v[b * 256 + i] / d)) + 1;
      q.qs[32 * (i / 128) + i % 32] |= static_cast<std::uint8_t>(t << (2 * ((i % 128) / 32)));
    }
  }
  return out;
}
}  // namespace

CpuBackend::Matrix CpuBackend::make_matrix(std::vector<float>&& w, int in, const std::string& dtype) {
  Matrix m;
  if (dtype == "fp32") {
    m.f32 = std::move(w);
  } else if (dtype == "bf16") {
    m.bf16.resize(w.size());
    std::transform(w.begin(), w.end(), m.bf16.begin(), cpu::to_bf16);
  } else if (dtype == "fp16") {
    m.f16.resize(w.size());
    std::transform(w.begin(), w.end(), m.f16.begin(), cpu::to_half);
  } else if (dtype == "q8_0") {
    // Any source type goes through fp32; a GGUF Q8_0 tensor comes back as its own blocks (quant.hpp).
    const int out = static_cast<int>(w.size() / static_cast<std::size_t>(in));
    m.q8 = cpu::pack_q8_0(cpu::quantize_q8_0(w.data(), out, in), out, in);
  } else {
    throw std::invalid_argument("cpu backend: dtype \"" + dtype + "\" is not one of fp32, bf16, fp16, q8_0, native");
  }
  std::vector<float>().swap(w);
  return m;
}

CpuBackend::Matrix CpuBackend::make_stored_matrix(const std::vector<StoredMatrix*>& parts) {
  const StoredMatrix& first = **parts.begin();
  const auto type = static_cast<GgmlType>(first.ggml_type);
  const std::size_t in = first.cols;
  std::size_t rows = 0;
  bool same = true;
  for (const StoredMatrix* p : parts) {
    if (p->empty() || p->cols != in) throw std::invalid_argument("cpu backend: dtype native needs every matrix as the GGUF stores it (load_gguf keep_stored)");
    rows += p->rows;
    same = same && p->ggml_type == first.ggml_type;
  }
  Matrix m;
  if (!same) {  // e.g. Q5_0 Q and K beside a Q8_0 V: each run of one type its own matrix
    for (std::size_t i = 0; i < parts.size();) {
      std::size_t j = i + 1;
      while (j < parts.size() && parts[j]->ggml_type == parts[i]->ggml_type) ++j;
      int part_rows = 0;
      for (std::size_t k = i; k < j; ++k) part_rows += static_cast<int>(parts[k]->rows);
      m.parts.push_back(make_stored_matrix(std::vector<StoredMatrix*>(parts.begin() + std::ptrdiff_t(i), parts.begin() + std::ptrdiff_t(j))));
      m.part_rows.push_back(part_rows);
      i = j;
    }
    return m;
  }
  std::vector<std::uint8_t> bytes;
  for (StoredMatrix* p : parts) {
    bytes.insert(bytes.end(), p->bytes.begin(), p->bytes.end());
    std::vector<std::uint8_t>().swap(p->bytes);
  }
  const auto as = [&]<class T>(T) {  // the bytes as T's
    std::vector<T> v(bytes.size() / sizeof(T));
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
    return v;
  };
  const int out = static_cast<int>(rows), cols = static_cast<int>(in);
  switch (type) {
    case GgmlType::F32: m.f32 = as(float{}); break;
    case GgmlType::F16: m.f16 = as(cpu::Half{}); break;
    case GgmlType::BF16: m.bf16 = as(cpu::Bf16{}); break;
    case GgmlType::Q8_0: m.q8 = cpu::pack_q8_0(as(cpu::BlockQ8_0{}), out, cols); break;
    case GgmlType::Q4_0: m.q4_0 = cpu::pack_nibbles(as(cpu::BlockQ4_0{}), out, cols); break;
    case GgmlType::Q4_1: m.q4_1 = cpu::pack_nibbles(as(cpu::BlockQ4_1{}), out, cols); break;
    case GgmlType::Q5_0: m.q5_0 = cpu::pack_nibbles(as(cpu::BlockQ5_0{}), out, cols); break;
    case GgmlType::Q5_1: m.q5_1 = cpu::pack_nibbles(as(cpu::BlockQ5_1{}), out, cols); break;
    case GgmlType::Q2_K: m.q2_k = cpu::pack_q2_k(as(cpu::BlockQ2_K{}), out, cols); break;
    case GgmlType::Q3_K: m.q3_k = cpu::pack_q3_k(as(cpu::BlockQ3_K{}), out, cols); break;
    case GgmlType::Q4_K: m.q4_k = cpu::pack_q4_k(as(cpu::BlockQ4_K{}), out, cols); break;
    case GgmlType::Q5_K: m.q5_k = cpu::pack_q5_k(as(cpu::BlockQ5_K{}), out, cols); break;
    case GgmlType::Q6_K: m.q6_k = cpu::pack_q6_k(as(cpu::BlockQ6_K{}), out, cols); break;
    case GgmlType::IQ4_NL: m.iq4_nl = cpu::pack_nibbles(as(cpu::BlockIQ4_NL{}), out, cols); break;
    case GgmlType::IQ4_XS: m.iq4_xs = cpu::pack_iq4_xs(as(cpu::BlockIQ4_XS{}), out, cols); break;
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M: m.lattice = cpu::make_lattice_matrix(static_cast<cpu::LatticeType>(type), std::move(bytes), out, cols); break;
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0: m.q2_k = cpu::pack_q2_k(ternary_as_q2_k(first.ggml_type, bytes, rows * in), out, cols); break;
    default:  // MXFP4, NVFP4: decoded at load, but no kernel reads their blocks
      throw std::invalid_argument(fmt::format(
          "{} has type {}, which dtype native cannot hold on the cpu backend (native types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
          "Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, and TQ1_0/TQ2_0 as Q2_K); dtype fp32, bf16, fp16 or q8_0 converts it at load",
          first.source, ggml_type_name(first.ggml_type)));
  }
  return m;
}

void CpuBackend::Matrix::matmul(float* y, const float* x, int rows, int in, int out) const {
  if (!parts.empty()) {  // each part's columns of y, through a scratch [rows][part rows]
    thread_local std::vector<float> part_y;
    int o = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const int n = part_rows[i];
      part_y.resize(std::size_t(rows) * n);
      parts[i].matmul(part_y.data(), x, rows, in, n);
      for (int r = 0; r < rows; ++r)
        std::copy_n(part_y.data() + std::size_t(r) * n, n, y + std::size_t(r) * out + o);
      o += n;
    }
    return;
  }
  if (view) return cpu::matmul(y, x, view, rows, in, out);
  if (!f32.empty()) return cpu::matmul(y, x, f32.data(), rows, in, out);
  if (!bf16.empty()) return cpu::matmul(y, x, bf16.data(), rows, in, out);
  if (!q8.empty()) return cpu::matmul(y, x, q8, rows, in, out);
  if (!q4_0.empty()) return cpu::matmul(y, x, q4_0, rows, in, out);
  if (!q4_1.empty()) return cpu::matmul(y, x, q4_1, rows, in, out);
  if (!q5_0.empty()) return cpu::matmul(y, x, q5_0, rows, in, out);
  if (!q5_1.empty()) return cpu::matmul(y, x, q5_1, rows, in, out);
  if (!q4_k.empty()) return cpu::matmul(y, x, q4_k, rows, in, out);
  if (!q5_k.empty()) return cpu::matmul(y, x, q5_k, rows, in, out);
  if (!q2_k.empty()) return cpu::matmul(y, x, q2_k, rows, in, out);
  if (!q3_k.empty()) return cpu::matmul(y, x, q3_k, rows, in, out);
  if (!iq4_nl.empty()) return cpu::matmul(y, x, iq4_nl, rows, in, out);
  if (!iq4_xs.empty()) return cpu::matmul(y, x, iq4_xs, rows, in, out);
  if (!lattice.empty()) return cpu::matmul(y, x, lattice, rows, in, out);
  if (!q6_k.empty()) return cpu::matmul(y, x, q6_k, rows, in, out);
  cpu::matmul(y, x, f16.data(), rows, in, out);
}

CpuBackend::CpuBackend(Weights weights, const std::string& dtype, const std::string& kv_dtype)
    : w_(std::move(weights)), kv_dtype_(kv_dtype == "auto" ? KvDtype::fp32 : parse_kv_dtype(kv_dtype)) {
  const int dim = w_.shape.dim, hidden = w_.shape.hidden_dim;
  if (dtype == "native") {  // each matrix as the GGUF stores it; a tied LM head is token_embd's blocks
    for (LayerWeights& L : w_.layers) {
      auto& S = L.stored;
      fused_.push_back({make_stored_matrix({&S.wq, &S.wk, &S.wv}), make_stored_matrix({&S.wo}),
                        make_stored_matrix({&S.w1, &S.w3}), make_stored_matrix({&S.w2})});
    }
    lm_head_ = make_stored_matrix({&w_.stored_lm_head});
  } else {
    for (LayerWeights& L : w_.layers)
      fused_.push_back({make_matrix(stack_rows({&L.wq, &L.wk, &L.wv}), dim, dtype), make_matrix(std::move(L.wo), dim, dtype),
                        make_matrix(stack_rows({&L.w1, &L.w3}), dim, dtype), make_matrix(std::move(L.w2), hidden, dtype)});
    if (dtype == "fp32" || w_.classifier.empty()) {
      // Tied to the embedding (which lookups need in fp32) and fp32: borrowed, not copied.
      if (dtype == "fp32") lm_head_.view = w_.lm_head();
      else lm_head_ = make_matrix(std::vector<float>(w_.token_embedding), dim, dtype);
    } else {
      lm_head_ = make_matrix(std::move(w_.classifier), dim, dtype);
    }
  }
  for (std::size_t l = 0; l < fused_.size() && w_.shape.qkv_bias; ++l) {
    LayerWeights& L = w_.layers[l];
    bqkv_.push_back(stack_rows({&L.bq, &L.bk, &L.bv}));
    weights_bytes_ += bqkv_.back().size() * sizeof(float);
  }
  rope_freq_ = w_.shape.rope_frequencies();
  weights_bytes_ += w_.bytes() + lm_head_.bytes();  // w_ now holds the embedding, norms, fp32 classifier
  for (const FusedLayer& F : fused_) weights_bytes_ += F.wqkv.bytes() + F.wo.bytes() + F.w13.bytes() + F.w2.bytes();
}

std::size_t CpuBackend::matrix_bytes() const {
  std::size_t n = lm_head_.view ? static_cast<std::size_t>(w_.shape.vocab_size) * w_.shape.dim * sizeof(float) : lm_head_.bytes();
  for (const FusedLayer& F : fused_) n += F.wqkv.bytes() + F.wo.bytes() + F.w13.bytes() + F.w2.bytes();
  return n;
}

double CpuBackend::bits_per_weight() const {
  const ModelShape& s = w_.shape;
  const double dim = s.dim, kv = s.kv_dim(), hidden = s.hidden_dim;
  const double weights = s.n_layers * ((dim + 2 * kv) * dim + dim * dim + 3 * hidden * dim) + double(s.vocab_size) * dim;
  return weights > 0 ? 8.0 * static_cast<double>(matrix_bytes()) / weights : 0.0;
}

std::string CpuBackend::device_name() const {
  // Two hosts can share a model name and differ in ISA (an AMD EPYC with or without AVX-512):
  // the kernel path tells their results apart.
  std::string model = "unknown CPU";
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return model + " (" + cpu::kernel_isa() + " kernels)";
}

const std::vector<float>& CpuBackend::forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  return forward_layers(batch, kv, attention, w_.shape.n_layers);
}

const std::vector<float>& CpuBackend::forward_layers(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                                     int n_layers) {
  const ModelShape& s = w_.shape;
  const int dim = s.dim, kv_dim = s.kv_dim(), hd = s.head_dim(), hidden = s.hidden_dim;
  const int n_real = batch.num_tokens();
  const int T = n_real + batch.padding_rows;  // padding rows ride through every matmul, then are dropped
  const auto sz = [](int rows, int cols) { return static_cast<std::size_t>(rows) * cols; };
  const int qkv_dim = dim + 2 * kv_dim;
  for (auto* buf : {&x_, &xb_, &att_}) buf->resize(sz(T, dim));
  qkv_.resize(sz(T, qkv_dim));
  h13_.resize(sz(T, 2 * hidden));
  h_.resize(sz(T, hidden));
  positions_.resize(static_cast<std::size_t>(T));
  // Workspace of this pass: the activations (logits rows below) and the largest attention scratch.
  std::size_t workspace = (3 * sz(T, dim) + sz(T, qkv_dim) + sz(T, 2 * hidden) + sz(T, hidden) +
                           sz(batch.num_logit_rows(), s.vocab_size)) * sizeof(float);
  std::size_t attention_scratch = 0;

  // Embedding lookup; padding rows embed token 0 at position 0.
  int row = 0;
  for (const auto& c : batch.chunks)
    for (std::size_t i = 0; i < c.tokens.size(); ++i, ++row) {
      std::memcpy(&x_[sz(row, dim)], &w_.token_embedding[sz(c.tokens[i], dim)], sizeof(float) * dim);
      positions_[static_cast<std::size_t>(row)] = c.pos0 + static_cast<int>(i);
    }
  for (; row < T; ++row) {
    std::memcpy(&x_[sz(row, dim)], w_.token_embedding.data(), sizeof(float) * dim);
    positions_[static_cast<std::size_t>(row)] = 0;
  }
  if (T > n_real) std::fill(att_.begin() + static_cast<std::ptrdiff_t>(sz(n_real, dim)), att_.end(), 0.0f);

  std::vector<AttentionProblem> problems(batch.chunks.size());
  for (int l = 0; l < n_layers; ++l) {
    const LayerWeights& L = w_.layers[static_cast<std::size_t>(l)];
    const FusedLayer& F = fused_[static_cast<std::size_t>(l)];
    // Attention block: x += wo(attention(rope(wq xn), rope(wk xn), wv xn)); one row of qkv_ is
    // [q | k | v] of one token.
    cpu::rmsnorm(xb_.data(), x_.data(), L.rms_att.data(), T, dim, s.norm_eps);
    F.wqkv.matmul(qkv_.data(), xb_.data(), T, dim, qkv_dim);
    float* q = qkv_.data();
    float* k = q + dim;
    const float* v = k + kv_dim;
    if (!bqkv_.empty())
      for (int r = 0; r < T; ++r) cpu::add(q + sz(r, qkv_dim), bqkv_[static_cast<std::size_t>(l)].data(), static_cast<std::size_t>(qkv_dim));
    cpu::rope(q, T, qkv_dim, s.n_heads, hd, positions_.data(), rope_freq_.data());
    cpu::rope(k, T, qkv_dim, s.n_kv_heads, hd, positions_.data(), rope_freq_.data());
    row = 0;
    for (std::size_t ci = 0; ci < batch.chunks.size(); ++ci) {
      const auto& c = batch.chunks[ci];
      const int n = static_cast<int>(c.tokens.size());
      for (int i = 0; i < n; ++i) {
        kv.store(l, c.seq, c.pos0 + i, k + sz(row + i, qkv_dim), v + sz(row + i, qkv_dim), kv_dim);
      }
      AttentionProblem& p = problems[ci];
      p.q = q + sz(row, qkv_dim);
      p.out = &att_[sz(row, dim)];
      p.q_stride = qkv_dim;
      p.out_stride = dim;
      p.n_q = n;
      p.q_pos0 = c.pos0;
      p.kv = kv.view(l, c.seq, c.pos0 + n);
      p.n_heads = s.n_heads;
      p.n_kv_heads = s.n_kv_heads;
      p.head_dim = hd;
      p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      row += n;
    }
    for (const AttentionProblem& p : problems) attention_scratch = std::max(attention_scratch, attention.workspace_bytes(p));
    {
      NVTX_RANGE("attention");
      attention.forward(problems);
    }
    F.wo.matmul(xb_.data(), att_.data(), T, dim, dim);
    cpu::add(x_.data(), xb_.data(), sz(T, dim));
    // FFN block: x += w2(silu(w1 xn) * w3 xn).
    cpu::rmsnorm(xb_.data(), x_.data(), L.rms_ffn.data(), T, dim, s.norm_eps);
    F.w13.matmul(h13_.data(), xb_.data(), T, dim, 2 * hidden);  // row: [w1 xn | w3 xn]
    cpu::swiglu_rows(h_.data(), h13_.data(), T, hidden);
    F.w2.matmul(xb_.data(), h_.data(), T, hidden, dim);
    cpu::add(x_.data(), xb_.data(), sz(T, dim));
  }

  // Final norm and LM head, only for the rows whose logits are wanted.
  const int n_out = batch.num_logit_rows();
  row = 0;
  int out_row = 0;
  for (const auto& c : batch.chunks) {
    const int n = static_cast<int>(c.tokens.size());
    const int first = c.all_logits ? 0 : n - 1;
    for (int i = first; i < n; ++i, ++out_row)
      std::memcpy(&xb_[sz(out_row, dim)], &x_[sz(row + i, dim)], sizeof(float) * dim);
    row += n;
  }
  cpu::rmsnorm(xb_.data(), xb_.data(), w_.rms_final.data(), n_out, dim, s.norm_eps);
  logits_.resize(sz(n_out, s.vocab_size));
  lm_head_.matmul(logits_.data(), xb_.data(), n_out, dim, s.vocab_size);
  note_workspace(workspace + attention_scratch);
  return logits_;
}

}  // namespace ablate
