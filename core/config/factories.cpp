// The factories: the only place that maps a config's names to classes.
#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "config/experiment.hpp"
#include "config/registry.hpp"
#include "kv/contiguous_kv.hpp"
#include "sched/static_scheduler.hpp"
#include "spec/no_drafter.hpp"

namespace ablate {

namespace {
[[noreturn]] void unavailable(std::string_view key, const std::string& name) {
  throw std::invalid_argument(fmt::format("{}: \"{}\" is not available in this build", key, name));
}
}  // namespace

int effective_max_seq_len(const ExperimentConfig& cfg, const ModelShape& shape) {
  return cfg.max_seq_len > 0 ? std::min(cfg.max_seq_len, shape.max_seq_len) : shape.max_seq_len;
}

std::unique_ptr<Backend> make_backend(const ExperimentConfig& cfg) {
  if (cfg.backend == "cpu") return std::make_unique<CpuBackend>(load_weights(cfg.model));
  unavailable("backend", cfg.backend);
}

std::unique_ptr<KvCache> make_kv_cache(const ExperimentConfig& cfg, const Backend& backend) {
  const auto bytes = static_cast<std::size_t>(cfg.kv.memory_mb * 1024.0 * 1024.0);
  const int max_len = effective_max_seq_len(cfg, backend.shape());
  if (cfg.kv.layout == "contiguous")
    return std::make_unique<ContiguousKvCache>(backend.shape(), bytes, max_len,
                                               cfg.kv.reserve == "max_seq_len"
                                                   ? ContiguousKvCache::Reserve::MaxSeqLen
                                                   : ContiguousKvCache::Reserve::PromptPlusMaxNew);
  unavailable("kv.layout", cfg.kv.layout);
}

std::unique_ptr<Scheduler> make_scheduler(const ExperimentConfig& cfg) {
  if (cfg.batching == "static") return std::make_unique<StaticScheduler>(cfg.scheduler.max_batch);
  unavailable("batching", cfg.batching);
}

std::unique_ptr<Attention> make_attention(const ExperimentConfig& cfg) {
  if (cfg.attention == "naive") return std::make_unique<NaiveAttention>();
  unavailable("attention", cfg.attention);
}

std::unique_ptr<Drafter> make_drafter(const ExperimentConfig& cfg, const Backend& /*target*/) {
  if (cfg.speculative.draft == "none") return std::make_unique<NoDrafter>();
  unavailable("speculative.draft", cfg.speculative.draft);
}

}  // namespace ablate
