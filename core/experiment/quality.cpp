#include "experiment/quality.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "attention/naive_attention.hpp"
#include "backend/backend.hpp"
#include "engine/engine.hpp"
#include "experiment/stop.hpp"
#include "kv/contiguous_kv.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

namespace ablate {

namespace {

// Every position's logits for `tokens`, in one forward pass on a fresh cache.
std::vector<float> all_logits(Backend& be, const KvStorage& storage, const std::vector<int>& tokens) {
  const ModelShape& s = be.shape();
  const int n = static_cast<int>(tokens.size());
  ContiguousKvCache kv(s, static_cast<std::size_t>(n) * kv_bytes_per_token(s, storage), n,
                       ContiguousKvCache::Reserve::MaxSeqLen, storage);
  if (!kv.admit(0, n, 0) || !kv.ensure(0, n)) throw std::logic_error("quality: the evaluation sequence does not fit its cache");
  NaiveAttention attention;
  ForwardBatch batch;
  batch.chunks.push_back({0, 0, tokens, true});
  return be.forward(batch, kv, attention);
}

// log-softmax of one row, in double.
std::vector<double> log_probs(const float* row, int n) {
  const double mx = *std::max_element(row, row + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(row[i]) - mx);
  const double lse = mx + std::log(sum);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = double(row[i]) - lse;
  return out;
}

}  // namespace

QualityResult measure_quality(Backend& point, const KvStorage& point_kv, Backend& reference, const std::vector<int>& prompt,
                              int continuation, bool real_text) {
  if (prompt.empty()) throw std::invalid_argument("quality: an empty prompt");
  const int vocab = reference.shape().vocab_size;
  if (point.shape().vocab_size != vocab) throw std::invalid_argument("quality: the reference has another vocabulary");
  // The reference's greedy continuation: the tokens both models are then forced through.
  std::vector<int> tokens = prompt;
  if (continuation > 0) {
    const ModelShape& s = reference.shape();
    const int len = static_cast<int>(prompt.size()) + continuation;
    ContiguousKvCache kv(s, static_cast<std::size_t>(len) * s.kv_floats_per_token() * sizeof(float), len,
                         ContiguousKvCache::Reserve::MaxSeqLen, reference.kv_storage());
    StaticScheduler sched(1);
    NaiveAttention attention;
    NoDrafter none;
    EngineOptions eo;
    eo.check_stop = throw_if_stopped;  // a stop asked for meanwhile ends the run, not this pass
    const RunRecords rec = run_engine({reference, kv, sched, attention, none}, {{0, 0.0, prompt, continuation}}, eo);
    tokens.insert(tokens.end(), rec.output_tokens.at(0).begin(), rec.output_tokens.at(0).end());
  }
  const std::vector<float> ref = all_logits(reference, reference.kv_storage(), tokens), pt = all_logits(point, point_kv, tokens);
  QualityResult q;
  double nll = 0;
  const int n = static_cast<int>(tokens.size());
  for (int pos = 0; pos + 1 < n; ++pos) {  // the distribution of token pos + 1
    const float* r = &ref[static_cast<std::size_t>(pos) * vocab];
    const float* p = &pt[static_cast<std::size_t>(pos) * vocab];
    const auto lr = log_probs(r, vocab), lp = log_probs(p, vocab);
    double kl = 0;
    for (int i = 0; i < vocab; ++i) kl += std::exp(lr[static_cast<std::size_t>(i)]) * (lr[static_cast<std::size_t>(i)] - lp[static_cast<std::size_t>(i)]);
    q.kl += std::max(0.0, kl);
    q.top1 += std::max_element(r, r + vocab) - r == std::max_element(p, p + vocab) - p;
    if (pos + 1 < static_cast<int>(prompt.size())) nll -= lp[static_cast<std::size_t>(tokens[static_cast<std::size_t>(pos) + 1])];
    ++q.positions;
  }
  if (q.positions > 0) q.kl /= q.positions, q.top1 /= q.positions;
  if (real_text && prompt.size() > 1) q.perplexity = std::exp(nll / static_cast<double>(prompt.size() - 1));
  return q;
}

}  // namespace ablate
