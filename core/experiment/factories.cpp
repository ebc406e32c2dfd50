// The factories: the only place that maps a config's names to classes.
#include "experiment/factories.hpp"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/cuda_backend.hpp"
#include "base/experiment_config.hpp"
#include "config/registry.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "sched/continuous_scheduler.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/layer_skip_drafter.hpp"
#include "speculative/model_drafter.hpp"
#include "speculative/no_drafter.hpp"
#include "speculative/simulated_drafter.hpp"

namespace ablate {

namespace {
[[noreturn]] void unavailable(std::string_view key, const std::string& name) {
  throw std::invalid_argument(fmt::format("{}: \"{}\" is not available in this build", key, name));
}
}  // namespace

std::unique_ptr<Backend> make_backend(const ExperimentConfig& cfg) {
  if (cfg.backend == "cpu") {
    // dtype native keeps a checkpoint file's own encoding; a draft model from a preset or a
    // llama2.c file, stored in fp32, runs in fp32 (its own encoding).
    const bool native = cfg.dtype == "native";
    if (native && !has_stored_encoding(cfg.model.source)) return std::make_unique<CpuBackend>(load_weights(cfg.model), "fp32", cfg.kv.dtype);
    return std::make_unique<CpuBackend>(load_weights(cfg.model, native), cfg.dtype, cfg.kv.dtype);
  }
  if (cfg.backend == "cuda") {
    if (!is_implemented("backend", "cuda")) unavailable("backend", cfg.backend);
    cuda_backend_check_device();  // "no CUDA device: ..." before loading gigabytes of weights
    return std::make_unique<CudaBackend>(load_weights(cfg.model), CudaBackendOptions{cfg.dtype, cfg.cuda_graphs, cfg.cuda_pdl, cfg.cuda_l2_prefetch, cfg.kv.dtype});
  }
  unavailable("backend", cfg.backend);
}

KvStorage kv_storage_for(const ExperimentConfig& cfg, const Backend& backend) {
  const KvStorage storage = backend.kv_storage();
  return storage.host_pools && cfg.kv.dtype != "auto" ? KvStorage::host(parse_kv_dtype(cfg.kv.dtype)) : storage;
}

std::unique_ptr<KvCache> make_kv_cache(const ExperimentConfig& cfg, const Backend& backend) {
  const auto bytes = static_cast<std::size_t>(cfg.kv.memory_mb * 1024.0 * 1024.0);
  const int max_len = effective_max_seq_len(cfg, backend.shape());
  const KvStorage storage = kv_storage_for(cfg, backend);
  if (cfg.kv.layout == "contiguous")
    return std::make_unique<ContiguousKvCache>(backend.shape(), bytes, max_len,
                                               cfg.kv.reserve == "max_seq_len"
                                                   ? ContiguousKvCache::Reserve::MaxSeqLen
                                                   : ContiguousKvCache::Reserve::PromptPlusMaxNew,
                                               storage);
  if (cfg.kv.layout == "paged")  // static batching cannot preempt: it admits only what is guaranteed to fit
    return std::make_unique<PagedKvCache>(backend.shape(), bytes, cfg.kv.block_size, max_len,
                                          cfg.batching == "static" ? PagedKvCache::Admission::Guaranteed
                                                                   : PagedKvCache::Admission::OnDemand,
                                          storage, cfg.kv.prefix_cache == "on");
  unavailable("kv.layout", cfg.kv.layout);
}

std::unique_ptr<Scheduler> make_scheduler(const ExperimentConfig& cfg) {
  if (cfg.batching == "static") return std::make_unique<StaticScheduler>(cfg.scheduler.max_batch);
  if (cfg.batching == "continuous")
    return std::make_unique<ContinuousScheduler>(cfg.scheduler.max_num_seqs, cfg.scheduler.max_batched_tokens,
                                                 cfg.scheduler.prefill == "chunked"
                                                     ? ContinuousScheduler::Prefill::Chunked
                                                     : ContinuousScheduler::Prefill::PrefillFirst);
  unavailable("batching", cfg.batching);
}

std::unique_ptr<Attention> make_attention(const ExperimentConfig& cfg) {
  if (cfg.attention == "naive") return std::make_unique<NaiveAttention>();
  if (cfg.attention == "flash") return std::make_unique<FlashAttention>();
  if (cfg.attention == "flash_split") return std::make_unique<FlashSplitAttention>();
  unavailable("attention", cfg.attention);
}

std::unique_ptr<Drafter> make_drafter(const ExperimentConfig& cfg, Backend& target) {
  const SpeculativeConfig& sp = cfg.speculative;
  if (sp.draft == "none") return std::make_unique<NoDrafter>();
  const DraftOptions opts{sp.k, cfg.sampling.temperature, cfg.sampling.top_p, static_cast<std::uint64_t>(cfg.seed)};
  // model: a checkpoint (draft_model) or a synthetic preset (weights seed model.seed + 1), with its
  // own cache of the target's layout.
  const auto model_draft = [&]() -> std::unique_ptr<Drafter> {
    ExperimentConfig dc = cfg;
    if (!sp.draft_model.empty()) {
      dc.model = draft_model_config(sp.draft_model);
    } else {
      dc.model = ModelConfig{};
      dc.model.preset = sp.draft_preset;
      dc.model.seed = cfg.model.seed + 1;
    }
    auto draft = make_backend(dc);
    auto draft_kv = make_kv_cache(cfg, *draft);
    return std::make_unique<ModelDrafter>(std::move(draft), std::move(draft_kv), make_attention(cfg), opts);
  };
  // layer_skip: the target's first draft_layers layers, with a cache for those layers.
  const auto layer_skip_draft = [&]() -> std::unique_ptr<Drafter> {
    auto* cpu = dynamic_cast<CpuBackend*>(&target);
    if (!cpu) unavailable("speculative.draft", sp.draft + " on backend " + target.name());
    auto draft_kv = make_kv_cache(cfg, LayerSkipShapeView(layer_skip_shape(target.shape(), sp.draft_layers)));
    return std::make_unique<LayerSkipDrafter>(*cpu, sp.draft_layers, std::move(draft_kv), make_attention(cfg), opts);
  };
  if (sp.draft == "model") return model_draft();
  if (sp.draft == "layer_skip") return layer_skip_draft();
  if (sp.draft == "simulated")  // the draft_preset model if given, else the target's first draft_layers layers
    return std::make_unique<SimulatedDrafter>(
        sp.draft_preset.empty() && sp.draft_model.empty() ? layer_skip_draft() : model_draft(), sp.alpha);
  unavailable("speculative.draft", cfg.speculative.draft);
}

}  // namespace ablate
