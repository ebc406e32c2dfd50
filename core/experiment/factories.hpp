#pragma once
// The one place that maps a config's names (config/registry.hpp) to implementations.
#include <memory>

#include "kv/kv_cache.hpp"

namespace ablate {

struct ExperimentConfig;
class Attention;
class Backend;
class Drafter;
class KvCache;
class Scheduler;

std::unique_ptr<Backend> make_backend(const ExperimentConfig& cfg);
// What the point's K/V are stored as: host pools hold kv.dtype (also for backends that only lend
// a shape, the layer-skip draft's, and for a backend shared by points of several kv.dtype); a
// backend that keeps K/V itself decides (config rules keep kv.dtype to what it supports; the CUDA
// backend follows the point's kv.dtype through set_kv_dtype, which the runner calls per run).
KvStorage kv_storage_for(const ExperimentConfig& cfg, const Backend& backend);
std::unique_ptr<KvCache> make_kv_cache(const ExperimentConfig& cfg, const Backend& backend);
std::unique_ptr<Scheduler> make_scheduler(const ExperimentConfig& cfg);
std::unique_ptr<Attention> make_attention(const ExperimentConfig& cfg);
std::unique_ptr<Drafter> make_drafter(const ExperimentConfig& cfg, Backend& target);  // layer_skip runs the target

}  // namespace ablate
