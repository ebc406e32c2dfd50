#include "engine/engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "backend/backend.hpp"
#include "base/nvtx.hpp"
#include "base/sampler.hpp"
#include "engine/profiler.hpp"
#include "kv/kv_cache.hpp"
#include "sched/scheduler.hpp"
#include "speculative/drafter.hpp"
#include "speculative/verify.hpp"

namespace ablate {

namespace {

using Clock = std::chrono::steady_clock;

// What the draft phase proposed for a step's chunks: per chunk, the draft tokens appended to its
// sequence for verification (0: none) and the draft they came from.
struct StepDrafts {
  std::vector<std::size_t> num_drafted;
  std::vector<Draft> drafts;
  std::vector<const Draft*> draft_of;
};

// The forward pass's result: the logits (to verify drafts) or each logit row's token, when the
// backend chose them itself.
struct ForwardResult {
  const std::vector<float>* logits = nullptr;
  const std::vector<int>* ids = nullptr;
};

// A sequence that emitted tokens this step, and how many.
struct Emission {
  Sequence* seq;
  int count;
};

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
  r.cached_prompt_tokens = std::max(0, s.cached_prompt_tokens);
  r.conversation = s.request->conversation >= 0 ? s.request->conversation : s.id;
  r.turn = s.request->turn;
  for (std::size_t i = 1; i < s.emit_times.size(); ++i) r.itl_s.push_back(s.emit_times[i] - s.emit_times[i - 1]);
  return r;
}

// The requests, after checking that run_engine can run them.
const std::vector<Request>& checked(const std::vector<Request>& requests) {
  double last_arrival = -std::numeric_limits<double>::infinity();
  std::vector<char> followed(requests.size(), 0);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    if (r.id != static_cast<int>(i)) throw std::invalid_argument("run_engine: request ids must be 0..n-1 in arrival order");
    if (r.prompt.empty()) throw std::invalid_argument(fmt::format("run_engine: request {} has an empty prompt", i));
    if (r.output_len < 1) throw std::invalid_argument(fmt::format("run_engine: request {} asks for no output", i));
    if (r.follows >= 0) {  // a later turn: its arrival is made when the turn before it finishes
      if (r.follows >= r.id)
        throw std::invalid_argument(fmt::format("run_engine: request {} follows request {}, not an earlier one", i, r.follows));
      if (followed[static_cast<std::size_t>(r.follows)]++)
        throw std::invalid_argument(fmt::format("run_engine: two requests follow request {}", r.follows));
      if (!std::isfinite(r.think_s) || r.think_s < 0)
        throw std::invalid_argument(fmt::format("run_engine: request {} thinks for {} s: not a finite time >= 0", i, r.think_s));
      continue;
    }
    if (!std::isfinite(r.arrival_s) || r.arrival_s < last_arrival)
      throw std::invalid_argument(fmt::format("run_engine: request {} arrives at {} s: not a finite time in order", i, r.arrival_s));
    last_arrival = r.arrival_s;
  }
  return requests;
}

// Requests in arrival order: the independent ones from the start, a conversation's next turn
// once the turn before it retires, since its prompt holds that turn's output and it arrives a
// think time after that turn's last token.
class Arrivals {
 public:
  explicit Arrivals(std::vector<Request>& requests) : requests_(requests), next_turn_(requests.size(), -1) {
    for (const Request& r : requests) {
      if (r.follows >= 0) next_turn_[static_cast<std::size_t>(r.follows)] = r.id;
      else due_.push({r.arrival_s, r.id});
    }
  }
  bool empty() const { return due_.empty(); }
  double next_time() const { return due_.top().first; }
  // The earliest request due by `now` (ties: the lower id), or -1.
  int pop_due(double now) {
    if (due_.empty() || due_.top().first > now) return -1;
    const int id = due_.top().second;
    due_.pop();
    return id;
  }
  // Request `id` emitted its last token at `t`; `tokens` are its prompt and output.
  void retired(int id, std::span<const int> tokens, double t) {
    const int next = next_turn_[static_cast<std::size_t>(id)];
    if (next < 0) return;
    Request& r = requests_[static_cast<std::size_t>(next)];
    r.prompt.insert(r.prompt.begin(), tokens.begin(), tokens.end());  // the history, then the new message
    r.arrival_s = t + r.think_s;
    due_.push({r.arrival_s, r.id});
  }

 private:
  std::vector<Request>& requests_;
  std::vector<int> next_turn_;  // per request: the id of the turn that follows it, or -1
  std::priority_queue<std::pair<double, int>, std::vector<std::pair<double, int>>, std::greater<>> due_;
};

// One run of the decode loop. step() names the phases; each phase below is a member with one
// job, taking the step's data as arguments (only the run-wide state lives in members).
class Engine {
 public:
  Engine(EngineParts parts, const std::vector<Request>& requests, const EngineOptions& options)
      : backend_(parts.backend), kv_(parts.kv), scheduler_(parts.scheduler), attention_(parts.attention),
        drafter_(parts.drafter), requests_(checked(requests)), arrivals_(requests_), options_(options),
        sampler_(options.temperature, options.top_p), vocab_(parts.backend.shape().vocab_size),
        profile_(options.profile_start_step, options.profile_end_step) {
    seqs_.resize(requests_.size());
    for (const Request& r : requests_) {
      Sequence& s = seqs_[static_cast<std::size_t>(r.id)];
      s.request = &r;
      s.id = r.id;
      rngs_.push_back(Sampler::generator_for(options.seed, r.id));
    }
  }

  RunRecords run() {
    t0_ = Clock::now();
    while (finished_ < static_cast<int>(requests_.size())) {
      if (options_.check_stop) options_.check_stop();
      admit_arrivals();
      if (!scheduler_.has_work()) {
        wait_for_next_arrival();
        continue;
      }
      step();
      if (options_.on_step) options_.on_step(finished_, static_cast<int>(requests_.size()), elapsed(), tokens_out_);
    }
    return finish_run();
  }

 private:
  void step() {
    StepRecord rec;
    rec.step = static_cast<int>(out_.steps.size());
    rec.start_s = elapsed();
    profile_.at_step(rec.step);
    NVTX_RANGE("step");

    const SchedulePlan plan = schedule(rec);
    const StepDrafts drafts = draft(plan);
    const ForwardBatch batch = build_batch(plan, drafts, rec);
    const ForwardResult result = forward(batch, plan, rec);
    record_kv_at_forward(plan, drafts, rec);
    const std::vector<Emission> emitted = advance(plan, drafts, result);
    emit_and_retire(emitted);

    rec.running = scheduler_.num_running();
    rec.waiting = scheduler_.num_waiting();
    rec.wall_s = elapsed() - rec.start_s;
    peak_concurrency_ = std::max(peak_concurrency_, rec.running_at_forward);
    peak_batch_size_ = std::max(peak_batch_size_, rec.batch_size);
    out_.steps.push_back(rec);
  }

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }

  // Requests whose arrival time has passed join the scheduler's queue with their prompt (a later
  // turn's is complete only now).
  void admit_arrivals() {
    const double now = elapsed();
    for (int id; (id = arrivals_.pop_due(now)) >= 0;) {
      Sequence& s = seqs_[static_cast<std::size_t>(id)];
      s.tokens = s.request->prompt;
      scheduler_.add(&s);
    }
  }

  void wait_for_next_arrival() {
    if (arrivals_.empty()) throw std::logic_error("engine: requests unfinished but none waiting, running or to arrive");
    // In slices, so that a stop asked for meanwhile is seen within 50 ms.
    const double wait = arrivals_.next_time() - elapsed();
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, 0.05)));
  }

  // The scheduler picks the step's chunks; a preempted sequence starts over from its tokens (the
  // scheduler reset its num_computed, or set it to its cached prefix if it was re-admitted at once).
  SchedulePlan schedule(StepRecord& rec) {
    SchedulePlan plan;
    {
      NVTX_RANGE("schedule");
      plan = scheduler_.schedule(kv_);
    }
    for (Sequence* s : plan.preempted) {
      ++s->preemptions;
      drafter_.release(*s);
    }
    rec.preempted = static_cast<int>(plan.preempted.size());
    if (plan.chunks.empty())
      throw std::logic_error(fmt::format("engine: scheduler '{}' planned no work with {} waiting", scheduler_.name(),
                                         scheduler_.num_waiting()));
    return plan;
  }

  // Sequences about to decode get up to k proposed tokens, appended to their tokens for
  // verification: never past the output length (the bonus token needs one slot), the step's
  // token budget or the KV space.
  StepDrafts draft(const SchedulePlan& plan) {
    StepDrafts d;
    d.num_drafted.assign(plan.chunks.size(), 0);
    d.draft_of.assign(plan.chunks.size(), nullptr);
    if (drafter_.k() == 0) return d;
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
    d.drafts = drafter_.propose(decoding);
    std::size_t tokens_left = static_cast<std::size_t>(plan.tokens_left);
    for (std::size_t j = 0; j < decoding.size(); ++j) {
      Sequence* s = decoding[j];
      const std::vector<int>& proposed = d.drafts[j].tokens;
      std::size_t take = std::min<std::size_t>(proposed.size(), s->request->output_len - s->num_generated() - 1);
      take = std::min(take, tokens_left);
      while (take > 0 && !kv_.ensure(s->id, static_cast<int>(s->tokens.size() + take))) --take;
      s->tokens.insert(s->tokens.end(), proposed.begin(), proposed.begin() + static_cast<std::ptrdiff_t>(take));
      tokens_left -= take;
      d.num_drafted[where[j]] = take;
      d.draft_of[where[j]] = &d.drafts[j];
    }
    out_.facts.draft_s += elapsed() - d0;
    return d;
  }

  // The ragged batch: each chunk's tokens (drafts included), then static batching's finished
  // members, which recompute their last position as padding (after the real chunks, so that the
  // real chunks' logit rows come first; the padding rows' outputs are ignored).
  ForwardBatch build_batch(const SchedulePlan& plan, const StepDrafts& d, StepRecord& rec) {
    ForwardBatch batch;
    batch.padding_rows = plan.padding_rows;
    for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
      Sequence* s = plan.chunks[i].seq;
      if (s->first_scheduled_s < 0) s->first_scheduled_s = rec.start_s;
      const int len = plan.chunks[i].num_tokens + static_cast<int>(d.num_drafted[i]);
      batch.chunks.push_back({s->id, s->num_computed,
                              std::span<const int>(s->tokens).subspan(static_cast<std::size_t>(s->num_computed),
                                                                      static_cast<std::size_t>(len)),
                              d.num_drafted[i] > 0});
      const bool prefill = s->in_prefill() || plan.chunks[i].num_tokens > 1;
      (prefill ? rec.prefill_seqs : rec.decode_seqs) += 1;
      (prefill ? rec.prefill_tokens : rec.decode_tokens) += len;
    }
    rec.batch_size = static_cast<int>(batch.chunks.size());
    for (Sequence* s : plan.padding_seqs) {
      const auto last = static_cast<std::size_t>(s->num_computed - 1);
      batch.chunks.push_back({s->id, s->num_computed - 1, std::span<const int>(s->tokens).subspan(last, 1), false});
    }
    rec.padding_rows = batch.padding_rows + static_cast<int>(plan.padding_seqs.size());
    return batch;
  }

  // The target's forward pass. Greedy decoding without a draft needs only each row's argmax,
  // and sampling without a draft only each row's token: the backend takes them where the logits
  // are (the CUDA backend on the device, copying back ids instead of logits), with a uniform the
  // engine draws from the row's sequence's generator exactly where advance() would draw it (a
  // sequence that has caught up samples one token; one logit row a chunk). Verification needs
  // the logits themselves.
  ForwardResult forward(const ForwardBatch& batch, const SchedulePlan& plan, StepRecord& rec) {
    const double f0 = elapsed();
    ForwardResult r;
    {
      NVTX_RANGE(rec.prefill_seqs > 0 ? "prefill" : "decode");  // a mixed step counts as prefill
      if (drafter_.k() > 0) {
        r.logits = &backend_.forward(batch, kv_, attention_);
      } else if (sampler_.greedy()) {
        r.ids = &backend_.forward_argmax(batch, kv_, attention_);
      } else {
        std::vector<double> uniforms(static_cast<std::size_t>(batch.num_logit_rows()), 0.0);
        for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
          const Sequence* s = plan.chunks[i].seq;
          if (static_cast<std::size_t>(s->num_computed + plan.chunks[i].num_tokens) == s->tokens.size())
            uniforms[i] = Sampler::uniform(rngs_[static_cast<std::size_t>(s->id)]);
        }
        r.ids = &backend_.forward_sample(batch, kv_, attention_, sampler_, uniforms);
      }
    }
    rec.forward_s = elapsed() - f0;
    rec.device_s = backend_.last_forward_device_s();
    if (drafter_.k() > 0) out_.facts.verify_s += rec.forward_s;
    return r;
  }

  // Memory as the forward pass held it: every chunk's tokens written, drafts included, before
  // rejected drafts roll back and finished sequences give theirs back.
  void record_kv_at_forward(const SchedulePlan& plan, const StepDrafts& d, StepRecord& rec) {
    for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
      const Sequence* s = plan.chunks[i].seq;
      kv_.set_length(s->id, s->num_computed + plan.chunks[i].num_tokens + static_cast<int>(d.num_drafted[i]));
    }
    const KvUsage u = kv_.usage();
    rec.kv_reserved_bytes = u.reserved_bytes;
    rec.kv_used_bytes = u.used_bytes;
    rec.kv_blocks_allocated = u.blocks_allocated;
    rec.kv_blocks_shared = u.blocks_shared;
    rec.kv_tokens_stored = u.tokens_stored;
    // Sequences holding KV and not finished (a static batch's finished members are padding).
    rec.running_at_forward = scheduler_.num_running() - static_cast<int>(plan.padding_seqs.size());
  }

  // Every chunk's sequence moves past the tokens it ran; one that has caught up takes its next
  // token (sampled, chosen by the backend, or the verified draft's continuation). The computed
  // tokens are committed to the KV cache (a prefix cache registers their full blocks).
  std::vector<Emission> advance(const SchedulePlan& plan, const StepDrafts& d, const ForwardResult& r) {
    NVTX_RANGE("sample");
    std::vector<Emission> emitted;
    std::size_t row = 0;
    for (std::size_t i = 0; i < plan.chunks.size(); ++i) {
      Sequence* s = plan.chunks[i].seq;
      const std::size_t nd = d.num_drafted[i];
      const std::size_t rows = nd > 0 ? plan.chunks[i].num_tokens + nd : 1;
      s->num_computed += plan.chunks[i].num_tokens;
      if (s->num_computed + nd == s->tokens.size()) {  // caught up: the next token can be sampled
        auto& rng = rngs_[static_cast<std::size_t>(s->id)];
        int kept = 0, token = 0;
        if (nd > 0) {
          const std::size_t base = row + rows - nd - 1;  // the row of the last computed token
          const auto logits = std::span<const float>(*r.logits)
                                  .subspan(base * static_cast<std::size_t>(vocab_), (nd + 1) * static_cast<std::size_t>(vocab_));
          const SequenceVerdict v = verify_sequence(*s, nd, *d.draft_of[i], logits, vocab_, sampler_, rng, kv_, drafter_,
                                                    options_.eos_token);
          count_verdict(nd, v.accepted);
          kept = v.kept;
          token = v.token;
        } else if (r.ids) {
          token = (*r.ids)[row + rows - 1];
        } else {
          token = sampler_.sample(std::span<const float>(*r.logits)
                                      .subspan((row + rows - 1) * static_cast<std::size_t>(vocab_), static_cast<std::size_t>(vocab_)),
                                  rng);
        }
        s->tokens.push_back(token);
        if (options_.eos_token >= 0 && token == options_.eos_token) s->stopped_at_eos = true;
        emitted.push_back({s, kept + 1});
      }
      kv_.commit(s->id, std::span<const int>(s->tokens).first(static_cast<std::size_t>(s->num_computed)));
      row += rows;
    }
    return emitted;
  }

  void count_verdict(std::size_t drafted, int accepted) {
    RunFacts& f = out_.facts;
    f.num_drafts += 1;
    f.draft_tokens += static_cast<long long>(drafted);
    f.accepted_tokens += accepted;
    if (f.accepted_at_pos.size() < drafted) f.accepted_at_pos.resize(drafted, 0);
    for (int a = 0; a < accepted; ++a) f.accepted_at_pos[static_cast<std::size_t>(a)] += 1;
  }

  // The step's tokens are out: stamp them, and retire the sequences that are done (continuous
  // batching frees their KV now, static batching when the whole batch is done); a conversation's
  // next turn is due a think time from now.
  void emit_and_retire(const std::vector<Emission>& emitted) {
    const double t_emit = elapsed();
    for (auto [s, count] : emitted) {
      s->emit_times.push_back(t_emit);
      s->emit_counts.push_back(count);
      tokens_out_ += count;
      if (s->done()) {
        s->state = SeqState::Finished;
        scheduler_.finished(s, kv_);
        drafter_.release(*s);
        arrivals_.retired(s->id, s->tokens, t_emit);
        ++finished_;
      }
    }
  }

  RunRecords finish_run() {
    out_.facts.run_wall_s = elapsed();
    out_.facts.lossless = drafter_.lossless();
    out_.facts.peak_concurrency = peak_concurrency_;
    out_.facts.peak_batch_size = peak_batch_size_;
    out_.facts.weights_bytes = backend_.weights_bytes();
    out_.facts.bits_per_weight = backend_.bits_per_weight();
    out_.facts.kv_capacity_bytes = kv_.usage().capacity_bytes;
    for (const Sequence& s : seqs_) {
      out_.requests.push_back(record_of(s));
      out_.output_tokens.emplace_back(s.tokens.begin() + s.prompt_len(), s.tokens.end());
    }
    return std::move(out_);
  }

  Backend& backend_;
  KvCache& kv_;
  Scheduler& scheduler_;
  Attention& attention_;
  Drafter& drafter_;
  std::vector<Request> requests_;  // a copy: a later turn's prompt and arrival are filled in at run time
  Arrivals arrivals_;
  const EngineOptions& options_;
  const Sampler sampler_;
  const int vocab_;
  ProfileWindow profile_;

  std::vector<Sequence> seqs_;
  std::vector<std::mt19937_64> rngs_;  // one sampling stream per request
  Clock::time_point t0_;
  int finished_ = 0;
  long long tokens_out_ = 0;
  int peak_concurrency_ = 0, peak_batch_size_ = 0;
  RunRecords out_;
};

}  // namespace

RunRecords run_engine(EngineParts parts, const std::vector<Request>& requests, const EngineOptions& options) {
  return Engine(parts, requests, options).run();
}

}  // namespace ablate
