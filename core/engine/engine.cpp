#include "engine/engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "backend/backend.hpp"
#include "base/nvtx.hpp"
#include "engine/profiler.hpp"
#include "base/sampler.hpp"
#include "kv/kv_cache.hpp"
#include "sched/scheduler.hpp"
#include "speculative/drafter.hpp"
#include "speculative/verify.hpp"

namespace ablate {

namespace {

using Clock = std::chrono::steady_clock;

RequestRecord record_of(const Sequence& s) {
  RequestRecord r;
  r.request_id = s.id;
  r.arrival_s = s.request->arrival_s;
  r.first_scheduled_s = s.first_scheduled_s;
  r.first_token_s = s.emit_times.empty() ? 0.0 : s.emit_times.front();
  r.last_token_s = s.emit_times.empty() ? 0.0 : s.emit_times.back();
  r.prompt_len = s.prompt_len();
  r.output_len = s.num_generated();
  r.preemptions = s.preemptions;
  for (std::size_t i = 1; i < s.emit_times.size(); ++i) r.itl_s.push_back(s.emit_times[i] - s.emit_times[i - 1]);
  return r;
}

}  // namespace

RunRecords run_engine(EngineParts parts, const std::vector<Request>& requests, const EngineOptions& options) {
  auto& [backend, kv, scheduler, attention, drafter] = parts;
  const int n = static_cast<int>(requests.size());
  const int vocab = backend.shape().vocab_size;
  const Sampler sampler(options.temperature, options.top_p);

  std::vector<Sequence> seqs(static_cast<std::size_t>(n));
  std::vector<std::mt19937_64> rngs;
  for (int i = 0; i < n; ++i) {
    const Request& r = requests[static_cast<std::size_t>(i)];
    if (r.id != i) throw std::invalid_argument("run_engine: request ids must be 0..n-1 in arrival order");
    if (r.prompt.empty()) throw std::invalid_argument(fmt::format("run_engine: request {} has an empty prompt", i));
    if (r.output_len < 1) throw std::invalid_argument(fmt::format("run_engine: request {} asks for no output", i));
    if (!std::isfinite(r.arrival_s) || (i > 0 && r.arrival_s < requests[static_cast<std::size_t>(i) - 1].arrival_s))
      throw std::invalid_argument(fmt::format("run_engine: request {} arrives at {} s: not a finite time in order", i, r.arrival_s));
    seqs[static_cast<std::size_t>(i)].request = &r;
    seqs[static_cast<std::size_t>(i)].id = r.id;
    seqs[static_cast<std::size_t>(i)].tokens = r.prompt;
    rngs.push_back(Sampler::generator_for(options.seed, r.id));
  }

  RunRecords out;
  const auto t0 = Clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  int next_arrival = 0, finished = 0;
  long long tokens_out = 0;
  int peak_concurrency = 0, peak_batch_size = 0;

  ProfileWindow profile(options.profile_start_step, options.profile_end_step);
  while (finished < n) {
    double now = elapsed();
    while (next_arrival < n && requests[static_cast<std::size_t>(next_arrival)].arrival_s <= now)
      scheduler.add(&seqs[static_cast<std::size_t>(next_arrival++)]);
    if (!scheduler.has_work()) {
      if (next_arrival >= n) throw std::logic_error("engine: requests unfinished but none waiting or running");
      std::this_thread::sleep_for(
          std::chrono::duration<double>(requests[static_cast<std::size_t>(next_arrival)].arrival_s - now));
      continue;
    }
    StepRecord rec;
    rec.step = static_cast<int>(out.steps.size());
    profile.at_step(rec.step);
    NVTX_RANGE("step");
    rec.start_s = now;

    SchedulePlan plan;
    {
      NVTX_RANGE("schedule");
      plan = scheduler.schedule(kv);
    }
    for (Sequence* s : plan.preempted) {  // recompute: the sequence starts over from its tokens
      s->num_computed = 0;
      ++s->preemptions;
      drafter.release(*s);
    }
    rec.preempted = static_cast<int>(plan.preempted.size());
    if (plan.chunks.empty())
      throw std::logic_error(fmt::format("engine: scheduler '{}' planned no work with {} waiting",
                                         scheduler.name(), scheduler.num_waiting()));

    // Draft: sequences about to decode get up to k proposed tokens, appended for verification.
    std::vector<std::size_t> num_drafted(plan.chunks.size(), 0);
    std::vector<Draft> drafts;
    std::vector<const Draft*> draft_of(plan.chunks.size(), nullptr);
    if (drafter.k() > 0) {
      NVTX_RANGE("draft");
      const double d0 = elapsed();
      std::vector<Sequence*> decoding;
      std::vector<std::size_t> where;
      for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
        Sequence* s = plan.chunks[i].seq;
        if (!s->in_prefill() && s->num_uncomputed() == 1 && s->request->output_len - s->num_generated() > 1) {
          decoding.push_back(s);
          where.push_back(i);
        }
      }
      drafts = drafter.propose(decoding);
      std::size_t tokens_left = static_cast<std::size_t>(plan.tokens_left);
      for (std::size_t j = 0; j < decoding.size(); ++j) {
        Sequence* s = decoding[j];
        const std::vector<int>& d = drafts[j].tokens;
        // Never draft past the output length (the bonus token needs one slot), the step's token
        // budget or the KV space.
        std::size_t take = std::min<std::size_t>(d.size(), s->request->output_len - s->num_generated() - 1);
        take = std::min(take, tokens_left);
        while (take > 0 && !kv.ensure(s->id, static_cast<int>(s->tokens.size() + take))) --take;
        s->tokens.insert(s->tokens.end(), d.begin(), d.begin() + static_cast<std::ptrdiff_t>(take));
        tokens_left -= take;
        num_drafted[where[j]] = take;
        draft_of[where[j]] = &drafts[j];
      }
      out.facts.draft_s += elapsed() - d0;
    }

    ForwardBatch batch;
    batch.padding_rows = plan.padding_rows;
    for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
      Sequence* s = plan.chunks[i].seq;
      if (s->first_scheduled_s < 0) s->first_scheduled_s = now;
      const int len = plan.chunks[i].num_tokens + static_cast<int>(num_drafted[i]);
      batch.chunks.push_back({s->id, s->num_computed,
                              std::span<const int>(s->tokens).subspan(static_cast<std::size_t>(s->num_computed),
                                                                      static_cast<std::size_t>(len)),
                              num_drafted[i] > 0});
      const bool prefill = s->in_prefill() || plan.chunks[i].num_tokens > 1;
      (prefill ? rec.prefill_seqs : rec.decode_seqs) += 1;
      (prefill ? rec.prefill_tokens : rec.decode_tokens) += len;
    }
    rec.batch_size = static_cast<int>(batch.chunks.size());
    // Finished members of a static batch: their last position again, after the real chunks so
    // that the logit rows of those come first; the rows' outputs are ignored.
    for (Sequence* s : plan.padding_seqs) {
      const auto last = static_cast<std::size_t>(s->num_computed - 1);
      batch.chunks.push_back({s->id, s->num_computed - 1, std::span<const int>(s->tokens).subspan(last, 1), false});
    }
    rec.padding_rows = batch.padding_rows + static_cast<int>(plan.padding_seqs.size());

    const double f0 = elapsed();
    // Greedy decoding without a draft needs only each row's argmax: the backend takes it where
    // the logits are (the CUDA backend: on the device, copying back ids instead of logits).
    // Sampling without a draft likewise: the backend draws each row's token (the CUDA backend on
    // the device) with a uniform the engine draws here, from the row's sequence's generator,
    // exactly where the loop below would draw it (a sequence that has caught up samples one
    // token; one logit row a chunk). Verification needs the logits themselves.
    const std::vector<float>* logits = nullptr;
    const std::vector<int>* ids = nullptr;  // each logit row's token, when the backend chose them
    {
      NVTX_RANGE(rec.prefill_seqs > 0 ? "prefill" : "decode");  // a mixed step counts as prefill
      if (drafter.k() > 0) {
        logits = &backend.forward(batch, kv, attention);
      } else if (sampler.greedy()) {
        ids = &backend.forward_argmax(batch, kv, attention);
      } else {
        std::vector<double> uniforms(static_cast<std::size_t>(batch.num_logit_rows()), 0.0);
        for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
          const Sequence* s = plan.chunks[i].seq;
          if (static_cast<std::size_t>(s->num_computed + plan.chunks[i].num_tokens) == s->tokens.size())
            uniforms[i] = Sampler::uniform(rngs[static_cast<std::size_t>(s->id)]);
        }
        ids = &backend.forward_sample(batch, kv, attention, sampler, uniforms);
      }
    }
    rec.forward_s = elapsed() - f0;
    rec.device_s = backend.last_forward_device_s();
    if (drafter.k() > 0) out.facts.verify_s += rec.forward_s;

    // Memory as the forward pass held it: every chunk's tokens written, drafts included, before
    // rejected drafts roll back and finished sequences give theirs back.
    for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
      const Sequence* s = plan.chunks[i].seq;
      kv.set_length(s->id, s->num_computed + plan.chunks[i].num_tokens + static_cast<int>(num_drafted[i]));
    }
    const KvUsage u = kv.usage();
    rec.kv_reserved_bytes = u.reserved_bytes;
    rec.kv_used_bytes = u.used_bytes;
    rec.kv_blocks_allocated = u.blocks_allocated;
    rec.kv_tokens_stored = u.tokens_stored;
    // Sequences holding KV and not finished (a static batch's finished members are padding).
    rec.running_at_forward = scheduler.num_running() - static_cast<int>(plan.padding_seqs.size());

    // Sample (or verify), then advance every sequence.
    std::vector<std::pair<Sequence*, int>> emitted;
    {
      NVTX_RANGE("sample");
      std::size_t row = 0;
      for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
        Sequence* s = plan.chunks[i].seq;
        const std::size_t nd = num_drafted[i];
        const std::size_t rows = nd > 0 ? plan.chunks[i].num_tokens + nd : 1;
        const auto logit_row = [&](std::size_t r) {
          return std::span<const float>(*logits).subspan((row + r) * static_cast<std::size_t>(vocab),
                                                         static_cast<std::size_t>(vocab));
        };
        s->num_computed += plan.chunks[i].num_tokens;
        if (s->num_computed + nd == s->tokens.size()) {  // caught up: the next token can be sampled
          int accepted = 0, token = 0;
          auto& rng = rngs[static_cast<std::size_t>(s->id)];
          if (nd > 0) {
            NVTX_RANGE("verify");
            // Verify: keep the longest accepted prefix of the draft (greedy: equal to the target's
            // argmax; sampling: lossless rejection sampling), plus the target's token after it.
            const std::size_t base = rows - nd - 1;
            const auto& q = draft_of[i]->probs;
            const Verdict v = verify_draft(
                sampler, std::span<const float>(*logits).subspan((row + base) * static_cast<std::size_t>(vocab),
                                                                 (nd + 1) * static_cast<std::size_t>(vocab)),
                vocab, std::span<const int>(s->tokens).subspan(static_cast<std::size_t>(s->num_computed), nd),
                q.empty() ? std::span<const float>() : std::span<const float>(q).first(nd * static_cast<std::size_t>(vocab)),
                rng, drafter.simulated_alpha());
            accepted = v.accepted;
            token = v.token;
            s->tokens.resize(s->num_computed + accepted);
            s->num_computed += accepted;
            out.facts.num_drafts += 1;
            out.facts.draft_tokens += static_cast<long long>(nd);
            out.facts.accepted_tokens += accepted;
            if (out.facts.accepted_at_pos.size() < nd) out.facts.accepted_at_pos.resize(nd, 0);
            for (int a = 0; a < accepted; ++a) out.facts.accepted_at_pos[static_cast<std::size_t>(a)] += 1;
            kv.truncate(s->id, s->num_computed);  // rejected positions: both caches roll back
            drafter.rollback(*s, s->num_computed);
            // A request that ends at an accepted EOS stops there, without the token after it.
            for (int a = 0; options.eos_token >= 0 && a < accepted; ++a)
              if (s->tokens[static_cast<std::size_t>(s->num_computed - accepted + a)] == options.eos_token) {
                token = options.eos_token;
                s->num_computed -= accepted - a;
                s->tokens.resize(static_cast<std::size_t>(s->num_computed));
                kv.truncate(s->id, s->num_computed);
                accepted = a;
                break;
              }
          } else {
            token = ids ? (*ids)[row + rows - 1] : sampler.sample(logit_row(rows - 1), rng);
          }
          s->tokens.push_back(token);
          if (options.eos_token >= 0 && token == options.eos_token) s->stopped_at_eos = true;
          emitted.emplace_back(s, accepted + 1);
        }
        kv.set_length(s->id, s->num_computed);
        row += rows;
      }
    }
    const double t_emit = elapsed();
    for (auto [s, count] : emitted) {
      s->emit_times.push_back(t_emit);
      s->emit_counts.push_back(count);
      tokens_out += count;
      if (s->done()) {
        s->state = SeqState::Finished;
        scheduler.finished(s, kv);
        drafter.release(*s);
        ++finished;
      }
    }

    rec.running = scheduler.num_running();
    rec.waiting = scheduler.num_waiting();
    rec.wall_s = elapsed() - rec.start_s;
    peak_concurrency = std::max(peak_concurrency, rec.running_at_forward);
    peak_batch_size = std::max(peak_batch_size, rec.batch_size);
    out.steps.push_back(rec);
    if (options.on_step) options.on_step(finished, n, elapsed(), tokens_out);
  }

  out.facts.run_wall_s = elapsed();
  out.facts.lossless = drafter.lossless();
  out.facts.peak_concurrency = peak_concurrency;
  out.facts.peak_batch_size = peak_batch_size;
  out.facts.weights_bytes = backend.weights_bytes();
  out.facts.kv_capacity_bytes = kv.usage().capacity_bytes;
  for (const Sequence& s : seqs) {
    out.requests.push_back(record_of(s));
    out.output_tokens.emplace_back(s.tokens.begin() + s.prompt_len(), s.tokens.end());
  }
  return out;
}

}  // namespace ablate
