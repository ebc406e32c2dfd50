#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <fstream>
#include <numeric>
#include <unistd.h>

#include "base/paths.hpp"
#include "workload/workload.hpp"

using namespace ablate;

namespace {

WorkloadConfig poisson_config(int n, double rate) {
  WorkloadConfig w;
  w.requests = n;
  w.arrival = "poisson";
  w.rate = rate;
  w.prompt_len = {"uniform", 0, 4, 64};
  w.output_len = {"normal", 0, 1, 200, 50.0, 20.0};
  return w;
}

std::vector<double> gaps(const std::vector<Request>& rs) {
  std::vector<double> g;
  double prev = 0;
  for (const auto& r : rs) g.push_back(r.arrival_s - prev), prev = r.arrival_s;
  return g;
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }
double cv(const std::vector<double>& v) {
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / v.size()) / m;
}

std::vector<double> prompt_lens(const std::vector<Request>& rs) {
  std::vector<double> out;
  for (const auto& r : rs) out.push_back(static_cast<double>(r.prompt.size()));
  return out;
}

std::filesystem::path azure_conv() { return shared_dir() / "traces" / "AzureLLMInferenceTrace_conv.csv"; }

}  // namespace

TEST_CASE("workload: same seed gives the same requests, another seed others", "[workload]") {
  const auto w = poisson_config(50, 4.0);
  const auto a = make_workload(w, 7, 1000, 4096), b = make_workload(w, 7, 1000, 4096), c = make_workload(w, 8, 1000, 4096);
  REQUIRE(a.size() == 50);
  bool same_as_c = true;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].id == static_cast<int>(i));
    CHECK(a[i].arrival_s == b[i].arrival_s);  // bit for bit
    CHECK(a[i].prompt == b[i].prompt);
    CHECK(a[i].output_len == b[i].output_len);
    same_as_c = same_as_c && a[i].arrival_s == c[i].arrival_s && a[i].prompt == c[i].prompt;
    for (int t : a[i].prompt) CHECK((t >= 0 && t < 1000));
    if (i > 0) CHECK(a[i].arrival_s >= a[i - 1].arrival_s);
  }
  CHECK_FALSE(same_as_c);
}

TEST_CASE("workload: streams are independent", "[workload]") {
  auto w = poisson_config(30, 2.0);
  const auto a = make_workload(w, 3, 500, 0);
  w.output_len = {"fixed", 9};
  const auto b = make_workload(w, 3, 500, 0);
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].arrival_s == b[i].arrival_s);
    CHECK(a[i].prompt == b[i].prompt);
    CHECK(b[i].output_len == 9);
  }
}

TEST_CASE("workload: offline arrivals are all at 0", "[workload]") {
  WorkloadConfig w;
  w.requests = 5;
  for (const auto& r : make_workload(w, 0, 100, 0)) {
    CHECK(r.arrival_s == 0.0);
    CHECK(r.prompt.size() == 128);
    CHECK(r.output_len == 128);
  }
}

TEST_CASE("workload: Poisson spans exactly N/rate with mean gap 1/rate", "[workload]") {
  const int n = 4000;
  const double rate = 8.0;
  const auto rs = make_workload(poisson_config(n, rate), 11, 100, 0);
  CHECK(std::abs(rs.back().arrival_s - n / rate) < 1e-9);
  CHECK(rs.front().arrival_s > 0.0);  // the first request arrives after one gap
  const auto g = gaps(rs);
  CHECK(mean(g) == Approx(1.0 / rate).epsilon(1e-9));
  CHECK(cv(g) == Approx(1.0).margin(0.1));  // exponential gaps
}

TEST_CASE("workload: gamma burstiness changes the spread of gaps", "[workload]") {
  auto w = poisson_config(4000, 5.0);
  w.arrival = "gamma";
  w.burstiness = 0.25;
  const auto bursty = gaps(make_workload(w, 1, 100, 0));
  w.burstiness = 4.0;
  const auto smooth = gaps(make_workload(w, 1, 100, 0));
  CHECK(cv(bursty) == Approx(2.0).margin(0.3));   // cv = 1/sqrt(shape)
  CHECK(cv(smooth) == Approx(0.5).margin(0.1));
  CHECK(cv(bursty) > cv(smooth));
  w.burstiness = 1.0;
  CHECK(cv(gaps(make_workload(w, 1, 100, 0))) == Approx(1.0).margin(0.1));
}

TEST_CASE("workload: a tiny gamma burstiness gives finite, ordered arrivals spanning N/rate", "[workload]") {
  // Shape 1e-6 made every gap underflow to 0 in linear space, the rescale divide by 0 and the
  // engine spin on NaN arrival times.
  auto w = poisson_config(50, 100.0);
  w.arrival = "gamma";
  for (double shape : {1e-6, 1e-3, 0.05}) {
    w.burstiness = shape;
    const auto rs = make_workload(w, 3, 100, 0);
    double prev = 0;
    for (const auto& r : rs) {
      REQUIRE(std::isfinite(r.arrival_s));
      CHECK(r.arrival_s >= prev);
      prev = r.arrival_s;
    }
    CHECK(rs.back().arrival_s == Approx(50 / 100.0));
  }
  Rng rng(7);
  for (int i = 0; i < 1000; ++i) CHECK(std::isfinite(rng.log_gamma(1e-9)));
}

TEST_CASE("workload: length distributions stay in range with the right mean", "[workload]") {
  WorkloadConfig w;
  w.requests = 5000;
  SECTION("uniform") {
    w.prompt_len = {"uniform", 0, 10, 30};
    const auto v = prompt_lens(make_workload(w, 5, 50, 0));
    CHECK(*std::min_element(v.begin(), v.end()) == 10);
    CHECK(*std::max_element(v.begin(), v.end()) == 30);
    CHECK(mean(v) == Approx(20.0).margin(0.5));
  }
  SECTION("normal") {
    w.prompt_len = {"normal", 0, 1, 1000, 300.0, 50.0};
    const auto v = prompt_lens(make_workload(w, 5, 50, 0));
    CHECK(mean(v) == Approx(300.0).margin(3.0));
    CHECK(cv(v) * mean(v) == Approx(50.0).margin(3.0));
  }
  SECTION("normal clipped") {
    w.prompt_len = {"normal", 0, 250, 350, 300.0, 100.0};
    const auto v = prompt_lens(make_workload(w, 5, 50, 0));
    CHECK(*std::min_element(v.begin(), v.end()) == 250);
    CHECK(*std::max_element(v.begin(), v.end()) == 350);
  }
  SECTION("lognormal: mean and std are those of the lengths") {
    w.prompt_len = {"lognormal", 0, 1, 100000, 500.0, 250.0};
    const auto v = prompt_lens(make_workload(w, 5, 50, 0));
    CHECK(*std::min_element(v.begin(), v.end()) >= 1);
    CHECK(mean(v) == Approx(500.0).margin(15.0));
    CHECK(cv(v) * mean(v) == Approx(250.0).margin(25.0));
  }
  SECTION("lognormal clipped") {
    w.prompt_len = {"lognormal", 0, 100, 600, 500.0, 400.0};
    const auto v = prompt_lens(make_workload(w, 5, 50, 0));
    CHECK(*std::min_element(v.begin(), v.end()) == 100);
    CHECK(*std::max_element(v.begin(), v.end()) == 600);
  }
}

TEST_CASE("workload: max_seq_len cuts the prompt first, then the output", "[workload]") {
  WorkloadConfig w;
  w.requests = 3;
  w.prompt_len = {"fixed", 100};
  w.output_len = {"fixed", 30};
  for (const auto& r : make_workload(w, 0, 10, 64)) CHECK((r.prompt.size() == 34 && r.output_len == 30));
  w.output_len = {"fixed", 80};
  for (const auto& r : make_workload(w, 0, 10, 64)) CHECK((r.prompt.size() == 1 && r.output_len == 63));
}

TEST_CASE("workload: bad configs are reported", "[workload]") {
  WorkloadConfig w;
  w.arrival = "uniformly";
  CHECK_THROWS_WITH(make_workload(w, 0, 10, 0), Catch::Contains("uniformly"));
  w.arrival = "poisson";
  w.rate = 0;
  CHECK_THROWS_WITH(make_workload(w, 0, 10, 0), Catch::Contains("workload.rate"));
  w = {};
  w.prompt_len = {"uniform", 0, 10, 5};
  CHECK_THROWS_WITH(make_workload(w, 0, 10, 0), Catch::Contains("workload.prompt_len"));
  w = {};
  w.output_len.dist = "trace";  // no trace path
  CHECK_THROWS_WITH(make_workload(w, 0, 10, 0), Catch::Contains("workload.trace.path"));
}

TEST_CASE("workload: trace replay gives the rows' lengths and gaps", "[workload]") {
  if (!std::filesystem::exists(azure_conv())) {
    WARN("no shared traces at " << azure_conv() << "; skipped");
    return;
  }
  // The first rows of AzureLLMInferenceTrace_conv.csv.
  const double t[] = {46.6805900, 50.9951690, 51.2224670, 51.3910170, 52.5732450, 52.9921190};
  const int ctx[] = {374, 396, 879, 91, 91, 381}, gen[] = {44, 109, 55, 16, 16, 84};
  WorkloadConfig w;
  w.requests = 5;
  w.arrival = "trace";
  w.prompt_len.dist = w.output_len.dist = "trace";
  w.trace.path = azure_conv().string();

  SECTION("exact replay") {
    const auto rs = make_workload(w, 0, 32000, 0);
    REQUIRE(rs.size() == 5);
    for (int i = 0; i < 5; ++i) {
      CHECK(rs[i].arrival_s == Approx(t[i] - t[0]).margin(1e-12));
      CHECK(static_cast<int>(rs[i].prompt.size()) == ctx[i]);
      CHECK(rs[i].output_len == gen[i]);
      for (int tok : rs[i].prompt) CHECK((tok >= 0 && tok < 32000));
    }
  }
  SECTION("start_row, time_scale") {
    w.trace.start_row = 1;
    w.trace.time_scale = 0.5;
    const auto rs = make_workload(w, 0, 32000, 0);
    for (int i = 0; i < 5; ++i) {
      CHECK(rs[i].arrival_s == Approx((t[i + 1] - t[1]) * 0.5).margin(1e-12));
      CHECK(static_cast<int>(rs[i].prompt.size()) == ctx[i + 1]);
    }
  }
  SECTION("caps and max_seq_len") {
    w.trace.max_output_len = 50;
    w.trace.max_prompt_len = 380;
    const auto rs = make_workload(w, 0, 100, 400);
    for (int i = 0; i < 5; ++i) {
      const int out = std::min(gen[i], 50);
      CHECK(rs[i].output_len == out);
      CHECK(static_cast<int>(rs[i].prompt.size()) == std::min({ctx[i], 380, 400 - out}));
    }
  }
  SECTION("Poisson arrivals with trace lengths") {
    w.arrival = "poisson";
    w.rate = 2.0;
    const auto rs = make_workload(w, 0, 100, 0);
    CHECK(rs.back().arrival_s == Approx(2.5));
    for (int i = 0; i < 5; ++i) CHECK(rs[i].output_len == gen[i]);
  }
  SECTION("too few rows") {
    w.trace.start_row = 19366 - 2;
    CHECK_THROWS_WITH(make_workload(w, 0, 100, 0), Catch::Contains("19366 data rows"));
  }
}

TEST_CASE("workload: random trace rows sample the whole trace's lengths", "[workload]") {
  if (!std::filesystem::exists(azure_conv())) {
    WARN("no shared traces at " << azure_conv() << "; skipped");
    return;
  }
  const auto all = read_trace(azure_conv().string(), 0, -1);
  REQUIRE(all.size() == 19366);
  WorkloadConfig w;
  w.requests = 2000;
  w.prompt_len.dist = w.output_len.dist = "trace";
  w.trace.path = azure_conv().string();
  w.trace.rows = "random";
  const auto rs = make_workload(w, 7, 100, 0);
  REQUIRE(rs.size() == 2000);
  // Every request is some trace row's (prompt, output) pair, no row drawn twice beyond what the
  // trace's own duplicates allow, and the mean output length is the trace's, not the first rows'.
  std::map<std::pair<int, int>, int> available, used;
  double trace_mean = 0, mean = 0;
  for (const auto& r : all) ++available[{r.prompt_len, r.output_len}], trace_mean += r.output_len;
  for (const auto& r : rs) ++used[{static_cast<int>(r.prompt.size()), r.output_len}], mean += r.output_len;
  trace_mean /= all.size();
  mean /= rs.size();
  for (const auto& [pair, n] : used) CHECK(n <= available[pair]);
  CHECK(mean == Approx(trace_mean).epsilon(0.06));  // 211.1; the first 2000 rows average 264.9
  // Same seed, same rows; another seed, other rows.
  const auto again = make_workload(w, 7, 100, 0), other = make_workload(w, 8, 100, 0);
  int same = 0, moved = 0;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    same += rs[i].output_len == again[i].output_len;
    moved += rs[i].output_len != other[i].output_len;
  }
  CHECK(same == 2000);
  CHECK(moved > 1000);
  // More requests than rows, and replaying random rows' timestamps, are errors.
  w.requests = 19367;
  CHECK_THROWS_WITH(make_workload(w, 0, 100, 0), Catch::Contains("19366 data rows"));
  w.requests = 4;
  w.arrival = "trace";
  CHECK_THROWS_WITH(make_workload(w, 0, 100, 0), Catch::Contains("workload.trace.rows random"));
}

TEST_CASE("workload: malformed trace rows name file, line and column", "[workload]") {
  const auto path = std::filesystem::temp_directory_path() / ("ablate_trace_" + std::to_string(::getpid()) + ".csv");
  auto check = [&](const std::string& body, const std::string& expected) {
    std::ofstream(path) << "TIMESTAMP,ContextTokens,GeneratedTokens\n" << body;
    WorkloadConfig w;
    w.requests = 2;
    w.arrival = "trace";
    w.trace.path = path.string();
    CHECK_THROWS_WITH(make_workload(w, 0, 10, 0), Catch::Contains(path.string() + expected));
  };
  check("2023-11-16 18:15:46.68,1,2\n2023-11-16 18:15:47.00,12x,2\n", ":3:24: bad ContextTokens '12x'");
  check("2023-11-16 18:15:46.68,1,2\n2023-13-16 18:15:47.00,1,2\n", ":3:1: bad timestamp");
  check("2023-11-16 18:15:46.68,1,2\n2023-11-16 18:15:45.00,1,2\n", ":3:1: timestamp");
  check("2023-11-16 18:15:46.68,1,2\n1,2\n", ":3:1: expected 3 fields");
  std::filesystem::remove(path);
}

TEST_CASE("rng: uniform_int covers its range without bias", "[workload]") {
  Rng rng(1);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 70000; ++i) ++counts[rng.uniform_int(0, 6)];
  for (int c : counts) CHECK(c == Approx(10000).margin(400));
  // The sequence is specified by std::mt19937_64: this value holds on every platform.
  CHECK(Rng(5489).next() == 14514284786278117030ULL);
}

TEST_CASE("workload.conversation: N conversations of T turns, turn-major ids, first turns the single-turn workload",
          "[workload][conversation]") {
  auto w = poisson_config(6, 5.0);
  const auto single = make_workload(w, 4, 1000, 0);
  w.conversation.turns = 3;
  w.conversation.think_time_ms = 250;
  const auto chat = make_workload(w, 4, 1000, 0);
  REQUIRE(chat.size() == 18);
  std::map<int, int> last_turn_of;  // conversation -> latest turn's id
  for (const Request& r : chat) {
    CHECK(r.id == static_cast<int>(&r - chat.data()));
    CHECK(r.turn == 1 + r.id / 6);  // turn-major: every first turn, then every second turn, ...
    CHECK(r.conversation == r.id % 6);
    if (r.turn == 1) {  // the single-turn workload's request, bit for bit
      const Request& s = single[static_cast<std::size_t>(r.id)];
      CHECK(r.follows == -1);
      CHECK(r.arrival_s == s.arrival_s);
      CHECK(r.prompt == s.prompt);
      CHECK(r.output_len == s.output_len);
    } else {  // a new user message that follows the conversation's previous turn
      CHECK(r.follows == last_turn_of.at(r.conversation));
      CHECK(r.think_s == 0.25);
      CHECK((r.prompt.size() >= 4 && r.prompt.size() <= 64));
    }
    last_turn_of[r.conversation] = r.id;
  }
  // Later turns' messages are drawn, not copies of the first turns'.
  CHECK(chat[6].prompt != chat[0].prompt);
  w.conversation.think_time_dist = "exponential";
  w.requests = 400;
  const auto exp_chat = make_workload(w, 4, 1000, 0);
  std::vector<double> think;
  for (const Request& r : exp_chat)
    if (r.follows >= 0) think.push_back(r.think_s);
  REQUIRE(think.size() == 800);
  CHECK(mean(think) == Approx(0.25).epsilon(0.1));
  CHECK(cv(think) == Approx(1.0).epsilon(0.15));  // exponential: std = mean
}

TEST_CASE("workload.conversation: the planned context fits max_seq_len; a full conversation ends early",
          "[workload][conversation]") {
  WorkloadConfig w;
  w.requests = 3;
  w.prompt_len = {"fixed", 10};
  w.output_len = {"fixed", 6};
  w.shared_prefix.tokens = 8;
  w.conversation.turns = 5;
  // 8 + 16 + 16 = 40; turn 3 has 10 positions left: message cut to 4; turn 4 has none.
  const auto chat = make_workload(w, 1, 50, 50);
  REQUIRE(chat.size() == 9);
  std::map<int, long long> context;  // planned: prefix, messages and whole outputs
  std::map<int, int> turns;
  for (const Request& r : chat) {
    context[r.conversation] += static_cast<long long>(r.prompt.size()) + r.output_len;
    turns[r.conversation] = r.turn;
    CHECK(context[r.conversation] <= 50);
    CHECK(r.prompt.size() >= 1);
    CHECK(r.output_len >= 1);
    if (r.turn == 3) CHECK((r.prompt.size() == 4 && r.output_len == 6));
  }
  for (const auto& [c, t] : turns) CHECK(t == 3);
  CHECK(context.size() == 3);
  CHECK_THROWS_WITH(([&] { auto bad = w; bad.conversation.turns = 0; make_workload(bad, 1, 50, 50); }()),
                    Catch::Contains("workload.conversation.turns"));
  CHECK_THROWS_WITH(([&] { auto bad = w; bad.conversation.think_time_dist = "gamma"; make_workload(bad, 1, 50, 50); }()),
                    Catch::Contains("fixed | exponential"));
}
