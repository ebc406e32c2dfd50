#include "model/prompts.hpp"

#include <fstream>
#include <stdexcept>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "model/tokenizer.hpp"

namespace ablate {

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open prompts file", path));
  const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  std::vector<std::string> out;
  std::string line;
  for (int no = 1; std::getline(in, line); ++no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!jsonl) {
      out.push_back(line);
      continue;
    }
    YAML::Node n;  // a JSON line is a YAML flow node
    try {
      n = YAML::Load(line);
    } catch (const YAML::Exception& e) {
      throw std::runtime_error(fmt::format("{}:{}: not valid JSON: {}", path, no, e.msg));
    }
    if (n.IsScalar() && line.front() == '"') {
      out.push_back(n.as<std::string>());
    } else if (n.IsMap() && (n["prompt"].IsScalar() || n["text"].IsScalar())) {
      out.push_back((n["prompt"].IsScalar() ? n["prompt"] : n["text"]).as<std::string>());
    } else {
      throw std::runtime_error(fmt::format("{}:{}: expected a JSON string or an object with a \"prompt\" string", path, no));
    }
    // A request needs at least one prompt token to have logits to sample from.
    if (out.back().empty()) throw std::runtime_error(fmt::format("{}:{}: empty prompt; every prompt needs some text", path, no));
  }
  if (out.empty()) throw std::runtime_error(fmt::format("{}: no prompts", path));
  return out;
}

std::vector<std::vector<int>> tokenize_prompts(const std::vector<std::string>& prompts, const Tokenizer& tok) {
  std::vector<std::vector<int>> out;
  out.reserve(prompts.size());
  for (const auto& p : prompts) {
    out.push_back(tok.tokenize(p));
    if (out.back().empty())
      throw std::runtime_error(fmt::format("prompt {} (\"{}\") gives no tokens; every prompt needs at least one",
                                           out.size(), p.substr(0, 40)));
  }
  return out;
}

}  // namespace ablate
