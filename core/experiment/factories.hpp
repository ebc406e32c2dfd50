#pragma once
// The one place that maps a config's names (config/registry.hpp) to implementations.
#include <memory>

namespace ablate {

struct ExperimentConfig;
class Attention;
class Backend;
class Drafter;
class KvCache;
class Scheduler;

std::unique_ptr<Backend> make_backend(const ExperimentConfig& cfg);
std::unique_ptr<KvCache> make_kv_cache(const ExperimentConfig& cfg, const Backend& backend);
std::unique_ptr<Scheduler> make_scheduler(const ExperimentConfig& cfg);
std::unique_ptr<Attention> make_attention(const ExperimentConfig& cfg);
std::unique_ptr<Drafter> make_drafter(const ExperimentConfig& cfg, Backend& target);  // layer_skip runs the target

}  // namespace ablate
