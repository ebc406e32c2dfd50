#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "report/csv.hpp"
#include "report/metrics.hpp"
#include "report/progress.hpp"
#include "report/provenance.hpp"
#include "report/results_writer.hpp"
#include "report/table.hpp"

using namespace ablate;
namespace fs = std::filesystem;

namespace {

RequestRecord req(int id, double arrival, double sched, double first, double last, int prompt, int output,
                  std::vector<double> itl, int preemptions = 0) {
  RequestRecord r;
  r.request_id = id;
  r.arrival_s = arrival;
  r.first_scheduled_s = sched;
  r.first_token_s = first;
  r.last_token_s = last;
  r.prompt_len = prompt;
  r.output_len = output;
  r.itl_s = std::move(itl);
  r.preemptions = preemptions;
  return r;
}

StepRecord step(int i, double wall, int batch, int padding, std::size_t reserved, std::size_t used) {
  StepRecord s;
  s.step = i;
  s.wall_s = wall;
  s.batch_size = batch;
  s.padding_rows = padding;
  s.kv_reserved_bytes = reserved;
  s.kv_used_bytes = used;
  return s;
}

// ttft 1000 / 500 / 2000 ms; tpot 500 / - / 1000 ms; e2el 3000 / 500 / 4000 ms; queue 500 / 0 / 200 ms.
RunRecords sample_run() {
  RunRecords r;
  r.requests = {req(0, 0.0, 0.5, 1.0, 3.0, 10, 5, {0.5, 0.5, 0.5, 0.5}, 1),
                req(1, 1.0, 1.0, 1.5, 1.5, 20, 1, {}),
                req(2, 2.0, 2.2, 4.0, 6.0, 30, 3, {1.5, 0.5})};
  r.requests[1].conversation = 1;  // request 2 is conversation 0's second turn
  r.requests[2].turn = 2;
  r.steps = {step(0, 1.0, 2, 1, 1000, 500), step(1, 3.0, 4, 0, 2000, 1800)};
  r.steps[1].kv_blocks_shared = 3;
  r.facts.weights_bytes = 123;
  r.facts.bits_per_weight = 8.5;
  r.facts.kv_capacity_bytes = 4096;
  r.facts.peak_concurrency = 3;
  r.facts.num_drafts = 4;
  r.facts.draft_tokens = 16;
  r.facts.accepted_tokens = 10;
  r.facts.draft_s = 0.25;
  r.facts.verify_s = 0.75;
  return r;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// A fresh, empty results root, removed at the end of the test.
struct TempRoot {
  fs::path path;
  TempRoot() {
    static int n = 0;
    path = fs::temp_directory_path() / ("ablate_results_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempRoot() { fs::remove_all(path); }
  std::vector<std::string> entries(const std::string& experiment) const {
    std::vector<std::string> out;
    if (fs::exists(path / experiment))
      for (const auto& e : fs::directory_iterator(path / experiment)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

// A writer's options for a results root (the rest left at their defaults).
ResultsOptions options(const fs::path& root, const std::string& experiment, const std::string& run_id, bool force,
                       const std::string& config_yaml) {
  ResultsOptions o;
  o.results_root = root;
  o.experiment = experiment;
  o.run_id = run_id;
  o.force = force;
  o.config_yaml = config_yaml;
  return o;
}

Provenance test_provenance() {
  Provenance p;
  p.git_commit = "abc";
  p.backend = "cpu";
  p.threads = 2;
  return p;
}

}  // namespace

TEST_CASE("metrics: percentile interpolates linearly like numpy", "[report]") {
  CHECK(percentile({}, 50) == 0.0);
  CHECK(percentile({7}, 99) == 7.0);
  CHECK(percentile({3, 1, 2, 4}, 50) == Approx(2.5));
  CHECK(percentile({1, 2, 3, 4}, 90) == Approx(3.7));  // numpy.percentile([1,2,3,4], 90)
  CHECK(percentile({10, 20}, 0) == 10.0);
  CHECK(percentile({10, 20}, 100) == 20.0);
}

TEST_CASE("metrics: summarize on a hand-built run", "[report]") {
  const Metrics m = summarize(sample_run(), {});
  auto v = [&](const char* name) { return metric(m, name, NAN); };

  CHECK(v("completed") == 3);
  CHECK(v("duration_s") == Approx(6.0));
  CHECK(v("request_throughput") == Approx(0.5));
  CHECK(v("output_throughput") == Approx(9.0 / 6));
  CHECK(v("total_token_throughput") == Approx(69.0 / 6));
  CHECK(v("goodput") == Approx(0.5));  // no SLO: every request counts

  CHECK(v("ttft_mean_ms") == Approx(3500.0 / 3));
  CHECK(v("ttft_median_ms") == Approx(1000));
  CHECK(v("ttft_std_ms") == Approx(std::sqrt(3500000.0 / 9)));  // population std
  CHECK(v("ttft_p90_ms") == Approx(1800));
  CHECK(v("ttft_p95_ms") == Approx(1900));
  CHECK(v("ttft_p99_ms") == Approx(1980));

  // tpot: only requests with more than one output token.
  CHECK(v("tpot_mean_ms") == Approx(750));
  CHECK(v("tpot_median_ms") == Approx(750));
  CHECK(v("tpot_std_ms") == Approx(250));
  CHECK(v("tpot_p90_ms") == Approx(950));
  CHECK(v("tpot_p99_ms") == Approx(995));

  // itl: all gaps of all requests pooled (500 x5, 1500).
  CHECK(v("itl_mean_ms") == Approx(4000.0 / 6));
  CHECK(v("itl_median_ms") == Approx(500));
  CHECK(v("itl_p90_ms") == Approx(1000));
  CHECK(v("itl_p95_ms") == Approx(1250));
  CHECK(v("itl_p99_ms") == Approx(1450));

  CHECK(v("e2el_median_ms") == Approx(3000));
  CHECK(v("e2el_mean_ms") == Approx(7500.0 / 3));
  CHECK(v("queue_time_mean_ms") == Approx(700.0 / 3));
  CHECK(v("queue_time_p99_ms") == Approx(494));
  CHECK(v("preemptions") == 1);

  CHECK(v("steps") == 2);
  CHECK(v("mean_batch_size") == Approx(3));
  CHECK(v("padding_rows") == 1);
  CHECK(v("weights_bytes") == 123);
  CHECK(v("bits_per_weight") == 8.5);
  CHECK(v("kv_capacity_bytes") == 4096);
  CHECK(v("kv_reserved_peak_bytes") == 2000);
  CHECK(v("kv_used_peak_bytes") == 1800);
  // Time-weighted: 1 - (500*1 + 1800*3) / (1000*1 + 2000*3), not the plain mean of per-step waste (0.3).
  CHECK(v("kv_waste") == Approx(1.0 - 5900.0 / 7000.0));
  CHECK(v("peak_concurrency") == 3);

  CHECK(v("num_drafts") == 4);
  CHECK(v("draft_tokens") == 16);
  CHECK(v("accepted_tokens") == 10);
  CHECK(v("acceptance_rate") == Approx(0.625));
  CHECK(v("acceptance_length") == Approx(3.5));
  CHECK(v("draft_s") == 0.25);
  CHECK(v("verify_s") == 0.75);
}

TEST_CASE("metrics: goodput counts requests within every nonzero SLO", "[report]") {
  const RunRecords r = sample_run();
  SloConfig slo;
  slo.ttft_ms = 1500;  // request 2 (2000 ms) misses
  CHECK(metric(summarize(r, slo), "goodput") == Approx(2.0 / 6));
  slo.tpot_ms = 400;   // request 0 (500 ms) misses too; request 1 has no tpot and meets it
  CHECK(metric(summarize(r, slo), "goodput") == Approx(1.0 / 6));
  slo = {};
  slo.e2el_ms = 3000;  // boundary counts as met
  CHECK(metric(summarize(r, slo), "goodput") == Approx(2.0 / 6));
}

TEST_CASE("metrics: names, order, and zeros for an empty run", "[report]") {
  const Metrics m = summarize({}, {});
  std::vector<std::string> names;
  for (const auto& [k, v] : m) {
    names.push_back(k);
    CHECK(v == 0.0);  // never NaN
  }
  std::vector<std::string> expected = {"completed", "duration_s", "request_throughput", "output_throughput",
                                       "total_token_throughput", "goodput"};
  for (const char* s : {"ttft", "tpot", "itl", "e2el"})
    for (const char* stat : {"mean", "median", "std", "p90", "p95", "p99"})
      expected.push_back(std::string(s) + "_" + stat + "_ms");
  for (const char* s :
       {"queue_time_mean_ms", "queue_time_p99_ms", "preemptions", "steps", "mean_batch_size", "padding_rows",
        "weights_bytes", "bits_per_weight", "kv_capacity_bytes", "kv_reserved_peak_bytes", "kv_used_peak_bytes", "kv_waste",
        "peak_concurrency", "peak_batch_size", "kv_blocks_peak", "prefix_hit_tokens", "prefix_hit_rate",
        "kv_blocks_shared_peak", "prefill_tokens_computed", "peak_host_bytes", "peak_device_bytes", "workspace_peak_bytes", "num_drafts", "draft_tokens", "accepted_tokens",
        "acceptance_rate", "acceptance_length", "draft_s", "verify_s", "simulated_acceptance"})
    expected.push_back(s);
  CHECK(names == expected);
}

TEST_CASE("csv: RFC 4180 quoting and exact numbers", "[report]") {
  CHECK(csv_quote("plain") == "plain");
  CHECK(csv_quote("a,b") == "\"a,b\"");
  CHECK(csv_quote("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(csv_quote("two\nlines") == "\"two\nlines\"");
  CHECK(csv_quote("cr\r") == "\"cr\r\"");
  CHECK(csv_quote("") == "");
  std::ostringstream os;
  write_csv_row(os, {"x", "1,2", "\"q\"", ""});
  CHECK(os.str() == "x,\"1,2\",\"\"\"q\"\"\",\n");

  CHECK(format_number(3.0) == "3");
  CHECK(format_number(1073741824.0) == "1073741824");
  CHECK(format_number(0.1) == "0.1");
  CHECK(format_number(1.0 / 3) == "0.3333333333333333");
  CHECK(std::stod(format_number(2.0 / 3)) == 2.0 / 3);  // round-trips
  CHECK(format_number(1e20) == "1e+20");
  CHECK(format_number(-42LL) == "-42");
}

TEST_CASE("provenance: collected facts", "[report]") {
  const Provenance p = collect_provenance(4, "cpu", "");
  CHECK(p.threads == 4);
  CHECK(p.backend == "cpu");
  CHECK_FALSE(p.device.empty());
  CHECK(p.start_time.size() == 20);
  CHECK(p.start_time.back() == 'Z');
  CHECK((p.git_commit == "unknown" || p.git_commit.size() == 40));
  CHECK((p.git_dirty == "true" || p.git_dirty == "false" || p.git_dirty == "unknown"));
  // The build's own commit: a 40-digit hash, "-dirty" when built from a changed tree. In a
  // checkout built here the run-time commit is the same one (unless the tree moved on since).
  const std::string built = p.build_commit.substr(0, p.build_commit.find('-'));
  CHECK((p.build_commit == "unknown" || built.size() == 40));
  CHECK((p.build_commit == "unknown" || p.build_commit.size() == 40 || p.build_commit.substr(40) == "-dirty"));
  CHECK(collect_provenance(1, "cuda", "NVIDIA H100").device == "NVIDIA H100");
  const auto cols = p.columns();
  REQUIRE(cols.size() == 11);
  CHECK(cols.front().first == "git_commit");
  CHECK(cols.back().first == "start_time");
  CHECK(peak_rss_bytes() > 0);
  CHECK(config_hash("") == "cbf29ce484222325");
  CHECK(config_hash("a: 1") != config_hash("a: 2"));
}

TEST_CASE("results: a committed run has every file", "[report]") {
  TempRoot root;
  const RunRecords r = sample_run();
  fs::path dir;
  {
    ResultsWriter w(options(root.path, "exp", "run1", false, "seed: 1\n"), test_provenance());
    for (int point = 0; point < 2; ++point)
      w.add_run({point, 0, point, 0}, {{"kv.layout", point ? "paged" : "contiguous"}, {"backend", "cpu"}, {"note", "a,b"}}, r,
                summarize(r, {}));
    dir = w.commit();
    CHECK(w.run_id() == "run1");
  }
  CHECK(dir == root.path / "exp" / "run1");
  CHECK(root.entries("exp") == std::vector<std::string>{"run1"});  // no partial folder left
  for (const char* f : {"summary.csv", "requests.csv", "steps.csv", "config.yaml", "provenance.yaml"})
    CHECK(fs::is_regular_file(dir / f));

  const auto summary = lines(slurp(dir / "summary.csv"));
  REQUIRE(summary.size() == 3);
  CHECK(summary[0].rfind("point,repeat,run_index,round,git_commit,git_dirty,", 0) == 0);
  CHECK(summary[0].find(",start_time,kv.layout,config.backend,note,completed,duration_s,") != std::string::npos);
  CHECK(summary[0].find(",verify_s") != std::string::npos);
  CHECK(summary[1].rfind("0,0,0,0,abc,", 0) == 0);
  CHECK(summary[2].find(",paged,cpu,\"a,b\",3,6,") != std::string::npos);

  const auto requests = lines(slurp(dir / "requests.csv"));
  REQUIRE(requests.size() == 1 + 2 * 3);
  CHECK(requests[0] == "point,repeat,request_id,arrival_s,queue_time_ms,ttft_ms,tpot_ms,e2el_ms,itl_mean_ms,"
                       "prompt_len,output_len,preemptions,cached_prompt_tokens,conversation,turn");
  CHECK(requests[1] == "0,0,0,0,500,1000,500,3000,500,10,5,1,0,0,1");
  CHECK(requests[2] == "0,0,1,1,0,500,,500,,20,1,0,0,1,1");  // no tpot, no itl
  CHECK(requests[3].ends_with(",30,3,0,0,0,2"));  // conversation 0's second turn

  const auto steps = lines(slurp(dir / "steps.csv"));
  REQUIRE(steps.size() == 1 + 2 * 2);
  CHECK(steps[0].rfind("point,repeat,step,start_s,wall_s,forward_s,device_s,batch_size,", 0) == 0);
  CHECK(steps[0].find(",kv_blocks_allocated,kv_blocks_shared,kv_tokens_stored,") != std::string::npos);
  CHECK(steps[4] == "1,0,1,0,3,0,,4,0,0,0,0,0,0,0,0,0,2000,1800,0,3,0,200");  // no device time: the CPU

  CHECK(slurp(dir / "config.yaml") == "seed: 1\n");
  const std::string prov = slurp(dir / "provenance.yaml");
  CHECK(prov.find("run_id: \"run1\"") != std::string::npos);
  CHECK(prov.find("git_commit: \"abc\"") != std::string::npos);
  CHECK(prov.find("config_hash: \"" + config_hash("seed: 1\n") + "\"") != std::string::npos);
}

TEST_CASE("results: an existing run folder is kept unless forced", "[report]") {
  TempRoot root;
  const RunRecords r = sample_run();
  auto write = [&](bool force, const std::string& yaml) {
    ResultsWriter w(options(root.path, "exp", "same", force, yaml), test_provenance());
    w.add_run({0, 0}, {}, r, summarize(r, {}));
    w.commit();
  };
  write(false, "first\n");
  CHECK_THROWS_WITH(write(false, "second\n"), Catch::Contains("same") && Catch::Contains("--force") &&
                                                  Catch::Contains("--out"));
  CHECK(slurp(root.path / "exp" / "same" / "config.yaml") == "first\n");
  write(true, "third\n");
  CHECK(slurp(root.path / "exp" / "same" / "config.yaml") == "third\n");
  CHECK(root.entries("exp") == std::vector<std::string>{"same"});  // nothing aside, nothing partial
}

TEST_CASE("results: an unfinished run keeps its finished units, durably, and nothing when it has none", "[report]") {
  TempRoot root;
  const RunRecords r = sample_run();
  {
    ResultsWriter w(options(root.path, "exp", "", false, "x: 1\n"), test_provenance());
    CHECK(root.entries("exp").size() == 1);  // <run id>.partial, visible
  }
  CHECK(root.entries("exp").empty());  // nothing finished: nothing kept
  fs::path partial;
  {
    ResultsWriter w(options(root.path, "exp", "kept", false, "x: 1\n"), test_provenance());
    w.add_run({0, 0}, {}, r, summarize(r, {}));
    partial = w.partial_dir();
    // On disk as soon as the unit is added, before any commit.
    CHECK(lines(slurp(partial / "summary.csv")).size() == 2);
    CHECK(lines(slurp(partial / "requests.csv")).size() == 1 + 3);
    w.mark_interrupted(4, "SIGINT");
  }
  CHECK(root.entries("exp") == std::vector<std::string>{"kept.partial"});
  const std::string prov = slurp(partial / "provenance.yaml");
  CHECK(prov.find("status: interrupted") != std::string::npos);
  CHECK(prov.find("units_done: 1") != std::string::npos);
  CHECK(prov.find("units_total: 4") != std::string::npos);
  // The same id again without --resume: refused, saying how to resume.
  CHECK_THROWS_WITH(ResultsWriter(options(root.path, "exp", "kept", false, "x: 1\n"), test_provenance()),
                    Catch::Contains("--resume") && Catch::Contains("kept.partial"));
}

TEST_CASE("results: a resume drops torn lines and unfinished units' rows, then appends", "[report]") {
  TempRoot root;
  const RunRecords r = sample_run();
  fs::path partial;
  {
    ResultsWriter w(options(root.path, "exp", "r", false, "x: 1\n"), test_provenance());
    w.add_run({0, 0, 0, 0}, {}, r, summarize(r, {}));
    partial = w.partial_dir();
  }
  // A crash mid-unit: point 1's request rows written, its summary row torn.
  { std::ofstream(partial / "requests.csv", std::ios::app) << "1,0,0,0,1,1,1,1,1,10,5,0\n1,0,1,0,1,1,1"; }
  { std::ofstream(partial / "summary.csv", std::ios::app) << "1,0,1,0,abc,fal"; }
  ResultsOptions ro = options(root.path, "exp", "", false, "x: 1\n");
  ro.resume = partial;
  for (const auto& [k, v] : summarize(r, {})) ro.metric_columns.push_back(k);
  ResultsWriter w(ro, test_provenance());
  CHECK(w.done(0, 0));
  CHECK_FALSE(w.done(1, 0));
  CHECK(w.next_run_index() == 1);
  CHECK(w.resume_report().repairs.size() == 3);  // summary torn line; requests: torn line, orphan rows
  CHECK(lines(slurp(partial / "requests.csv")).size() == 1 + 3);
  w.add_run({1, 0, 1, 0}, {}, r, summarize(r, {}));
  const fs::path dir = w.commit();
  CHECK(dir == root.path / "exp" / "r");
  const auto summary = lines(slurp(dir / "summary.csv"));
  REQUIRE(summary.size() == 3);
  CHECK(summary[1].rfind("0,0,0,0,", 0) == 0);
  CHECK(summary[2].rfind("1,0,1,0,", 0) == 0);
  CHECK(lines(slurp(dir / "requests.csv")).size() == 1 + 2 * 3);
  CHECK(slurp(dir / "provenance.yaml").find("status: complete") != std::string::npos);
  // A complete run is not resumable.
  ResultsOptions again = options(root.path, "exp", "", false, "x: 1\n");
  again.resume = dir;
  CHECK_THROWS_WITH(ResultsWriter(again, test_provenance()), Catch::Contains("nothing to resume"));
}

TEST_CASE("results: automatic run ids do not collide", "[report]") {
  TempRoot root;
  const ResultsOptions opts = options(root.path, "exp", "", false, "model: tiny\n");
  ResultsWriter a(opts, test_provenance()), b(opts, test_provenance());  // both partial at once
  ResultsWriter c(opts, test_provenance());
  const fs::path pa = a.commit(), pc = c.commit(), pb = b.commit();
  CHECK(pa != pb);
  CHECK(pa != pc);
  CHECK(pb != pc);
  CHECK(root.entries("exp").size() == 3);
  // YYYYmmdd-HHMMSS-<8 hex of the config hash>[-n]
  const std::string id = pa.filename().string();
  CHECK(id.size() == 24);
  CHECK(id.substr(15, 9) == "-" + config_hash("model: tiny\n").substr(0, 8));
}

TEST_CASE("results: bad names are refused", "[report]") {
  TempRoot root;
  CHECK_THROWS(ResultsWriter(options(root.path, "../up", "", false, ""), test_provenance()));
  CHECK_THROWS(ResultsWriter(options(root.path, "exp", ".hidden", false, ""), test_provenance()));
}

TEST_CASE("table: aligned markdown with the swept keys", "[report]") {
  const RunRecords r = sample_run();
  std::vector<SummaryRow> rows;
  for (int p = 0; p < 2; ++p)
    rows.push_back({p, 0, 0, 0, {{"kv.layout", p ? "paged" : "contiguous"}, {"model", "tiny"}}, summarize(r, {})});
  std::ostringstream os;
  print_summary_table(os, rows);
  const auto t = lines(os.str());
  REQUIRE(t.size() == 4);
  for (const auto& l : t) {
    CHECK(l.size() == t[0].size());
    CHECK(l.front() == '|');
    CHECK(l.back() == '|');
  }
  CHECK(t[0].find("kv.layout") != std::string::npos);
  CHECK(t[0].find("model") == std::string::npos);  // not swept
  CHECK(t[0].find("out tok/s") != std::string::npos);
  CHECK(t[1].find("---:") != std::string::npos);
  CHECK(t[3].find("paged") != std::string::npos);
  CHECK(t[3].find("15.7%") != std::string::npos);  // kv_waste
  CHECK(t[3].find(" 1000.0 ") != std::string::npos);  // ttft median ms

  // A swept map (sweep: {kv: [...]}) shows as the leaf keys that vary, not as an empty column.
  std::vector<SummaryRow> maps;
  for (int p = 0; p < 2; ++p)
    maps.push_back({p, 0, 0, 0, {{"kv.layout", p ? "paged" : "contiguous"}, {"kv.block_size", "16"}, {"model", "tiny"}},
                    summarize(r, {})});
  std::ostringstream ms;
  print_summary_table(ms, maps, {"kv"});
  const auto m = lines(ms.str());
  REQUIRE(m.size() == 4);
  CHECK(m[0].find("kv.layout") != std::string::npos);
  CHECK(m[0].find("kv.block_size") == std::string::npos);  // the same in every row
  CHECK(m[3].find("paged") != std::string::npos);
}

TEST_CASE("progress: rate-limited, one line on a terminal", "[report]") {
  std::ostringstream tty, log, quiet;
  Progress a(tty, true), b(log, false), q(quiet, true, true);
  for (Progress* p : {&a, &b, &q}) {
    p->update(1, 10, 0.5, 100);
    p->update(2, 10, 0.6, 110);  // within the rate limit: not shown
    p->finish();                 // shows the last state
  }
  CHECK(tty.str().find("\r1/10 requests") == 0);
  CHECK(tty.str().find("2/10 requests") != std::string::npos);
  const std::string shown = tty.str();
  CHECK(std::count(shown.begin(), shown.end(), '\n') == 1);
  CHECK(tty.str().back() == '\n');
  CHECK(lines(log.str()).size() == 2);
  CHECK(log.str().find('\r') == std::string::npos);
  CHECK(quiet.str().empty());
}
