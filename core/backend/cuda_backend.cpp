#include "backend/cuda_backend.hpp"

#include <stdexcept>

#if !defined(ABLATE_HAVE_CUDA)

namespace ablate {

// A build without nvcc: the backend exists only to say so.
void cuda_backend_check_device() { throw std::runtime_error("no CUDA device: this build has no CUDA (nvcc not found)"); }
struct CudaBackend::Impl {};
CudaBackend::CudaBackend(const Weights&, CudaBackendOptions) { cuda_backend_check_device(); }
CudaBackend::~CudaBackend() = default;
std::string CudaBackend::device_name() const { return ""; }
const ModelShape& CudaBackend::shape() const { throw std::logic_error("no CUDA backend"); }
std::size_t CudaBackend::weights_bytes() const { return 0; }
const std::vector<float>& CudaBackend::forward(const ForwardBatch&, KvCache&, Attention&) {
  throw std::logic_error("no CUDA backend");
}
KvStorage CudaBackend::kv_storage() const { return {}; }
std::size_t CudaBackend::peak_device_bytes() const { return 0; }

}  // namespace ablate

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "cuda/bf16.cuh"
#include "cuda/kernels.cuh"
#include "engine/nvtx.hpp"
#include "kv/kv_cache.hpp"

namespace ablate {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(fmt::format("cuda backend: {}: {}", what, cudaGetErrorString(e)));
}

// One device allocation; grows (never shrinks) on reserve().
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    bytes_ = bytes;
  }
  template <class T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace

void cuda_backend_check_device() {
  std::string why;
  if (!cuda::cuda_device_available(&why)) throw std::runtime_error("no CUDA device: " + why);
}

struct CudaBackend::Impl {
  ModelShape shape;
  bool bf16 = false;
  std::string device;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::size_t weights_bytes = 0;
  std::size_t peak_used = 0;

  // Weights: matrices in the weight dtype, fused like the CPU backend's (wqkv, w13); norms and the
  // embedding table (a gather, not a matmul) in fp32.
  struct Layer {
    DeviceBuffer rms_att, wqkv, wo, rms_ffn, w13, w2;
  };
  std::vector<Layer> layers;
  DeviceBuffer embedding, rms_final, lm_head;

  // KV pools, sized to the cache in use (pool_elements each).
  DeviceBuffer k_pool, v_pool;
  std::size_t pool_elements = 0;

  // Activations and step inputs (grown to the largest batch seen).
  DeviceBuffer x, xb, qkv, att, h13, h, logits, x16, q16, att16;
  DeviceBuffer tokens, positions, kv_offsets, pages, out_rows;
  DeviceBuffer gathered_k, gathered_v, scores, split_workspace;
  std::vector<float> host_logits;

  ~Impl() {
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
  }

  cuda::KvElem kv_elem() const { return bf16 ? cuda::KvElem::bf16 : cuda::KvElem::f32; }
  std::size_t weight_elem_bytes() const { return bf16 ? 2 : 4; }

  void note_memory() {
    std::size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) peak_used = std::max(peak_used, total - free);
  }

  // Rows of `parts` stacked into one device matrix in the weight dtype.
  void upload_matrix(DeviceBuffer& dst, std::initializer_list<const std::vector<float>*> parts, DeviceBuffer& staging) {
    std::size_t n = 0;
    for (auto* p : parts) n += p->size();
    dst.reserve(n * weight_elem_bytes());
    weights_bytes += n * weight_elem_bytes();
    std::size_t at = 0;
    for (auto* p : parts) {
      if (!bf16) {
        check(cudaMemcpy(dst.get<float>() + at, p->data(), p->size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
      } else {
        staging.reserve(p->size() * sizeof(float));
        check(cudaMemcpy(staging.get(), p->data(), p->size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
        cuda::to_bf16(dst.get<cuda::bf16_bits>() + at, staging.get<float>(), p->size(), stream);
      }
      at += p->size();
    }
  }
  void upload_f32(DeviceBuffer& dst, const float* src, std::size_t n) {
    dst.reserve(n * sizeof(float));
    weights_bytes += n * sizeof(float);
    check(cudaMemcpy(dst.get(), src, n * sizeof(float), cudaMemcpyHostToDevice), "upload");
  }

  // y[rows][out] = x[rows][in] W^T in the weight dtype, fp32 in and out.
  void matmul(float* y, const float* xin, const DeviceBuffer& w, int rows, int in, int out) {
    if (!bf16) return cuda::matmul(y, xin, w.get<float>(), rows, in, out, cublas, stream);
    if (rows == 1) return cuda::gemv_bf16(y, xin, w.get<cuda::bf16_bits>(), in, out, false, stream, gemv_version);
    // x16 holds rows x in: forward() sized it for the step.
    cuda::to_bf16(x16.get<cuda::bf16_bits>(), xin, static_cast<std::size_t>(rows) * in, stream);
    cuda::matmul_bf16(y, x16.get<cuda::bf16_bits>(), w.get<cuda::bf16_bits>(), rows, in, out, cublas, stream);
  }

  // The residual connection x[rows][out] += xin W^T: one GEMV that adds as it writes when a
  // single bf16 row (the batch-1 decode step), else a matmul into `scratch` and an add.
  void matmul_add(float* x, const float* xin, const DeviceBuffer& w, int rows, int in, int out, float* scratch) {
    if (bf16 && rows == 1) return cuda::gemv_bf16(x, xin, w.get<cuda::bf16_bits>(), in, out, true, stream, gemv_version);
    matmul(scratch, xin, w, rows, in, out);
    cuda::add(x, scratch, static_cast<std::size_t>(rows) * out, stream);
  }

  // The batch-1 GEMV version for this device: each version timed on layer 0's three matrix shapes
  // (CUDA events, median of 5), the fastest kept. All versions compute the same sums (tested).
  int gemv_version = 1;
  void choose_gemv() {
    const Layer& L = layers.front();
    const int dim = shape.dim, hidden = shape.hidden_dim, qkv_dim = dim + 2 * shape.kv_dim();
    DeviceBuffer xin, y;
    xin.reserve(static_cast<std::size_t>(std::max(dim, hidden)) * sizeof(float));
    y.reserve(static_cast<std::size_t>(std::max(qkv_dim, 2 * hidden)) * sizeof(float));
    check(cudaMemsetAsync(xin.get(), 0, xin.bytes(), stream), "gemv tuning");
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "cudaEventCreate");
    check(cudaEventCreate(&e1), "cudaEventCreate");
    const auto run = [&](int v) {
      cuda::gemv_bf16(y.get<float>(), xin.get<float>(), L.wqkv.get<cuda::bf16_bits>(), dim, qkv_dim, false, stream, v);
      cuda::gemv_bf16(y.get<float>(), xin.get<float>(), L.w13.get<cuda::bf16_bits>(), dim, 2 * hidden, false, stream, v);
      cuda::gemv_bf16(y.get<float>(), xin.get<float>(), L.w2.get<cuda::bf16_bits>(), hidden, dim, false, stream, v);
    };
    std::string report;
    float best = 0.0f;
    for (int v = 1; v <= cuda::kGemvVersions; ++v) {
      run(v);  // warm-up
      std::vector<float> ms;
      for (int rep = 0; rep < 5; ++rep) {
        check(cudaEventRecord(e0, stream), "cudaEventRecord");
        run(v);
        check(cudaEventRecord(e1, stream), "cudaEventRecord");
        check(cudaEventSynchronize(e1), "gemv tuning");
        float t = 0.0f;
        check(cudaEventElapsedTime(&t, e0, e1), "cudaEventElapsedTime");
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      report += fmt::format("{}v{} {:.1f} us", v > 1 ? ", " : "", v, ms[2] * 1e3);
      if (v == 1 || ms[2] < best) best = ms[2], gemv_version = v;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    gemv_tuning = fmt::format("gemv_bf16 v{} (layer-0 GEMVs: {})", gemv_version, report);
  }
  std::string gemv_tuning;

  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, const std::string& attention);
};

CudaBackend::CudaBackend(const Weights& w, CudaBackendOptions options) : impl_(std::make_unique<Impl>()) {
  cuda_backend_check_device();
  Impl& m = *impl_;
  if (options.dtype != "fp32" && options.dtype != "bf16")
    throw std::invalid_argument(fmt::format("dtype: \"{}\" is not available on backend cuda; allowed: fp32, bf16", options.dtype));
  m.shape = w.shape;
  m.bf16 = options.dtype == "bf16";
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  m.device = prop.name;
  check(cudaStreamCreate(&m.stream), "cudaStreamCreate");
  if (cublasCreate(&m.cublas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cuda backend: cublasCreate failed");

  DeviceBuffer staging;
  m.layers.resize(w.layers.size());
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    Impl::Layer& D = m.layers[l];
    m.upload_f32(D.rms_att, L.rms_att.data(), L.rms_att.size());
    m.upload_f32(D.rms_ffn, L.rms_ffn.data(), L.rms_ffn.size());
    m.upload_matrix(D.wqkv, {&L.wq, &L.wk, &L.wv}, staging);
    m.upload_matrix(D.wo, {&L.wo}, staging);
    m.upload_matrix(D.w13, {&L.w1, &L.w3}, staging);
    m.upload_matrix(D.w2, {&L.w2}, staging);
    check(cudaStreamSynchronize(m.stream), "weights upload");  // staging is reused by the next layer
  }
  m.upload_f32(m.embedding, w.token_embedding.data(), w.token_embedding.size());
  m.upload_f32(m.rms_final, w.rms_final.data(), w.rms_final.size());
  const std::vector<float> head(w.lm_head(), w.lm_head() + static_cast<std::size_t>(w.shape.vocab_size) * w.shape.dim);
  m.upload_matrix(m.lm_head, {&head}, staging);
  check(cudaStreamSynchronize(m.stream), "weights upload");
  if (m.bf16 && !m.layers.empty()) {
    m.choose_gemv();
    std::fprintf(stderr, "cuda backend: %s\n", m.gemv_tuning.c_str());
  }
  m.note_memory();
}

CudaBackend::~CudaBackend() = default;
std::string CudaBackend::device_name() const { return impl_->device; }
const ModelShape& CudaBackend::shape() const { return impl_->shape; }
std::size_t CudaBackend::weights_bytes() const { return impl_->weights_bytes; }
KvStorage CudaBackend::kv_storage() const { return {cuda::kv_elem_bytes(impl_->kv_elem()), false}; }
std::size_t CudaBackend::peak_device_bytes() const { return impl_->peak_used; }

const std::vector<float>& CudaBackend::forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  const std::string name = attention.name();
  if (name != "naive" && name != "flash" && name != "flash_split")
    throw std::invalid_argument(fmt::format("attention: \"{}\" has no CUDA kernel; allowed: naive, flash, flash_split", name));
  if (name != "naive" && !impl_->bf16)
    throw std::invalid_argument(fmt::format("attention {} on backend cuda needs dtype bf16", name));
  return impl_->forward(batch, kv, name);
}

const std::vector<float>& CudaBackend::Impl::forward(const ForwardBatch& batch, KvCache& kv, const std::string& attention) {
  const ModelShape& s = shape;
  const int dim = s.dim, kv_dim = s.kv_dim(), hd = s.head_dim(), hidden = s.hidden_dim, qkv_dim = dim + 2 * kv_dim;
  const int n_real = batch.num_tokens(), T = n_real + batch.padding_rows, n_out = batch.num_logit_rows();
  const int n_chunks = static_cast<int>(batch.chunks.size());
  const auto sz = [](int rows, int cols) { return static_cast<std::size_t>(rows) * cols; };
  const std::size_t f = sizeof(float);

  // KV pools the size of this cache's (a new run's cache may differ).
  if (kv.pool_elements() != pool_elements) {
    const std::size_t bytes = kv.pool_elements() * cuda::kv_elem_bytes(kv_elem());
    k_pool.reserve(bytes);
    v_pool.reserve(bytes);
    pool_elements = kv.pool_elements();
  }
  // Every buffer of the step is sized here, before any work is queued: growing one later would
  // free memory that queued kernels may still read.
  for (DeviceBuffer* b : {&x, &att}) b->reserve(sz(T, dim) * f);
  xb.reserve(sz(T, std::max(dim, hidden)) * f);  // also SwiGLU's "up" half
  x16.reserve(sz(T, std::max({dim, hidden, qkv_dim})) * 2);
  qkv.reserve(sz(T, qkv_dim) * f);
  h13.reserve(sz(T, 2 * hidden) * f);
  h.reserve(sz(T, hidden) * f);
  logits.reserve(sz(n_out, s.vocab_size) * f);

  // Step inputs, built on the host and copied once: token ids and positions (padding rows: token
  // 0 at position 0, as on the CPU), each token's KV slot in every layer, each chunk's pages,
  // and the rows whose logits are wanted.
  std::vector<int> tok(static_cast<std::size_t>(T), 0), pos(static_cast<std::size_t>(T), 0), rows_out;
  std::vector<std::int64_t> offsets(sz(s.n_layers, n_real));
  std::vector<std::int32_t> page_list;
  std::vector<int> page_start(static_cast<std::size_t>(n_chunks));
  std::vector<KvSeqView> views;  // each chunk's page list; only the pool offset differs per layer
  int row = 0;
  for (int ci = 0; ci < n_chunks; ++ci) {
    const ForwardChunk& c = batch.chunks[static_cast<std::size_t>(ci)];
    const int n = static_cast<int>(c.tokens.size());
    for (int i = 0; i < n; ++i) {
      tok[static_cast<std::size_t>(row + i)] = c.tokens[static_cast<std::size_t>(i)];
      pos[static_cast<std::size_t>(row + i)] = c.pos0 + i;
      for (int l = 0; l < s.n_layers; ++l) offsets[sz(l, n_real) + row + i] = static_cast<std::int64_t>(kv.slot_offset(l, c.seq, c.pos0 + i));
    }
    for (int i = c.all_logits ? 0 : n - 1; i < n; ++i) rows_out.push_back(row + i);
    const KvSeqView& v = views.emplace_back(kv.view(0, c.seq, c.pos0 + n));  // the same pages in every layer
    page_start[static_cast<std::size_t>(ci)] = static_cast<int>(page_list.size());
    page_list.insert(page_list.end(), v.indices, v.indices + v.num_pages);
    row += n;
  }
  auto upload = [&](DeviceBuffer& dst, const void* src, std::size_t bytes) {
    dst.reserve(std::max<std::size_t>(bytes, 1));
    check(cudaMemcpyAsync(dst.get(), src, bytes, cudaMemcpyHostToDevice, stream), "step inputs");
  };
  upload(tokens, tok.data(), tok.size() * sizeof(int));
  upload(positions, pos.data(), pos.size() * sizeof(int));
  upload(kv_offsets, offsets.data(), offsets.size() * sizeof(std::int64_t));
  upload(pages, page_list.data(), page_list.size() * sizeof(std::int32_t));
  upload(out_rows, rows_out.data(), rows_out.size() * sizeof(int));

  cuda::embed(x.get<float>(), embedding.get<float>(), tokens.get<int>(), T, dim, stream);
  if (T > n_real) check(cudaMemsetAsync(att.get<float>() + sz(n_real, dim), 0, sz(T - n_real, dim) * f, stream), "memset");

  // Attention problems of one layer (device pointers). naive: fp32 q/out in place, K/V gathered
  // per sequence to fp32. flash: q cast to bf16 once per layer, output in bf16 then cast back.
  const std::size_t elem = cuda::kv_elem_bytes(kv_elem());
  const bool flash = attention != "naive";
  int longest = 1;
  std::size_t most_scores = 1;
  for (const ForwardChunk& c : batch.chunks) {
    AttentionProblem p;
    p.n_heads = s.n_heads;
    p.n_q = static_cast<int>(c.tokens.size());
    p.q_pos0 = c.pos0;
    longest = std::max(longest, p.kv_len());
    most_scores = std::max(most_scores, cuda::attention_naive_workspace_bytes(p));
  }
  if (flash) {
    q16.reserve(sz(T, qkv_dim) * 2);
    att16.reserve(sz(T, dim) * 2);
  } else {
    gathered_k.reserve(sz(longest, kv_dim) * f);
    gathered_v.reserve(sz(longest, kv_dim) * f);
    scores.reserve(most_scores);
  }
  std::vector<AttentionProblem> prefill, decode;
  for (int l = 0; l < s.n_layers; ++l) {
    const Layer& L = layers[static_cast<std::size_t>(l)];
    float* q = qkv.get<float>();
    cuda::rmsnorm(xb.get<float>(), x.get<float>(), L.rms_att.get<float>(), T, dim, s.norm_eps, stream);
    matmul(q, xb.get<float>(), L.wqkv, T, dim, qkv_dim);
    // RoPE on the query heads and the key heads that follow them in each row: one launch.
    cuda::rope(q, T, qkv_dim, s.n_heads + s.n_kv_heads, hd, positions.get<int>(), s.rope_theta, stream);
    const std::int64_t* off = kv_offsets.get<std::int64_t>() + sz(l, n_real);
    cuda::kv_write(k_pool.get(), off, q + dim, qkv_dim, n_real, kv_dim, kv_elem(), stream);
    cuda::kv_write(v_pool.get(), off, q + dim + kv_dim, qkv_dim, n_real, kv_dim, kv_elem(), stream);
    {
      NVTX_RANGE("attention");
      if (flash) cuda::cast_from_float(q16.get(), q, sz(n_real, qkv_dim), cuda::DType::bf16, stream);
      prefill.clear();
      decode.clear();
      row = 0;
      for (int ci = 0; ci < n_chunks; ++ci) {
        const ForwardChunk& c = batch.chunks[static_cast<std::size_t>(ci)];
        const int n = static_cast<int>(c.tokens.size());
        const KvSeqView& hv = views[static_cast<std::size_t>(ci)];
        AttentionProblem p;
        p.n_q = n;
        p.q_pos0 = c.pos0;
        p.n_heads = s.n_heads;
        p.n_kv_heads = s.n_kv_heads;
        p.head_dim = hd;
        p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
        p.q_stride = qkv_dim;
        p.out_stride = dim;
        p.kv = hv;
        if (!flash) {
          // Gather this sequence's K and V (any layout, any KV dtype) into contiguous fp32.
          const std::int32_t* dev_pages = pages.get<std::int32_t>() + page_start[static_cast<std::size_t>(ci)];
          const auto* kbase = k_pool.get<const char>() + kv.view_offset(l, c.seq) * elem;
          const auto* vbase = v_pool.get<const char>() + kv.view_offset(l, c.seq) * elem;
          cuda::kv_gather_f32(gathered_k.get<float>(), kbase, dev_pages, hv.page_size, p.kv.length, kv_dim, kv_elem(), stream);
          cuda::kv_gather_f32(gathered_v.get<float>(), vbase, dev_pages, hv.page_size, p.kv.length, kv_dim, kv_elem(), stream);
          p.q = q + sz(row, qkv_dim);
          p.out = att.get<float>() + sz(row, dim);
          p.kv.k_pool = gathered_k.get<float>();
          p.kv.v_pool = gathered_v.get<float>();
          p.kv.indices = nullptr;  // one page: not read
          p.kv.num_pages = 1;
          p.kv.page_size = p.kv.length;
          cuda::attention_naive(p, scores.get<float>(), cublas, stream);  // stream order protects the gathers
        } else {
          p.q = reinterpret_cast<const float*>(q16.get<cuda::bf16_bits>() + sz(row, qkv_dim));
          p.out = reinterpret_cast<float*>(att16.get<cuda::bf16_bits>() + sz(row, dim));
          p.kv.k_pool = reinterpret_cast<const float*>(k_pool.get<const char>() + kv.view_offset(l, c.seq) * elem);
          p.kv.v_pool = reinterpret_cast<const float*>(v_pool.get<const char>() + kv.view_offset(l, c.seq) * elem);
          p.kv.indices = pages.get<std::int32_t>() + page_start[static_cast<std::size_t>(ci)];
          (n > 16 ? prefill : decode).push_back(p);  // 1 .. k+1 queries: the decode kernels
        }
        row += n;
      }
      if (flash) {
        if (!prefill.empty()) cuda::attention_flash(prefill, cuda::DType::bf16, stream);
        if (!decode.empty()) {
          if (attention == "flash_split") {
            const std::size_t ws = cuda::attention_flash_split_workspace_bytes(decode);
            if (ws > split_workspace.bytes()) check(cudaStreamSynchronize(stream), "split workspace");  // grow safely
            split_workspace.reserve(std::max<std::size_t>(ws, 1));
            cuda::attention_flash_split(decode, cuda::DType::bf16, split_workspace.get<float>(), split_workspace.bytes(),
                                        stream);
          } else {
            cuda::attention_flash_decode(decode, cuda::DType::bf16, stream);
          }
        }
        cuda::cast_to_float(att.get<float>(), att16.get(), sz(n_real, dim), cuda::DType::bf16, stream);
      }
    }
    matmul_add(x.get<float>(), att.get<float>(), L.wo, T, dim, dim, xb.get<float>());
    cuda::rmsnorm(xb.get<float>(), x.get<float>(), L.rms_ffn.get<float>(), T, dim, s.norm_eps, stream);
    matmul(h13.get<float>(), xb.get<float>(), L.w13, T, dim, 2 * hidden);  // row: [w1 xn | w3 xn]
    cuda::swiglu_rows(h.get<float>(), h13.get<float>(), T, hidden, stream);
    matmul_add(x.get<float>(), h.get<float>(), L.w2, T, hidden, dim, xb.get<float>());
  }

  // Final norm and LM head for the wanted rows only (gathered with the embedding kernel).
  cuda::embed(xb.get<float>(), x.get<float>(), out_rows.get<int>(), n_out, dim, stream);
  cuda::rmsnorm(xb.get<float>(), xb.get<float>(), rms_final.get<float>(), n_out, dim, s.norm_eps, stream);
  matmul(logits.get<float>(), xb.get<float>(), lm_head, n_out, dim, s.vocab_size);
  host_logits.resize(sz(n_out, s.vocab_size));
  check(cudaMemcpyAsync(host_logits.data(), logits.get(), host_logits.size() * f, cudaMemcpyDeviceToHost, stream),
        "logits");
  check(cudaStreamSynchronize(stream), "forward");
  note_memory();
  return host_logits;
}

}  // namespace ablate

#endif
