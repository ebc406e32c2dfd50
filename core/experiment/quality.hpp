#pragma once
// `quality: true`: what a precision change costs in output quality, measured beside its speed.
// The point's backend and an fp32 CPU reference of the same model read the same token sequence
// (teacher forcing): the first request's prompt, then the reference's own greedy continuation of
// it. Per position: KL(p_fp32 || p_point) and whether both put the same token first. For real
// text (workload.prompts with a real model) also the point model's perplexity on the prompt.
#include <optional>
#include <vector>

#include "kv/kv_cache.hpp"

namespace ablate {

class Backend;

struct QualityResult {
  double kl = 0;                     // quality_kl: mean over positions, nats
  double top1 = 0;                   // quality_top1: share of positions with the same argmax
  std::optional<double> perplexity;  // of the point's model on the prompt (real text only)
  int positions = 0;
};

// `prompt` (>= 1 token) is continued greedily by `reference` for `continuation` tokens; both
// backends then read prompt + continuation in one pass, the point's K/V stored as `point_kv` (its
// kv.dtype: the pass reads them back from the cache, so a narrow KV is measured too), the
// reference's in fp32.
QualityResult measure_quality(Backend& point, const KvStorage& point_kv, Backend& reference, const std::vector<int>& prompt,
                              int continuation, bool real_text);

}  // namespace ablate
