#include "workload/workload.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string_view>

#include <fmt/format.h>

#include "base/paths.hpp"

namespace ablate {

// ---------------------------------------------------------------------------------------------
// Random numbers

std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream) {
  auto splitmix = [](std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return splitmix(splitmix(seed) ^ splitmix(stream + 0x5851f42d4c957f2dULL));
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

std::int64_t Rng::uniform_int(std::int64_t lo, std::int64_t hi) {
  if (hi < lo) throw std::invalid_argument("Rng::uniform_int: hi < lo");
  const std::uint64_t range = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo) + 1;
  if (range == 0) return static_cast<std::int64_t>(next());  // the full 64-bit range
  // Reject the lowest (2^64 mod range) values so that every residue is equally likely.
  const std::uint64_t threshold = (0 - range) % range;
  std::uint64_t x = next();
  while (x < threshold) x = next();
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(lo) + x % range);
}

double Rng::normal() {
  // Marsaglia polar; the second variate is dropped to keep the generator stateless.
  for (;;) {
    const double u = 2.0 * uniform() - 1.0, v = 2.0 * uniform() - 1.0;
    const double s = u * u + v * v;
    if (s > 0.0 && s < 1.0) return u * std::sqrt(-2.0 * std::log(s) / s);
  }
}

double Rng::exponential(double rate) { return -std::log(1.0 - uniform()) / rate; }  // 1-u in (0,1]

double Rng::gamma(double shape, double scale) {
  if (!(scale > 0.0)) throw std::invalid_argument("Rng::gamma: shape and scale must be > 0");
  return std::exp(log_gamma(shape)) * scale;
}

double Rng::log_gamma(double shape) {
  if (!(shape > 0.0) || !std::isfinite(shape)) throw std::invalid_argument("Rng::log_gamma: shape must be > 0");
  if (shape < 1.0)  // boost: G(a) = G(a+1) * U^(1/a), summed as logs so that nothing underflows
    return log_gamma(shape + 1.0) + std::log(1.0 - uniform()) / shape;
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = 1.0 - uniform();  // (0, 1]
    if (u < 1.0 - 0.0331 * x * x * x * x) return std::log(d * v);
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return std::log(d * v);
  }
}

// ---------------------------------------------------------------------------------------------
// Traces

namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// "YYYY-MM-DD HH:MM:SS[.fffffffff]" (or 'T' between date and time) -> nanoseconds since the
// epoch, in integers so that differences are exact. nullopt when malformed.
std::optional<std::int64_t> parse_timestamp_ns(std::string_view s) {
  auto num = [&](std::size_t pos, std::size_t len, int lo, int hi) -> std::optional<int> {
    if (pos + len > s.size()) return std::nullopt;
    int v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (s[i] < '0' || s[i] > '9') return std::nullopt;
      v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return std::nullopt;
    return v;
  };
  if (s.size() < 19 || s[4] != '-' || s[7] != '-' || (s[10] != ' ' && s[10] != 'T') || s[13] != ':' ||
      s[16] != ':')
    return std::nullopt;
  // Years 1678..2261: nanoseconds since 1970 of any other year overflow an int64.
  const auto Y = num(0, 4, 1678, 2261), M = num(5, 2, 1, 12), D = num(8, 2, 1, 31), h = num(11, 2, 0, 23),
             mi = num(14, 2, 0, 59), sec = num(17, 2, 0, 60);
  if (!Y || !M || !D || !h || !mi || !sec) return std::nullopt;
  std::int64_t frac_ns = 0;
  if (s.size() > 19) {
    const std::size_t digits = s.size() - 20;
    if (s[19] != '.' || digits == 0 || digits > 9) return std::nullopt;
    const auto f = num(20, digits, 0, 999999999);
    if (!f) return std::nullopt;
    frac_ns = *f;
    for (std::size_t i = digits; i < 9; ++i) frac_ns *= 10;
  }
  const std::int64_t days = days_from_civil(*Y, static_cast<unsigned>(*M), static_cast<unsigned>(*D));
  return ((days * 24 + *h) * 60 + *mi) * 60 * 1'000'000'000LL + *sec * 1'000'000'000LL + frac_ns;
}

struct Field {
  std::string_view text;
  std::size_t column;  // 1-based
};

std::vector<Field> split_csv_line(std::string_view line) {
  std::vector<Field> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = line.find(',', start);
    std::string_view f = line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    std::size_t col = start + 1;
    while (!f.empty() && (f.front() == ' ' || f.front() == '\t')) f.remove_prefix(1), ++col;
    while (!f.empty() && (f.back() == ' ' || f.back() == '\t')) f.remove_suffix(1);
    out.push_back({f, col});
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) { return std::tolower(x) == std::tolower(y); });
}

}  // namespace

std::vector<TraceRow> read_trace(const std::string& path, int start_row, int count) {
  if (start_row < 0) throw std::runtime_error(fmt::format("workload.trace.start_row must be >= 0 (got {})", start_row));
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot open trace '{}'", path));
  if (count == 0) return {};  // count < 0: every row from start_row on
  auto fail = [&](long line, std::size_t col, const std::string& what) -> std::runtime_error {
    return std::runtime_error(fmt::format("{}:{}:{}: {}", path, line, col, what));
  };

  std::string line;
  long line_no = 0;
  int idx[3] = {-1, -1, -1};  // TIMESTAMP, ContextTokens, GeneratedTokens
  const char* names[3] = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"};
  std::size_t n_fields = 0;
  bool have_header = false;
  int row = -1;  // data row index
  std::vector<TraceRow> out;
  const bool to_end = count < 0;
  const std::size_t want = to_end ? std::numeric_limits<std::size_t>::max() : static_cast<std::size_t>(count);
  out.reserve(std::min<std::size_t>(want, 1 << 16));
  std::int64_t t0 = 0, prev = 0;

  while (out.size() < want && std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are not rows
    if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
    const auto fields = split_csv_line(line);
    if (!have_header) {
      for (int k = 0; k < 3; ++k) {
        for (std::size_t i = 0; i < fields.size(); ++i)
          if (iequals(fields[i].text, names[k])) idx[k] = static_cast<int>(i);
        if (idx[k] < 0)
          throw fail(line_no, 1, fmt::format("header has no column '{}' (expected TIMESTAMP,ContextTokens,GeneratedTokens)", names[k]));
      }
      n_fields = fields.size();
      have_header = true;
      continue;
    }
    if (++row < start_row) continue;  // rows before the window are not parsed
    if (fields.size() != n_fields)
      throw fail(line_no, 1, fmt::format("expected {} fields, found {}", n_fields, fields.size()));
    const Field& ts = fields[idx[0]];
    const auto ns = parse_timestamp_ns(ts.text);
    if (!ns)
      throw fail(line_no, ts.column,
                 fmt::format("bad timestamp '{}' (expected YYYY-MM-DD HH:MM:SS.fraction, years 1678..2261)", ts.text));
    int lens[2];
    for (int k = 1; k < 3; ++k) {
      const Field& f = fields[idx[k]];
      int v = -1;
      const auto [p, ec] = std::from_chars(f.text.data(), f.text.data() + f.text.size(), v);
      if (ec != std::errc() || p != f.text.data() + f.text.size() || v < 0)
        throw fail(line_no, f.column, fmt::format("bad {} '{}' (expected a non-negative integer)", names[k], f.text));
      lens[k - 1] = v;
    }
    if (out.empty()) t0 = prev = *ns;
    if (*ns < prev) throw fail(line_no, ts.column, fmt::format("timestamp '{}' is earlier than the previous row's", ts.text));
    prev = *ns;
    std::int64_t since_first = 0;  // the allowed years span 584; int64 nanoseconds hold 292 of them
    if (__builtin_sub_overflow(*ns, t0, &since_first))
      throw fail(line_no, ts.column, fmt::format("timestamp '{}' is more than 292 years after the first row's", ts.text));
    out.push_back({static_cast<double>(since_first) * 1e-9, lens[0], lens[1]});
  }
  if (!have_header) throw std::runtime_error(fmt::format("trace '{}' is empty (no header row)", path));
  if (!to_end && out.size() < want)
    throw std::runtime_error(fmt::format("trace '{}' has {} data rows; the workload needs rows [{}, {})", path,
                                         row + 1, start_row, static_cast<long>(start_row) + count));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Workloads

namespace {

// Stream ids: fixed forever, so that a seed keeps meaning the same workload.
enum : std::uint64_t {
  kArrivals = 1, kPromptLens = 2, kOutputLens = 3, kTokens = 4, kTraceRows = 5, kPrefixes = 6, kPrefixGroups = 7,
  kThinkTimes = 8
};

// n distinct rows of `all`, drawn uniformly (a partial Fisher-Yates shuffle), in the order drawn.
std::vector<TraceRow> draw_rows(std::vector<TraceRow> all, int n, Rng rng, const std::string& path, int start_row) {
  if (static_cast<std::size_t>(n) > all.size())
    throw std::runtime_error(fmt::format("trace '{}' has {} data rows from row {}; workload.requests {} with "
                                         "workload.trace.rows random needs that many distinct rows",
                                         path, all.size(), start_row, n));
  for (int i = 0; i < n; ++i) {
    const auto j = rng.uniform_int(i, static_cast<std::int64_t>(all.size()) - 1);
    std::swap(all[i], all[static_cast<std::size_t>(j)]);
  }
  all.resize(static_cast<std::size_t>(n));
  return all;
}

std::vector<int> sample_lengths(const LengthDist& d, const char* key, int n, Rng rng,
                                const std::vector<TraceRow>& trace, bool prompt) {
  auto bad = [&](const std::string& what) { return std::runtime_error(fmt::format("workload.{}: {}", key, what)); };
  std::vector<int> out(static_cast<std::size_t>(n));
  if (d.dist == "trace") {
    for (int i = 0; i < n; ++i) out[i] = prompt ? trace[i].prompt_len : trace[i].output_len;
    return out;
  }
  if (d.dist == "fixed") {
    if (d.value < 1) throw bad(fmt::format("value must be >= 1 (got {})", d.value));
    std::fill(out.begin(), out.end(), d.value);
    return out;
  }
  if (d.min < 1 || d.max < d.min) throw bad(fmt::format("need 1 <= min <= max (got min {}, max {})", d.min, d.max));
  auto clip = [&](double x) {  // round half away from zero, clipped to [min, max]
    if (!(x >= d.min)) return d.min;  // also catches NaN
    if (x >= d.max) return d.max;
    return static_cast<int>(std::round(x));
  };
  if (d.dist == "uniform") {
    for (auto& v : out) v = static_cast<int>(rng.uniform_int(d.min, d.max));
  } else if (d.dist == "normal") {
    if (!(d.std >= 0)) throw bad("std must be >= 0");
    for (auto& v : out) v = clip(d.mean + d.std * rng.normal());
  } else if (d.dist == "lognormal") {
    if (!(d.mean > 0) || !(d.std >= 0)) throw bad("lognormal needs mean > 0 and std >= 0");
    // Moments of the lengths -> parameters of their log.
    const double sigma2 = std::log1p((d.std * d.std) / (d.mean * d.mean));
    const double mu = std::log(d.mean) - 0.5 * sigma2, sigma = std::sqrt(sigma2);
    for (auto& v : out) v = clip(std::exp(mu + sigma * rng.normal()));
  } else {
    throw bad(fmt::format("unknown dist '{}' (fixed | uniform | normal | lognormal | trace)", d.dist));
  }
  return out;
}

}  // namespace

std::vector<Request> make_workload(const WorkloadConfig& w, std::uint64_t seed, int vocab_size, int max_seq_len) {
  const int n = w.requests;  // conversations, when they have several turns
  if (n < 0) throw std::runtime_error(fmt::format("workload.requests must be >= 0 (got {})", n));
  if (vocab_size < 1) throw std::runtime_error(fmt::format("vocab_size must be >= 1 (got {})", vocab_size));
  if (max_seq_len > 0 && max_seq_len < 2)
    throw std::runtime_error(fmt::format("max_seq_len {} leaves no room for a prompt and an output token", max_seq_len));
  const ConversationConfig& conv = w.conversation;
  if (conv.turns < 1 || static_cast<long long>(n) * conv.turns > std::numeric_limits<int>::max())
    throw std::runtime_error(fmt::format("workload.conversation.turns must be >= 1 with requests * turns an int (got {})", conv.turns));
  if (!(conv.think_time_ms >= 0) || !std::isfinite(conv.think_time_ms))
    throw std::runtime_error(fmt::format("workload.conversation.think_time_ms must be >= 0 (got {})", conv.think_time_ms));
  if (conv.think_time_dist != "fixed" && conv.think_time_dist != "exponential")
    throw std::runtime_error(fmt::format("workload.conversation.think_time_dist: unknown '{}' (fixed | exponential)", conv.think_time_dist));
  // User messages, turn-major: message m = t * n + c is conversation c's turn t (0-based), so the
  // first n are the first turns, exactly the requests of a single-turn workload.
  const int n_msgs = n * conv.turns;
  const bool trace_lengths = w.prompt_len.dist == "trace" || w.output_len.dist == "trace";

  std::vector<TraceRow> trace;
  if (w.arrival == "trace" || trace_lengths) {
    if (w.trace.path.empty()) throw std::runtime_error("workload.trace.path is required by a trace arrival or length");
    const std::string path = expand_path(w.trace.path);
    const int rows = trace_lengths ? n_msgs : n;  // a row per message; arrivals use the first n
    if (w.trace.rows == "consecutive") {
      trace = read_trace(path, w.trace.start_row, rows);
    } else if (w.trace.rows == "random") {
      if (w.arrival == "trace")
        throw std::runtime_error("workload.trace.rows random has no arrival times to replay (workload.arrival trace)");
      trace = draw_rows(read_trace(path, w.trace.start_row, -1), rows, Rng(stream_seed(seed, kTraceRows)), path,
                        w.trace.start_row);
    } else {
      throw std::runtime_error(fmt::format("workload.trace.rows: unknown '{}' (consecutive | random)", w.trace.rows));
    }
  }

  // Arrivals.
  std::vector<double> arrival(static_cast<std::size_t>(n), 0.0);
  if (w.arrival == "poisson" || w.arrival == "gamma") {
    if (!(w.rate > 0) || !std::isfinite(w.rate))
      throw std::runtime_error(fmt::format("workload.rate must be a positive number (got {})", w.rate));
    const double shape = w.arrival == "gamma" ? w.burstiness : 1.0;
    if (!(shape > 0)) throw std::runtime_error(fmt::format("workload.burstiness must be > 0 (got {})", shape));
    Rng rng(stream_seed(seed, kArrivals));
    // The gaps' scale cancels in the rescale below, so they are drawn as log Gamma(shape, 1) and
    // summed as logs: a tiny burstiness (shape 1e-6) makes most gaps underflow to 0 in linear
    // space, and the rescale then divided by a zero total.
    std::vector<double> log_cum(static_cast<std::size_t>(n));
    double acc = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < n; ++i) {
      const double g = w.arrival == "gamma" ? rng.log_gamma(shape) : std::log(rng.exponential(1.0));
      if (g > -std::numeric_limits<double>::infinity())  // a zero gap adds nothing
        acc = std::max(acc, g) + std::log1p(std::exp(-std::abs(acc - g)));  // log(exp(acc) + exp(g))
      log_cum[static_cast<std::size_t>(i)] = acc;
    }
    // Rescale so the span is exactly N/rate (vLLM's benchmark does the same).
    if (n > 0) {
      const double target = n / w.rate;
      for (int i = 0; i < n; ++i)
        arrival[static_cast<std::size_t>(i)] = std::min(target * std::exp(log_cum[static_cast<std::size_t>(i)] - acc), target);
      arrival.back() = target;
    }
    for (double a : arrival)
      if (!std::isfinite(a) || a < 0)
        throw std::logic_error(fmt::format("workload: arrival time {} is not a finite time (rate {}, burstiness {})", a, w.rate, shape));
  } else if (w.arrival == "trace") {
    if (!(w.trace.time_scale > 0)) throw std::runtime_error("workload.trace.time_scale must be > 0");
    for (int i = 0; i < n; ++i) arrival[i] = trace[i].time_s * w.trace.time_scale;
  } else if (w.arrival != "offline") {
    throw std::runtime_error(fmt::format("workload.arrival: unknown '{}' (offline | poisson | gamma | trace)", w.arrival));
  }

  // Lengths.
  const int prefix_len = w.shared_prefix.tokens;
  if (prefix_len < 0 || w.shared_prefix.groups < 1)
    throw std::runtime_error(fmt::format("workload.shared_prefix: tokens must be >= 0 and groups >= 1 (got {}, {})", prefix_len,
                                         w.shared_prefix.groups));
  if (max_seq_len > 0 && prefix_len + 2 > max_seq_len)
    throw std::runtime_error(fmt::format("workload.shared_prefix.tokens {} leaves no room in max_seq_len {} for a prompt and an output token",
                                         prefix_len, max_seq_len));
  std::vector<int> plen = sample_lengths(w.prompt_len, "prompt_len", n_msgs, Rng(stream_seed(seed, kPromptLens)), trace, true);
  std::vector<int> olen = sample_lengths(w.output_len, "output_len", n_msgs, Rng(stream_seed(seed, kOutputLens)), trace, false);
  for (int m = 0; m < n_msgs; ++m) {
    if (w.output_len.dist == "trace" && w.trace.max_output_len > 0) olen[m] = std::min(olen[m], w.trace.max_output_len);
    if (w.prompt_len.dist == "trace" && w.trace.max_prompt_len > 0) plen[m] = std::min(plen[m], w.trace.max_prompt_len);
    plen[m] = std::max(plen[m], 1);
    olen[m] = std::max(olen[m], 1);
  }
  // Each conversation's context as planned (every turn's whole output; EOS only shortens it): a
  // turn that does not fit max_seq_len has its message cut, then its output, and a conversation
  // with no room for another turn (message and output of 1 token) ends there.
  std::vector<int> turns_kept(static_cast<std::size_t>(n), conv.turns);
  for (int c = 0; c < n; ++c) {
    long long context = prefix_len;
    for (int t = 0; t < conv.turns; ++t) {
      const auto m = static_cast<std::size_t>(t) * n + c;
      if (max_seq_len > 0) {
        if (context + 2 > max_seq_len) {
          turns_kept[static_cast<std::size_t>(c)] = t;
          break;
        }
        const int room = max_seq_len - static_cast<int>(context);
        if (plen[m] + olen[m] > room) {
          plen[m] = std::max(1, room - olen[m]);
          olen[m] = std::min(olen[m], room - plen[m]);
        }
      }
      context += plen[m] + olen[m];
    }
  }
  std::vector<double> think_s(static_cast<std::size_t>(n_msgs), conv.think_time_ms / 1000.0);
  if (conv.think_time_dist == "exponential" && conv.think_time_ms > 0) {
    Rng rng(stream_seed(seed, kThinkTimes));
    for (double& t : think_s) t = rng.exponential(1000.0 / conv.think_time_ms);
  }

  // Shared prefixes: `groups` prefixes of prefix_len ids, each from its own stream; request i's
  // group from another, so the requests' own prompts are the same with or without them.
  std::vector<std::vector<int>> prefixes(static_cast<std::size_t>(prefix_len > 0 ? w.shared_prefix.groups : 0));
  for (std::size_t g = 0; g < prefixes.size(); ++g) {
    Rng rng(stream_seed(stream_seed(seed, kPrefixes), g));
    prefixes[g].resize(static_cast<std::size_t>(prefix_len));
    for (auto& t : prefixes[g]) t = static_cast<int>(rng.uniform_int(0, vocab_size - 1));
  }
  Rng group_rng(stream_seed(seed, kPrefixGroups));

  // Requests, turn-major: ids 0..n-1 are the conversations' first turns in arrival order, then
  // every second turn, and so on. Each message's token ids come from its own stream (seed,
  // message), so they do not shift when another message's length changes. A later turn's prompt
  // is only its message here; the engine puts the conversation so far before it.
  std::vector<Request> out;
  std::vector<int> prev_id(static_cast<std::size_t>(n), -1);  // each conversation's latest turn
  const std::uint64_t token_seed = stream_seed(seed, kTokens);
  for (int t = 0; t < conv.turns; ++t)
    for (int c = 0; c < n; ++c) {
      if (t >= turns_kept[static_cast<std::size_t>(c)]) continue;
      const auto m = static_cast<std::size_t>(t) * n + c;
      Request& r = out.emplace_back();
      r.id = static_cast<int>(out.size()) - 1;
      r.conversation = c;
      r.turn = t + 1;
      r.output_len = olen[m];
      Rng rng(stream_seed(token_seed, static_cast<std::uint64_t>(m)));
      r.prompt.resize(static_cast<std::size_t>(plen[m]));
      for (auto& id : r.prompt) id = static_cast<int>(rng.uniform_int(0, vocab_size - 1));
      if (t == 0) {
        r.arrival_s = arrival[static_cast<std::size_t>(c)];
        if (!prefixes.empty()) {
          const auto& p = prefixes[static_cast<std::size_t>(group_rng.uniform_int(0, w.shared_prefix.groups - 1))];
          r.prompt.insert(r.prompt.begin(), p.begin(), p.end());
        }
      } else {
        r.follows = prev_id[static_cast<std::size_t>(c)];
        r.think_s = think_s[m];
      }
      prev_id[static_cast<std::size_t>(c)] = r.id;
    }
  return out;
}

}  // namespace ablate
