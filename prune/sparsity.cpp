#include "prune/sparsity.h"

#include <regex>

#include "compress/error.h"
#include "compress/options.h"
#include "quant/format.h"

namespace compress {

std::string PatternSpec::str() const {
  return nm() ? std::to_string(n) + ":" + std::to_string(m) : pattern == SparsityPattern::Structured ? "structured" : "unstructured";
}

PatternSpec parsePattern(const std::string& s) {
  if (s == "unstructured") return {};
  std::smatch mt;
  static const std::regex re(R"(^\s*(\d+)\s*:\s*(\d+)\s*$)");
  if (std::regex_match(s, mt, re)) {
    int n = std::stoi(mt[1]), m = std::stoi(mt[2]);
    if (n > 0 && n < m && m <= 64) return {SparsityPattern::NofM, n, m};
    fail(ErrorCategory::Config, "pattern '" + s + "': N:M needs 0 < N < M <= 64 (N zeros in every M weights, e.g. 2:4 or 4:8)");
  }
  fail(ErrorCategory::Config, "pattern '" + s + "' is not 'unstructured' or 'N:M' (e.g. 2:4: two zeros in every four weights)");
}

PatternSpec readPattern(OptionReader& r) {
  std::string s = r.str("pattern", "unstructured",
                        "unstructured, or N:M = N zeros in every M consecutive weights of a row (2:4, 4:8); N:M sets the sparsity");
  try {
    return parsePattern(s);
  } catch (const Error& e) {
    r.error("pattern", e.what());
    return {};
  }
}

std::string patternName(const SparsityInfo& s) {
  switch (s.pattern) {
    case SparsityPattern::NofM: return std::to_string(s.n) + ":" + std::to_string(s.m);
    case SparsityPattern::Structured: return "structured";
    default: return "unstructured";
  }
}

at::Tensor keepLowestPruned(const at::Tensor& scores, int64_t prune) {
  at::Tensor mask = at::ones(scores.sizes(), at::kBool);
  if (prune <= 0) return mask;
  at::Tensor order = std::get<1>(at::sort(scores.reshape({-1}).to(at::kFloat), /*stable=*/true, 0, false));
  mask.view({-1}).index_fill_(0, order.narrow(0, 0, std::min<int64_t>(prune, scores.numel())), false);
  return mask;
}

at::Tensor keepPerRow(const at::Tensor& scores, double sparsity) {
  int64_t k = std::llround(sparsity * static_cast<double>(scores.size(1)));
  at::Tensor mask = at::ones(scores.sizes(), at::kBool);
  if (k <= 0) return mask;
  at::Tensor order = std::get<1>(at::sort(scores.to(at::kFloat), /*stable=*/true, 1, false));
  mask.scatter_(1, order.narrow(1, 0, k), false);
  return mask;
}

at::Tensor keepNofM(const at::Tensor& scores, int n, int m) {
  const int64_t rows = scores.size(0), cols = scores.size(1), full = cols / m * m;
  at::Tensor mask = at::ones(scores.sizes(), at::kBool);
  at::Tensor s = scores.to(at::kFloat);
  if (full > 0) {
    at::Tensor groups = s.narrow(1, 0, full).reshape({rows, full / m, m});
    at::Tensor order = std::get<1>(at::sort(groups, /*stable=*/true, 2, false)).narrow(2, 0, n);
    mask.narrow(1, 0, full).view({rows, full / m, m}).scatter_(2, order, false);
  }
  int64_t tail = cols - full, k = n * tail / m;
  if (k > 0) mask.narrow(1, full, tail).copy_(keepPerRow(s.narrow(1, full, tail), static_cast<double>(k) / tail));
  return mask;
}

nlohmann::json installMask(Graph& g, const std::string& w, at::Tensor mask, const PatternSpec& p) {
  at::Tensor& t = g.initializers.at(w);
  if (mask.sizes() != t.sizes() && mask.numel() == t.numel()) mask = mask.reshape(t.sizes());  // a conv's [out, in·k] mask
  auto prev = g.sparsity.find(w);
  if (prev != g.sparsity.end() && prev->second.mask.sizes() == mask.sizes()) mask = mask & prev->second.mask;
  t.mul_(mask.to(t.scalar_type()));  // in place: a calibration runner's folded views see it
  g.sparsity[w] = SparsityInfo{mask, p.pattern, p.n, p.m};
  int64_t z = mask.numel() - mask.sum().item<int64_t>();
  return {{"weight", w}, {"shape", t.sizes().vec()}, {"pattern", p.str()}, {"zeros", z}, {"numel", mask.numel()},
          {"sparsity", static_cast<double>(z) / static_cast<double>(mask.numel())}};
}

void sliceInitializer(Graph& g, const std::string& name, int64_t dim, const at::Tensor& index) {
  at::Tensor& t = g.initializers.at(name);
  t = t.index_select(dim, index).contiguous();
  auto sp = g.sparsity.find(name);
  if (sp != g.sparsity.end()) sp->second.mask = sp->second.mask.index_select(dim, index).contiguous();
}

std::map<std::string, bool> linearLayouts(const Graph& g) {
  std::map<std::string, bool> out;
  for (const auto& l : findLinears(g)) out[l.weight] = l.transposed;
  return out;
}

nlohmann::json sparsityTotals(const nlohmann::json& layers) {
  int64_t zeros = 0, total = 0;
  for (const auto& l : layers) zeros += l["zeros"].get<int64_t>(), total += l["numel"].get<int64_t>();
  return {{"zeros", zeros}, {"numel", total},
          {"sparsity", total ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0}, {"layers", layers}};
}

namespace {

/// "fp32", "fp16", or the quantized format's name ("int8", "int4-g32-asym").
std::string storageFormat(const Graph& g, const std::string& weight) {
  auto q = g.quant.find(weight);
  if (q != g.quant.end()) return QuantFormat{q->second.bits, static_cast<int32_t>(q->second.group_size), q->second.symmetric}.name();
  auto t = g.initializers.find(weight);
  if (t != g.initializers.end() && t->second.scalar_type() == at::kHalf) return "fp16";
  return "fp32";
}

}  // namespace

nlohmann::json sparsitySummary(const Graph& g) {
  nlohmann::json layers = nlohmann::json::array();
  int64_t zeros = 0, total = 0, pz = 0, pt = 0;
  std::set<std::string> seen;
  for (const auto& l : findLinears(g)) {
    if (!seen.insert(l.weight).second) continue;
    int64_t z = 0, n = 0;
    std::string pattern = "dense";
    auto sp = g.sparsity.find(l.weight);
    if (sp != g.sparsity.end()) {
      n = sp->second.mask.numel();
      z = n - sp->second.mask.sum().item<int64_t>();
      pattern = patternName(sp->second);
    } else if (g.initializers.count(l.weight)) {
      const at::Tensor& t = g.initializers.at(l.weight);
      n = t.numel();
      z = (t == 0).sum().item<int64_t>();
    } else if (g.initializers.count(l.weight + ".qdata")) {
      n = g.initializers.at(l.weight + ".qdata").numel();
    }
    if (n == 0) continue;
    zeros += z, total += n;
    if (sp != g.sparsity.end()) pz += z, pt += n;
    layers.push_back({{"weight", l.weight}, {"pattern", pattern}, {"zeros", z}, {"numel", n},
                      {"sparsity", static_cast<double>(z) / static_cast<double>(n)}, {"format", storageFormat(g, l.weight)},
                      {"bits_per_weight", 8.0 * static_cast<double>(g.weightBytes(l.weight)) / static_cast<double>(n)}});
  }
  auto frac = [](int64_t a, int64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };
  return {{"linear_sparsity", frac(zeros, total)}, {"linear_zeros", zeros}, {"linear_numel", total},
          {"pruned_layers_sparsity", frac(pz, pt)}, {"layers", layers}};
}

void requireFloatTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& weights) {
  for (const auto& w : weights)
    if (!g.isInitializer(w))
      fail(ErrorCategory::Config, pass + ": '" + w + "' is already quantized; put pruning before quantization in the recipe");
}

}  // namespace compress
