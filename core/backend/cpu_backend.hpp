#pragma once
// The CPU backend: the whole Llama forward pass in the spirit of llama2.c's run.c, over a ragged
// batch (all tokens of all chunks go through each matmul together). Activations, norms and the
// embedding table are fp32; the matrices are held in the run's `dtype` (fp32, bf16, fp16 or Q8_0
// blocks, or a GGUF's own blocks at dtype native) and multiplied as cpu::matmul defines for each (16-bit widened as read, bf16 times
// bf16-rounded inputs, Q8_0 times Q8_0-quantized inputs), fp32 sums; K/V are stored in `kv.dtype`
// and widened as attention reads them.
#include <initializer_list>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "cpu/half.hpp"
#include "cpu/lattice.hpp"
#include "cpu/quant.hpp"
#include "model/weights.hpp"

namespace ablate {

class CpuBackend final : public Backend {
 public:
  // dtype: "fp32" (default), "bf16", "fp16" or "q8_0", the matrices' storage, or "native": each
  // matrix as the file stores it (weights from load_gguf / load_hf with keep_stored; a fused matrix
  // whose parts differ, as its runs of one type; a type without a kernel throws). kv_dtype: the KV caches' element type (kv.dtype: "fp32" = "auto", "bf16", "fp16",
  // "fp8_e4m3", "int8").
  explicit CpuBackend(Weights weights, const std::string& dtype = "fp32", const std::string& kv_dtype = "fp32");
  std::string name() const override { return "cpu"; }
  std::string device_name() const override;
  const ModelShape& shape() const override { return w_.shape; }
  std::size_t weights_bytes() const override { return weights_bytes_; }
  KvStorage kv_storage() const override { return KvStorage::host(kv_dtype_); }
  // What a decode step reads: every matrix and the LM head, in their stored dtype (the embedding
  // table, read a row a token, is not counted).
  std::size_t matrix_bytes() const;
  double bits_per_weight() const override;
  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  // Like forward() but stops after the first `n_layers` layers, then the final norm and LM head
  // (self-speculation draft; n_layers = all layers is the full model).
  const std::vector<float>& forward_layers(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                           int n_layers);

  // One weight matrix in the run's dtype; exactly one of the stores is used (`view`: an fp32
  // matrix borrowed from w_, the tied LM head).
  struct Matrix {
    std::vector<float> f32;
    std::vector<cpu::Bf16> bf16;
    std::vector<cpu::Half> f16;
    cpu::PackedQ8_0 q8;  // Q8_0 blocks (values and their fp16 scales), rows interleaved 8 at a time
    // dtype native: a GGUF's Q4_0, Q4_1, Q5_0, Q5_1 or IQ4_NL blocks, interleaved likewise
    cpu::PackedQ4_0 q4_0;
    cpu::PackedQ4_1 q4_1;
    cpu::PackedQ5_0 q5_0;
    cpu::PackedQ5_1 q5_1;
    cpu::PackedIQ4_NL iq4_nl;
    cpu::PackedQ2_K q2_k;  // and its K-quant and IQ4_XS blocks, 8 rows a group
    cpu::PackedQ3_K q3_k;
    cpu::PackedQ4_K q4_k;
    cpu::PackedQ5_K q5_k;
    cpu::PackedQ6_K q6_k;
    cpu::PackedIQ4_XS iq4_xs;
    cpu::LatticeMatrix lattice;  // and its IQ1_S..IQ3_S blocks, as the file holds them
    const float* view = nullptr;
    // dtype native, a fused matrix whose parts differ in encoding: its runs of same-type rows, each
    // held as the file has it (part_rows[i] rows each), one matmul apiece.
    std::vector<Matrix> parts;
    std::vector<int> part_rows;
    void matmul(float* y, const float* x, int rows, int in, int out) const;
    std::size_t parts_bytes() const {
      std::size_t n = 0;
      for (const Matrix& p : parts) n += p.bytes();
      return n;
    }
    std::size_t bytes() const {
      return f32.size() * 4 + (bf16.size() + f16.size()) * 2 + q8.bytes() + q4_0.bytes() + q4_1.bytes() + q5_0.bytes() +
             q5_1.bytes() + iq4_nl.bytes() + q2_k.bytes() + q3_k.bytes() + q4_k.bytes() + q5_k.bytes() + q6_k.bytes() +
             iq4_xs.bytes() + lattice.bytes_size() + parts_bytes();
    }
  };
  // w is [w.size() / in][in].
  static Matrix make_matrix(std::vector<float>&& w, int in, const std::string& dtype);
  // dtype native: the parts' rows, in order, as one matrix (their bytes are freed); public so that
  // experiments/check_native runs a file's matrices through the very same kernels.
  static Matrix make_stored_matrix(const std::vector<StoredMatrix*>& parts);

 private:
  // Projections that read the same input are fused into one matrix, so a decode step streams
  // each layer in 4 matmuls instead of 7 (fewer thread fork/joins, longer reads):
  // wqkv = [wq; wk; wv] ([dim + 2 kv_dim][dim]) and w13 = [w1; w3] ([2 hidden][dim]).
  struct FusedLayer {
    Matrix wqkv, wo, w13, w2;
  };
  Weights w_;                      // the layers' matrices moved into fused_ (left empty)
  Matrix lm_head_;
  std::vector<FusedLayer> fused_;
  std::size_t weights_bytes_ = 0;
  KvDtype kv_dtype_ = KvDtype::fp32;
  // Activations, reused across steps (sized for the largest batch seen).
  std::vector<float> x_, xb_, qkv_, att_, h13_, h_, logits_;
  std::vector<int> positions_;
  std::vector<float> rope_freq_;   // shape().rope_frequencies(): scaled RoPE as well as plain
  std::vector<std::vector<float>> bqkv_;  // per layer [bq | bk | bv] when shape().qkv_bias (Qwen2); else empty
};

}  // namespace ablate
