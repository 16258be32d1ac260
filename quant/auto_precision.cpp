// auto_precision.cpp — the `sensitivity` and `auto` passes (auto_precision.h).
// sensitivity: per layer and candidate format, the KL divergence of the outputs on calibration data when only
//   that layer is rounded to the candidate. Changes nothing in the graph.
// auto: the same sensitivities, a greedy path from the most precise to the cheapest assignment, then the point
//   on it that meets the goal — a bits-per-weight budget (nominal bits, as ModelOpt's effective bits count), or
//   a degradation of the recipe's eval metric verified by bisection (every trial applies the formats with GPTQ
//   or RTN and evaluates; a miss backs off toward the precise end). Changes: the selected weights -> quantized
//   in their assigned formats (fp32 candidates stay float).
#include "quant/auto_precision.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <regex>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "compress/progress.h"
#include "quant/gptq.h"
#include "quant/rtn.h"

namespace compress {

using json = nlohmann::json;

Candidate parseCandidate(const std::string& name) {
  if (name == "fp32") return Candidate{true, {}};
  static const std::regex re("int([2-8])(-g([0-9]+))?(-asym)?");
  std::smatch m;
  if (!std::regex_match(name, m, re))
    fail(ErrorCategory::Config, "candidate '" + name + "' is not a format: use fp32, int8, int4-g32, int4-g128-asym, ... "
                                "(int2-int8, optional -gN groups, optional -asym)");
  Candidate c;
  c.format.bits = std::stoi(m[1]);
  c.format.group_size = m[3].matched ? std::stoi(m[3]) : -1;
  c.format.symmetric = !m[4].matched;
  if (m[3].matched && (c.format.group_size < 8 || c.format.group_size % 8 != 0))
    fail(ErrorCategory::Config, "candidate '" + name + "': the group size must be a multiple of 8");
  return c;
}

double Candidate::storedBytes(int64_t out, int64_t in) const {
  const double n = static_cast<double>(out) * static_cast<double>(in);
  if (keep_float) return 4 * n;
  const double groups = static_cast<double>(out) * (format.group_size > 0 ? std::ceil(static_cast<double>(in) / format.group_size) : 1);
  return n * format.bits / 8 + groups * 4 + (format.symmetric ? 0 : groups * format.bits / 8);
}

namespace {

/// log-probabilities of the model's output over its last axis, per chunk of calibration rows.
std::vector<at::Tensor> outputLogProbs(const Graph& g, const at::Tensor& calibration, at::Device device, int64_t chunk) {
  at::NoGradGuard ng;
  Executor ex(g, ExecOptions{device});
  std::vector<at::Tensor> out;
  for (int64_t b = 0; b < calibration.size(0); b += chunk) {
    at::Tensor y = ex.run1(calibration.narrow(0, b, std::min(chunk, calibration.size(0) - b)));
    out.push_back(at::log_softmax(y.to(at::kDouble), -1));
  }
  return out;
}

/// Mean over positions of KL(ref || cur), in nats.
double meanKl(const std::vector<at::Tensor>& ref, const std::vector<at::Tensor>& cur) {
  double sum = 0;
  int64_t rows = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    at::Tensor kl = (ref[i].exp() * (ref[i] - cur[i])).sum(-1);
    sum += kl.sum().item<double>();
    rows += kl.numel();
  }
  const double v = sum / static_cast<double>(std::max<int64_t>(rows, 1));
  if (!std::isfinite(v)) fail(ErrorCategory::Numeric, "sensitivity: the KL divergence is not finite (NaN or Inf in the outputs)");
  return std::max(v, 0.0);
}

/// The weight as the candidate rounds it (RTN), in the weight's own layout and dtype.
at::Tensor rounded(const at::Tensor& w, const Candidate& c) {
  if (c.keep_float) return w;
  return dequantize(quantizeRtn(weightMatrix(w), c.format)).reshape(w.sizes()).to(w.scalar_type());
}

std::vector<size_t> byStoredBytesDescending(const Sensitivity& s, size_t w) {
  std::vector<size_t> order(s.candidates.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return s.candidates[a].storedBytes(s.out[w], s.in[w]) > s.candidates[b].storedBytes(s.out[w], s.in[w]);
  });
  return order;
}

}  // namespace

Sensitivity measureSensitivity(Graph& g, const std::vector<std::string>& weights, const std::vector<Candidate>& candidates,
                               const at::Tensor& calibration, at::Device device, int64_t chunk, bool progress) {
  Sensitivity s;
  s.weights = weights;
  s.candidates = candidates;
  const std::vector<at::Tensor> ref = outputLogProbs(g, calibration, device, chunk);
  Progress bar("sensitivity", static_cast<int64_t>(weights.size() * candidates.size()), "trials", progress);
  for (const std::string& w : weights) {
    const at::Tensor original = g.initializers.at(w);
    const at::Tensor m = weightMatrix(original);
    s.out.push_back(m.size(0));
    s.in.push_back(m.size(1));
    std::vector<double> row;
    for (const Candidate& c : candidates) {
      if (c.keep_float) {
        row.push_back(0.0);
      } else {
        g.initializers[w] = rounded(original, c);
        row.push_back(meanKl(ref, outputLogProbs(g, calibration, device, chunk)));
        g.initializers[w] = original;
      }
      bar.advance();
    }
    s.kl.push_back(row);
  }
  bar.finish();
  return s;
}

std::vector<Move> greedyPath(const Sensitivity& s) {
  const size_t n = s.weights.size();
  std::vector<std::vector<size_t>> order(n);
  std::vector<size_t> pos(n, 0);
  for (size_t w = 0; w < n; ++w) order[w] = byStoredBytesDescending(s, w);
  std::vector<Move> path;
  for (;;) {
    size_t best = n;
    double best_ratio = INFINITY;
    for (size_t w = 0; w < n; ++w) {
      if (pos[w] + 1 >= order[w].size()) continue;
      const size_t from = order[w][pos[w]], to = order[w][pos[w] + 1];
      const double saved = s.candidates[from].storedBytes(s.out[w], s.in[w]) - s.candidates[to].storedBytes(s.out[w], s.in[w]);
      const double ratio = (s.kl[w][to] - s.kl[w][from]) / std::max(saved, 1e-9);
      if (ratio < best_ratio) best_ratio = ratio, best = w;
    }
    if (best == n) break;
    path.push_back({best, order[best][pos[best]], order[best][pos[best] + 1]});
    ++pos[best];
  }
  return path;
}

std::vector<size_t> assignmentAfter(const Sensitivity& s, const std::vector<Move>& path, size_t k) {
  std::vector<size_t> a(s.weights.size());
  for (size_t w = 0; w < a.size(); ++w) a[w] = byStoredBytesDescending(s, w)[0];
  for (size_t i = 0; i < k && i < path.size(); ++i) a[path[i].weight] = path[i].to;
  return a;
}

double nominalBits(const Sensitivity& s, const std::vector<size_t>& a) {
  double bits = 0, n = 0;
  for (size_t w = 0; w < a.size(); ++w) {
    const double numel = static_cast<double>(s.out[w]) * static_cast<double>(s.in[w]);
    bits += numel * s.candidates[a[w]].bits();
    n += numel;
  }
  return n > 0 ? bits / n : 0;
}

double storedBytes(const Sensitivity& s, const std::vector<size_t>& a) {
  double b = 0;
  for (size_t w = 0; w < a.size(); ++w) b += s.candidates[a[w]].storedBytes(s.out[w], s.in[w]);
  return b;
}

std::vector<size_t> assignmentForBits(const Sensitivity& s, const std::vector<Move>& path, double budget, size_t* moves) {
  size_t k = 0;
  while (k <= path.size() && nominalBits(s, assignmentAfter(s, path, k)) > budget + 1e-9) ++k;
  if (k > path.size()) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "auto: the budget of %.3g bits per weight is below the cheapest assignment (%.3g bits); add a "
                  "cheaper candidate or raise bits", budget, nominalBits(s, assignmentAfter(s, path, path.size())));
    fail(ErrorCategory::Config, buf);
  }
  std::vector<size_t> a = assignmentAfter(s, path, k);
  for (size_t i = k; i-- > 0;) {
    const Move& m = path[i];
    if (a[m.weight] != m.to) continue;  // a later move of this weight was undone first: keep the chain whole
    a[m.weight] = m.from;
    if (nominalBits(s, a) > budget + 1e-9) a[m.weight] = m.to;
  }
  if (moves) *moves = k;
  return a;
}

namespace {

/// The options both passes share: candidates, layers, calibration rows.
struct SearchOptions {
  std::vector<Candidate> candidates;
  std::vector<std::string> targets = kLayerTargets, ignore;
  int64_t samples = 16, chunk = 8;
};

SearchOptions readSearchOptions(OptionReader& r) {
  SearchOptions o;
  const std::vector<std::string> names =
      r.strings("candidates", {"int8", "int4-g32-asym"}, "formats to choose from per layer: fp32, int8, int4-g32, int4-g128-asym, ...");
  for (const std::string& n : names) {
    try {
      o.candidates.push_back(parseCandidate(n));
    } catch (const Error& e) {
      r.error("candidates", e.what());
    }
  }
  if (names.empty()) r.error("candidates", "give at least one candidate format");
  o.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
  o.ignore = r.strings("ignore", {}, "parameter-name globs to leave in float");
  o.samples = r.integer("samples", 16, 1, 1 << 20, "calibration sequences the sensitivities are measured on");
  o.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  return o;
}

Sensitivity sensitivityFor(Graph& g, const SearchOptions& o, const char* pass, const PassContext& ctx) {
  const std::vector<std::string> weights = floatTargets(g, pass, selectPassTargets(g, pass, o.targets, o.ignore));
  if (weights.empty()) fail(ErrorCategory::Config, std::string(pass) + ": no float linear weight to choose a format for");
  const at::Tensor calib = ctx.calibration.narrow(0, 0, std::min(o.samples, ctx.calibration.size(0)));
  return measureSensitivity(g, weights, o.candidates, calib, ctx.device, o.chunk, ctx.show_progress);
}

json sensitivityJson(const Sensitivity& s) {
  json layers = json::array();
  for (size_t w = 0; w < s.weights.size(); ++w) {
    json kl = json::object();
    for (size_t c = 0; c < s.candidates.size(); ++c) kl[s.candidates[c].name()] = s.kl[w][c];
    layers.push_back({{"weight", s.weights[w]}, {"shape", {s.out[w], s.in[w]}}, {"kl", kl}});
  }
  return layers;
}

class SensitivityPass : public Pass {
 public:
  const char* name() const override { return "sensitivity"; }
  const char* description() const override {
    return "Per layer and candidate format: the KL divergence of the outputs on calibration data when only that layer is "
           "rounded to it (changes nothing; a ranked table and a plot in the report).";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override { opts_ = readSearchOptions(r); }
  PassResult run(Graph& g, PassContext& ctx) override {
    const Sensitivity s = sensitivityFor(g, opts_, name(), ctx);
    // Ranked by the KL of the cheapest candidate: the layers that mind compression most come first.
    const size_t cheapest = byStoredBytesDescending(s, 0).back();
    std::vector<size_t> rank(s.weights.size());
    for (size_t i = 0; i < rank.size(); ++i) rank[i] = i;
    std::stable_sort(rank.begin(), rank.end(), [&](size_t a, size_t b) { return s.kl[a][cheapest] > s.kl[b][cheapest]; });
    json ranked = json::array();
    for (size_t i : rank) ranked.push_back(s.weights[i]);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%zu layers x %zu candidates; most sensitive to %s: %s (KL %.2e nats)", s.weights.size(),
                  s.candidates.size(), s.candidates[cheapest].name().c_str(), s.weights[rank[0]].c_str(), s.kl[rank[0]][cheapest]);
    return {buf, {{"sensitivity", sensitivityJson(s)}, {"ranked_by", s.candidates[cheapest].name()}, {"ranking", ranked},
                  {"samples", std::min(opts_.samples, ctx.calibration.size(0))}}};
  }

 private:
  SearchOptions opts_;
};

/// Quantizes each weight in its assigned candidate (fp32 ones stay), one GPTQ or RTN run per format.
void applyAssignment(Graph& g, const Sensitivity& s, const std::vector<size_t>& a, bool gptq, const PassContext& ctx) {
  for (size_t c = 0; c < s.candidates.size(); ++c) {
    if (s.candidates[c].keep_float) continue;
    std::vector<std::string> names;
    for (size_t w = 0; w < a.size(); ++w)
      if (a[w] == c) names.push_back(s.weights[w]);
    if (names.empty()) continue;
    if (gptq) {
      GptqOptions o;
      o.format = s.candidates[c].format;
      o.targets = names;
      gptqQuantizeModel(g, ctx.calibration, o, ctx.device, false);
    } else {
      RtnOptions o;
      o.format = s.candidates[c].format;
      o.targets = names;
      rtnQuantize(g, o);
    }
  }
}

class AutoPass : public Pass {
 public:
  const char* name() const override { return "auto"; }
  const char* description() const override {
    return "Accuracy-driven mixed precision: a format per layer from the candidates, chosen by sensitivity (KL on calibration "
           "data) to meet a bits-per-weight budget or a degradation of the eval metric (verified, backing off on a miss).";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    search_ = readSearchOptions(r);
    bits_ = r.number("bits", -1, -1, 32, "goal: average nominal bits per weight over the layers (scales not counted), e.g. 4.5");
    max_degradation_ = r.number("max_degradation", -1, -1, 1e6, "goal: allowed relative loss of the eval metric, e.g. 2% (needs data.eval)");
    gptq_ = r.choice("method", "gptq", {"gptq", "rtn"}, "how the chosen formats are applied") == "gptq";
    time_budget_ = r.number("time_budget", 0, 0, 1e9, "seconds the search may take (0: no limit); the best verified point so far wins");
    if (bits_ < 0 && max_degradation_ < 0) r.error("bits", "give a goal: bits (e.g. 4.5) or max_degradation (e.g. 2%)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    const auto t0 = std::chrono::steady_clock::now();
    const Sensitivity s = sensitivityFor(g, search_, name(), ctx);
    const std::vector<Move> path = greedyPath(s);
    json trials = json::array();
    size_t k = 0;
    const std::vector<size_t> a = bits_ >= 0 ? assignmentForBits(s, path, bits_, &k)
                                             : assignmentAfter(s, path, k = searchDegradation(g, s, path, ctx, trials, t0));
    applyAssignment(g, s, a, gptq_, ctx);
    if (bits_ >= 0 && ctx.degradation) {  // the budget decides; the eval metric is reported with it
      const double d = ctx.degradation(g);
      trials.push_back({{"moves", k}, {"bits", nominalBits(s, a)}, {"bytes", storedBytes(s, a)}, {"degradation", d},
                        {"passed", max_degradation_ < 0 || d <= max_degradation_ + 1e-12}});
    }
    return summarize(s, path, k, a, trials);
  }

 private:
  SearchOptions search_;
  double bits_ = -1, max_degradation_ = -1, time_budget_ = 0;
  bool gptq_ = true;

  /// Bisection on the path for the most moves whose verified degradation meets the goal. Each trial quantizes a
  /// copy of the graph and evaluates it; a miss backs off toward the precise end.
  size_t searchDegradation(const Graph& g, const Sensitivity& s, const std::vector<Move>& path, PassContext& ctx,
                           json& trials, std::chrono::steady_clock::time_point t0) const {
    if (!ctx.degradation)
      fail(ErrorCategory::Config, "auto: max_degradation needs data.eval in the recipe (the goal is checked on it)");
    auto trial = [&](size_t k) {
      const auto tt = std::chrono::steady_clock::now();
      Graph c = g.clone();
      const std::vector<size_t> a = assignmentAfter(s, path, k);
      applyAssignment(c, s, a, gptq_, ctx);
      const double d = ctx.degradation(c);
      const bool ok = d <= max_degradation_ + 1e-12;
      trials.push_back({{"moves", k}, {"bits", nominalBits(s, a)}, {"bytes", storedBytes(s, a)}, {"degradation", d},
                        {"passed", ok}, {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - tt).count()}});
      if (ctx.show_progress)
        std::fprintf(stderr, "auto: trial %zu: %zu of %zu moves, %.2f bits, %+.2f%% -> %s\n", trials.size(), k, path.size(),
                     nominalBits(s, a), 100 * d, ok ? "meets the goal" : "misses it");
      return ok;
    };
    auto out_of_time = [&] {
      return time_budget_ > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > time_budget_;
    };
    if (trial(path.size())) return path.size();
    size_t lo = 0, hi = path.size();  // invariant: hi misses; lo meets (or is the precise end)
    if (!trial(0)) return 0;          // even the most precise assignment misses: the recipe's gate reports it
    while (hi - lo > 1 && !out_of_time()) {
      const size_t mid = lo + (hi - lo) / 2;
      (trial(mid) ? lo : hi) = mid;
    }
    return lo;
  }

  PassResult summarize(const Sensitivity& s, const std::vector<Move>& path, size_t k, const std::vector<size_t>& a,
                       const json& trials) const {
    json layers = json::array();
    std::map<std::string, int> count;
    for (size_t w = 0; w < a.size(); ++w) {
      layers.push_back({{"weight", s.weights[w]}, {"shape", {s.out[w], s.in[w]}}, {"format", s.candidates[a[w]].name()},
                        {"kl", s.kl[w][a[w]]}});
      ++count[s.candidates[a[w]].name()];
    }
    std::string mix;
    for (const auto& [f, n] : count) mix += (mix.empty() ? "" : ", ") + std::to_string(n) + " " + f;
    char buf[240];
    std::snprintf(buf, sizeof buf, "%s; %.2f bits per weight (%zu of %zu moves%s%s)", mix.c_str(), nominalBits(s, a), k,
                  path.size(), trials.empty() ? "" : ", ", trials.empty() ? "" : (std::to_string(trials.size()) + " trials").c_str());
    json goal = json::object();
    if (bits_ >= 0) goal["bits"] = bits_;
    if (max_degradation_ >= 0) goal["max_degradation"] = max_degradation_;
    return {buf, {{"goal", goal}, {"method", gptq_ ? "gptq" : "rtn"}, {"bits", nominalBits(s, a)}, {"bytes", storedBytes(s, a)},
                  {"moves", k}, {"path_length", path.size()}, {"trials", trials}, {"layers", layers},
                  {"sensitivity", sensitivityJson(s)}}};
  }
};

}  // namespace

std::unique_ptr<Pass> makeSensitivityPass() { return std::make_unique<SensitivityPass>(); }
std::unique_ptr<Pass> makeAutoPass() { return std::make_unique<AutoPass>(); }

}  // namespace compress
