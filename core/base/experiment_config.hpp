#pragma once
// An experiment as the engine sees it: every key of a YAML config, resolved and validated.
// The YAML key of each field is given beside it; docs, CSV columns and code use the same names.
#include <optional>
#include <string>
#include <vector>

namespace ablate {

struct LengthDist {                 // workload.prompt_len / workload.output_len
  std::string dist = "fixed";       // fixed | uniform | normal | lognormal | trace
  int value = 128;                  // fixed
  int min = 1;                      // uniform, and the clip range of normal / lognormal
  int max = 1024;
  double mean = 128.0;              // normal, lognormal (mean of the lengths, not of their log)
  double std = 32.0;                // normal, lognormal
};

struct TraceConfig {                // workload.trace
  std::string path;                 // CSV with TIMESTAMP,ContextTokens,GeneratedTokens
  double time_scale = 1.0;          // arrival gaps multiplied by this (0.5 = twice as fast)
  int start_row = 0;                // first data row used (0-based, header excluded)
  std::string rows = "consecutive"; // consecutive: rows [start_row, start_row+N) | random: N distinct rows
                                    // of [start_row, end), drawn with the seed (the trace's distribution)
  int max_prompt_len = 0;           // caps (0 = none); prompt cap leaves room for the output
  int max_output_len = 0;
};

struct SharedPrefixConfig {         // workload.shared_prefix: every prompt starts with one of `groups` prefixes
  int tokens = 0;                   // prefix length (0 = none)
  int groups = 1;                   // distinct prefixes (seeded ids); request i draws one
};

struct ConversationConfig {         // workload.conversation: multi-turn chats
  int turns = 1;                    // turns per conversation; 1 = independent requests
  double think_time_ms = 0.0;       // a turn arrives this long after the previous turn's last token (mean)
  std::string think_time_dist = "fixed";  // fixed | exponential (seeded, mean think_time_ms)
};

struct WorkloadConfig {             // workload
  int requests = 16;                // workload.requests
  std::string arrival = "offline";  // offline | poisson | gamma | trace
  double rate = 1.0;                // requests per second (poisson, gamma)
  double burstiness = 1.0;          // gamma shape; 1 = Poisson
  LengthDist prompt_len;            // workload.prompt_len.*
  LengthDist output_len;            // workload.output_len.*
  TraceConfig trace;                // workload.trace.*
  std::string prompts;              // workload.prompts: text/JSONL prompts file ("" = random ids); gguf, llama2c
  SharedPrefixConfig shared_prefix; // workload.shared_prefix.*
  ConversationConfig conversation;  // workload.conversation.*
};

struct ModelConfig {                // model
  std::string source = "synthetic"; // synthetic | llama2c | gguf
  std::string preset = "tiny";      // synthetic shape (tiny | stories260k | smollm2-135m | llama2-7b)
  std::string path;                 // llama2c checkpoint (.bin)
  std::string gguf;                 // gguf checkpoint (.gguf; weights and tokenizer)
  std::string tokenizer;            // llama2c tokenizer (.bin), optional
  int seed = 0;                     // synthetic weights seed (model.seed)
};

struct SchedulerConfig {            // scheduler
  int max_batch = 8;                // static: sequences per batch
  int max_num_seqs = 64;            // continuous: sequences running at once
  int max_batched_tokens = 2048;    // continuous: tokens per step
  std::string prefill = "prefill_first";  // continuous: prefill_first | chunked
};

struct KvConfig {                   // kv
  std::string layout = "contiguous";       // contiguous | paged
  double memory_mb = 256;                  // KV budget, MiB, the same for every layout
  std::string reserve = "max_seq_len";     // contiguous: max_seq_len | prompt_plus_max_new
  int block_size = 16;                     // paged: tokens per block
  std::string prefix_cache = "off";        // paged: off | on (blocks of a common prefix shared, not recomputed)
  std::string dtype = "auto";              // K/V elements: auto | fp32 | bf16 | fp16 | fp8_e4m3 | int8
};

struct SpeculativeConfig {          // speculative
  std::string draft = "none";       // none | model | layer_skip | simulated
  int k = 4;
  double alpha = 0.8;               // simulated acceptance probability
  std::string draft_preset;         // model: synthetic preset of the draft
  std::string draft_model;          // model: a checkpoint instead (.gguf, or llama2.c .bin)
  int draft_layers = 1;             // layer_skip: target layers the draft uses
};

struct SamplingConfig {             // sampling
  double temperature = 0.0;         // 0 = greedy
  double top_p = 1.0;
  bool stop_at_eos = false;         // real-model runs may stop at EOS; synthetic never do
};

struct SloConfig {                  // slo (0 = no limit); goodput counts requests within all
  double ttft_ms = 0;
  double tpot_ms = 0;
  double e2el_ms = 0;
};

struct ProfileConfig {              // profile: the steps bracketed by cudaProfilerStart/Stop
  int start_step = 0;               // first step captured
  int end_step = 0;                 // first step not captured; 0 = no capture window
};

struct ExperimentConfig {
  std::string experiment = "experiment";  // results/<experiment>/<run id>/
  int seed = 0;                     // workload and sampling
  int threads = 0;                  // 0 = all cores
  std::string backend = "cpu";      // cpu | cuda
  std::string batching = "static";  // static | continuous
  std::string attention = "naive";  // naive | flash | flash_split
  std::string dtype = "fp32";       // fp32 | bf16 | fp16: weights (cpu: the matrices); cuda: KV too
  bool quality = false;             // measure KL / top-1 against an fp32 reference (and perplexity on real text)
  bool cuda_graphs = false;         // cuda: decode steps replayed as captured CUDA graphs
  bool cuda_pdl = false;            // cuda: programmatic dependent launch between the step's kernels
  bool cuda_l2_prefetch = false;    // cuda: each layer's output-projection weights into L2 during attention
  int cuda_flash_decode_version = 0;  // cuda, flash: the decode attention kernel's version; 0 = the backend's
  int max_seq_len = 0;              // 0 = the model's; caps prompt + output per sequence
  ModelConfig model;
  SchedulerConfig scheduler;
  KvConfig kv;
  SpeculativeConfig speculative;
  SamplingConfig sampling;
  WorkloadConfig workload;
  SloConfig slo;
  ProfileConfig profile;
  int repeat = 1;                   // timed runs per sweep point
  int warmup = 0;                   // untimed runs per sweep point before them
  std::string order = "interleaved";  // interleaved: round r of every point (seeded order) before round r+1
  double target_ci = 0.0;           // > 0: add rounds until every point's CI half-width / centre <= this
  std::string target_metric = "output_throughput";  // the metric target_ci applies to
  int max_repeat = 20;              // the most rounds target_ci may run
};

}  // namespace ablate
