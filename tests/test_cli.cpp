// The `ablate` command as a user runs it: exit codes, what lands on disk, the CSV columns.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <sys/wait.h>

#include "backend/cuda_backend.hpp"
#include "base/paths.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

struct Result {
  int status = -1;
  std::string out, err;
};

struct Sandbox {
  fs::path dir;
  Sandbox() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("ablate_test_cli_" + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~Sandbox() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name, std::ios::binary) << text;
    return dir / name;
  }
  std::string read(const fs::path& p) const {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // Runs `ablate ARGS` with stdout and stderr captured.
  Result ablate(const std::string& args) const {
    const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
    const std::string cmd = std::string("'") + ABLATE_BINARY + "' " + args + " >'" + out.string() + "' 2>'" +
                            err.string() + "'";
    const int raw = std::system(cmd.c_str());
    Result r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = read(out);
    r.err = read(err);
    return r;
  }
  int entries(const fs::path& p) const {
    if (!fs::exists(p)) return 0;
    return static_cast<int>(std::distance(fs::directory_iterator(p), fs::directory_iterator()));
  }
};

std::vector<std::string> header_of(const std::string& csv_text) {
  std::vector<std::string> cols;
  std::stringstream line(csv_text.substr(0, csv_text.find('\n')));
  for (std::string c; std::getline(line, c, ',');) cols.push_back(c);
  return cols;
}

int lines_of(const std::string& text) { return static_cast<int>(std::count(text.begin(), text.end(), '\n')); }

const char* kTinyConfig = R"(experiment: cli_test
model: {source: synthetic, preset: tiny}
max_seq_len: 64
kv: {memory_mb: 1}
workload:
  requests: 5
  prompt_len: {dist: uniform, min: 2, max: 12}
  output_len: 4
sweep:
  scheduler.max_batch: [1, 4]
)";

}  // namespace

TEST_CASE("cli: a bad config exits 2 with file, line, key and allowed values, and writes nothing", "[cli]") {
  Sandbox sb;
  const auto cfg = sb.write("bad.yaml", "experiment: x\nkv:\n  layout: contigous\n");
  const fs::path results = sb.dir / "results";
  const Result r = sb.ablate("run '" + cfg.string() + "' --quiet --out '" + results.string() + "'");
  CHECK(r.status == 2);
  CHECK_THAT(r.err, Contains(cfg.string() + ":3:11: kv.layout: unknown value \"contigous\" (did you mean \"contiguous\"?)"));
  CHECK_THAT(r.err, Contains("allowed: contiguous, paged"));
  CHECK(r.out.empty());
  CHECK(sb.entries(results) == 0);

  const Result v = sb.ablate("validate '" + cfg.string() + "'");
  CHECK(v.status == 2);
  CHECK_THAT(v.err, Contains(":3:11: kv.layout"));

  // An impossible combination: a KV budget below one sequence.
  const auto tight = sb.write("tight.yaml", "model: {preset: smollm2-135m}\nkv: {memory_mb: 1}\n");
  const Result t = sb.ablate("run '" + tight.string() + "' --quiet --out '" + results.string() + "'");
  CHECK(t.status == 2);
  CHECK_THAT(t.err, Contains("kv.memory_mb"));
  CHECK_THAT(t.err, Contains("fewer than one sequence needs"));
  CHECK(sb.entries(results) == 0);

  // A bad --set and a missing file.
  CHECK(sb.ablate("run '" + cfg.string() + "' --set kv.layout=contiguous --set seed=-3 --out '" + results.string() + "'")
            .status == 2);
  const Result missing = sb.ablate("run '" + (sb.dir / "nope.yaml").string() + "'");
  CHECK(missing.status == 2);
  CHECK_THAT(missing.err, Contains("nope.yaml"));
  CHECK(sb.entries(results) == 0);
}

TEST_CASE("cli: backend cuda without a usable device exits 2 with \"no CUDA device\", and writes nothing", "[cli][cuda]") {
  bool present = true;
  try {
    ablate::cuda_backend_check_device();
  } catch (const std::exception&) {
    present = false;
  }
  if (present) {
    WARN("SKIPPED: this machine has a CUDA device; the no-device path is not reachable here");
    return;
  }
  Sandbox sb;
  const auto cfg = sb.write("gpu.yaml", std::string(kTinyConfig) + "backend: cuda\n");
  const fs::path results = sb.dir / "results";
  const Result r = sb.ablate("run '" + cfg.string() + "' --quiet --out '" + results.string() + "'");
  CHECK(r.status == 2);
#if defined(ABLATE_HAVE_CUDA)
  CHECK_THAT(r.err, Contains(cfg.string() + ": backend: cuda: no CUDA device: "));
#else
  CHECK_THAT(r.err, Contains("backend: \"cuda\" is not available in this build"));
#endif
  CHECK(r.out.empty());
  CHECK(sb.entries(results) == 0);
  // The same config on the CPU is unaffected.
  CHECK(sb.ablate("run '" + cfg.string() + "' --set backend=cpu --quiet --out '" + results.string() + "'").status == 0);
}

TEST_CASE("cli: run writes the three CSVs with the metrics.md columns, one row per point", "[cli]") {
  Sandbox sb;
  const auto cfg = sb.write("tiny.yaml", kTinyConfig);
  const fs::path results = sb.dir / "results";
  const Result r = sb.ablate("run '" + cfg.string() + "' --quiet --run-id first --out '" + results.string() + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const fs::path run = results / "cli_test" / "first";
  for (const char* f : {"summary.csv", "requests.csv", "steps.csv", "config.yaml", "provenance.yaml"})
    CHECK(fs::exists(run / f));
  CHECK(sb.entries(results / "cli_test") == 1);  // no partial folder left behind

  // The summary table goes to stdout, one line per sweep point.
  CHECK_THAT(r.out, Contains("scheduler.max_batch"));
  CHECK_THAT(r.out, Contains("out tok/s"));

  const std::string summary = sb.read(run / "summary.csv");
  CHECK(lines_of(summary) == 1 + 2);
  const auto cols = header_of(summary);
  const auto has = [&](const std::string& c) { return std::find(cols.begin(), cols.end(), c) != cols.end(); };
  for (const char* c : {"point", "repeat", "git_commit", "git_dirty", "compiler", "build_type", "backend", "device",
                        "threads", "start_time", "seed", "batching", "kv.layout", "attention", "speculative.draft",
                        "scheduler.max_batch", "completed", "duration_s", "request_throughput", "output_throughput",
                        "total_token_throughput", "goodput", "preemptions", "weights_bytes", "kv_capacity_bytes",
                        "kv_reserved_peak_bytes", "kv_used_peak_bytes", "kv_waste", "peak_concurrency",
                        "peak_host_bytes", "peak_device_bytes", "num_drafts", "acceptance_rate"})
  {
    INFO("summary.csv column " << c);
    CHECK(has(c));
  }
  for (const char* m : {"ttft", "tpot", "itl", "e2el"})
    for (const char* s : {"_mean_ms", "_median_ms", "_std_ms", "_p90_ms", "_p95_ms", "_p99_ms"})
      CHECK(has(std::string(m) + s));

  const std::string requests = sb.read(run / "requests.csv");
  CHECK(lines_of(requests) == 1 + 2 * 5);  // every request of both points, once each
  for (const char* c : {"request_id", "arrival_s", "queue_time_ms", "ttft_ms", "tpot_ms", "e2el_ms", "prompt_len",
                        "output_len", "preemptions"}) {
    const auto rc = header_of(requests);
    CHECK(std::find(rc.begin(), rc.end(), c) != rc.end());
  }
  const auto sc = header_of(sb.read(run / "steps.csv"));
  for (const char* c : {"step", "wall_s", "batch_size", "prefill_tokens", "decode_tokens", "running", "waiting",
                        "kv_reserved_bytes", "kv_used_bytes"})
    CHECK(std::find(sc.begin(), sc.end(), c) != sc.end());

  // The same run id again: refused, the first results untouched; --force replaces them.
  const auto before = sb.read(run / "summary.csv");
  const Result again = sb.ablate("run '" + cfg.string() + "' --quiet --run-id first --out '" + results.string() + "'");
  CHECK(again.status != 0);
  CHECK_THAT(again.err, Contains("already exists"));
  CHECK(sb.read(run / "summary.csv") == before);
  const Result forced =
      sb.ablate("run '" + cfg.string() + "' --quiet --force --run-id first --out '" + results.string() + "'");
  CHECK(forced.status == 0);
  CHECK(sb.entries(results / "cli_test") == 1);

  // Automatic ids never overwrite: two runs, two folders.
  CHECK(sb.ablate("run '" + cfg.string() + "' --quiet --out '" + results.string() + "'").status == 0);
  CHECK(sb.ablate("run '" + cfg.string() + "' --quiet --out '" + results.string() + "'").status == 0);
  CHECK(sb.entries(results / "cli_test") == 3);
}

TEST_CASE("cli: generate stops a llama2.c story where run.c does, and refuses --top-p 0", "[cli][generate]") {
  Sandbox sb;
  const auto models = ablate::shared_dir() / "models";
  const std::string m = "generate --model '" + (models / "stories260K.bin").string() + "' --tokenizer '" +
                        (models / "tok512.bin").string() + "' --prompt 'Once upon a time' ";
  // TinyStories delimits stories with BOS (id 1); sampling 480 tokens runs into a story's end.
  int stopped = 0;
  for (int seed = 0; seed < 3; ++seed) {
    const Result r = sb.ablate(m + "--temperature 1 -n 480 --seed " + std::to_string(seed));
    REQUIRE(r.status == 0);
    stopped += r.err.find("(stopped at EOS)") != std::string::npos;
  }
  CHECK(stopped == 3);
  const Result nostop = sb.ablate(m + "--temperature 1 -n 480 --seed 0 --no-stop");
  CHECK(nostop.status == 0);
  CHECK_THAT(nostop.err, Contains("480 tokens generated;"));
  // The config's sampling.top_p range, (0, 1].
  const Result zero = sb.ablate(m + "--temperature 1 --top-p 0");
  CHECK(zero.status == 2);
  CHECK_THAT(zero.err, Contains("allowed: (0, 1]"));
  CHECK(sb.ablate(m + "--temperature 1 --top-p 0.5 -n 4").status == 0);
}

TEST_CASE("cli: list and help", "[cli]") {
  Sandbox sb;
  const Result l = sb.ablate("list");
  CHECK(l.status == 0);
  for (const char* s : {"batching", "kv.layout", "attention", "speculative.draft", "smollm2-135m", "kv.memory_mb",
                        "slo.preset", "interactive   ttft_ms   450  tpot_ms   40"})
    CHECK_THAT(l.out, Contains(s));
  CHECK(sb.ablate("run --help").status == 0);
  CHECK(sb.ablate("").status != 0);
  CHECK(sb.ablate("frobnicate").status == 2);
}
