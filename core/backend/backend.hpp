#pragma once
// The backend axis: where the model's weights live and who runs the forward pass.
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/forward_batch.hpp"
#include "kv/kv_cache.hpp"
#include "model/shape.hpp"

namespace ablate {

class Attention;
class Sampler;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda"
  virtual std::string device_name() const = 0;  // CPU model or GPU name, for provenance
  virtual const ModelShape& shape() const = 0;
  virtual std::size_t weights_bytes() const = 0;
  // Bits a matrix weight takes as held: the bytes of the layers' matrices and the LM head (block
  // scales and offsets included) x 8 / their weights; the norms and the embedding table, which a
  // decode step does not stream, are left out. 0 where a backend does not say.
  virtual double bits_per_weight() const { return 0.0; }
  // Run the batch, write its K/V into `kv`, and return logits row-major
  // [batch.num_logit_rows()][vocab] in chunk order.
  virtual const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) = 0;
  // Greedy decoding: forward(), then each logit row's argmax (cpu::argmax_rows: the lowest id on
  // ties), [batch.num_logit_rows()] ids. This default takes it on the host; the CUDA backend
  // takes it on the device and copies back only the ids, not rows x vocab logits.
  virtual const std::vector<int>& forward_argmax(const ForwardBatch& batch, KvCache& kv, Attention& attention);
  // Sampling without a draft: forward(), then logit row r's token drawn by `sampler` with the
  // uniform uniforms[r] (Sampler::sample_uniform: temperature, top-p, inverse CDF), [rows] ids.
  // This default draws on the host; the CUDA backend draws on the device (cuda::sample_rows) and
  // copies back only the ids. uniforms has batch.num_logit_rows() entries.
  virtual const std::vector<int>& forward_sample(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                                 const Sampler& sampler, std::span<const double> uniforms);
  // How KV caches built for this backend store K/V (the CPU's: fp32 host pools).
  virtual KvStorage kv_storage() const { return {}; }
  // Device memory in use at its highest so far (cudaMemGetInfo); 0 on the CPU.
  virtual std::size_t peak_device_bytes() const { return 0; }
  // Workspace: the activation and scratch bytes one forward pass needed (attention's scratch
  // included), at its largest since reset_workspace_peak(), by the backend's own counts; the
  // weights and the KV pools are not in it.
  std::size_t workspace_peak_bytes() const { return workspace_peak_; }
  void reset_workspace_peak() { workspace_peak_ = 0; }
  // The last forward pass's time on the device, by device events (input copies, kernels, the
  // logits copy); none where there is no separate device (the CPU).
  virtual std::optional<double> last_forward_device_s() const { return std::nullopt; }

 protected:
  void note_workspace(std::size_t bytes) { workspace_peak_ = bytes > workspace_peak_ ? bytes : workspace_peak_; }

 private:
  std::size_t workspace_peak_ = 0;
  std::vector<int> argmax_;  // forward_argmax's and forward_sample's ids
};

}  // namespace ablate
