// structured_prune.cpp — structured pruning of FFN neurons and attention heads (the width-pruning step of
// Sheared-LLaMA / LLM-Pruner / Minitron-style compression): neuron j of an FFN is row j of its up/gate
// projections and column j of its down projection; removing it removes all three, so the result is a
// smaller dense model — fewer parameters, a smaller ONNX file, less work in every runtime. Heads are found
// and removed by prune/attention_heads.cpp. Importance: the activation-weighted
// norm ‖h_j‖₂·‖W_down[:, j]‖₂ over the calibration tokens (h = the down projection's input; Wanda's score
// summed over a column), or a data-free weight-magnitude score.
// Changes: weight shapes of every selected FFN and attention unit, the biases inside them, masks, shape
// constants of the heads; value shapes are re-inferred. Keeps: topology (no nodes are added or removed).
#include "prune/structured_prune.h"

#include "prune/attention_heads.h"
#include "prune/sparsity.h"

#include <chrono>
#include <cmath>
#include <functional>
#include <set>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/executor.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "runtime/op_table.h"

namespace compress {

namespace {

/// Ops an FFN unit's hidden values may pass through: elementwise on the hidden axis (op_table.def's Prune).
bool elementwiseOp(const std::string& op) { return crt::opHas(op, crt::op_trait::Prune); }

/// A Reshape inside an FFN unit that leaves the hidden axis (size H) last and whole: its target's last
/// element is -1, a copy of a hidden value's last dim, or the constant H (recorded to rewrite).
bool hiddenView(const Graph& g, int node, int64_t H, FfnGroup& f) {
  const Node& n = g.nodes[static_cast<size_t>(node)];
  auto last = [&](const std::string& v) {
    auto it = g.values.find(v);
    return it == g.values.end() || !it->second.shape || it->second.shape->empty() || !it->second.shape->back().isFixed()
               ? int64_t{-1} : it->second.shape->back().value;
  };
  if (last(n.inputs[0]) != H || last(n.outputs[0]) != H) return false;
  auto src = traceShapeVector(g, n.inputs[1], node, 1);
  if (!src || src->empty()) return false;
  const ShapeSource& e = src->back();
  if (e.kind == ShapeSource::Const && e.value == -1) return true;
  if (e.kind == ShapeSource::Const && e.value == H && e.node >= 0) {
    f.resizes.push_back({e.node, e.input, e.index});
    return true;
  }
  return e.kind == ShapeSource::Dim && last(e.tensor) == H && e.scale == 1;
}

}  // namespace

std::vector<FfnGroup> findFfnGroups(const Graph& g, const std::vector<std::string>& down_weights) {
  auto linears = findLinears(g);
  std::map<std::string, LinearRef> by_output;  // MatMul output -> linear
  std::map<std::string, LinearRef> by_weight;
  for (const auto& l : linears) {
    by_output.emplace(g.nodes[l.node].outputs[0], l);
    by_weight.emplace(l.weight, l);
  }
  auto outDim = [&](const LinearRef& l) {
    const at::Tensor& t = g.initializers.at(l.weight);
    return l.transposed ? t.size(0) : t.size(1);
  };
  auto inDim = [&](const LinearRef& l) {
    const at::Tensor& t = g.initializers.at(l.weight);
    return l.transposed ? t.size(1) : t.size(0);
  };
  std::vector<FfnGroup> out;
  for (const auto& d : down_weights) {
    auto dl = by_weight.find(d);
    if (dl == by_weight.end() || !g.isInitializer(d)) continue;
    const int64_t H = inDim(dl->second);
    FfnGroup f{d, {}, {}, H, {}};
    std::set<std::string> chain;  // values computed inside f
    std::vector<std::string> todo = {g.nodes[dl->second.node].inputs[0]};
    bool ok = true;
    while (ok && !todo.empty()) {
      std::string v = todo.back();
      todo.pop_back();
      if (!chain.insert(v).second) continue;
      auto lin = by_output.find(v);
      if (lin != by_output.end()) {
        if (!g.isInitializer(lin->second.weight) || outDim(lin->second) != H) ok = false;
        else if (std::find(f.up.begin(), f.up.end(), lin->second.weight) == f.up.end()) f.up.push_back(lin->second.weight);
        continue;
      }
      int p = g.producer(v);
      if (p >= 0 && g.nodes[p].op == "Reshape") {  // a view that keeps the hidden axis last and whole
        if (!hiddenView(g, p, H, f)) {
          ok = false;
          break;
        }
        todo.push_back(g.nodes[p].inputs[0]);
        continue;
      }
      if (p < 0 || !elementwiseOp(g.nodes[p].op)) {
        ok = false;
        break;
      }
      for (const auto& in : g.nodes[p].inputs) {
        if (in.empty()) continue;
        if (g.isInitializer(in)) {
          const at::Tensor& t = g.initializers.at(in);
          if (t.numel() == 1) continue;
          // A bias over the hidden units, used only here, is sliced with them; anything else blocks.
          if (t.dim() >= 1 && t.size(-1) == H && t.numel() == H && g.consumers(in).size() == 1) f.biases.push_back(in);
          else ok = false;
        } else {
          todo.push_back(in);
        }
      }
    }
    if (!ok || f.up.empty()) continue;
    // Nothing outside the unit may read its hidden values, or their shapes would change under it (reading
    // only their shape is fine: it follows).
    for (const auto& v : chain) {
      for (int c : g.consumers(v)) {
        const Node& n = g.nodes[c];
        bool inside = c == dl->second.node || crt::opHas(n.op, crt::op_trait::ShapeOnly);
        for (const auto& o : n.outputs) inside = inside || chain.count(o);
        if (!inside) ok = false;
      }
    }
    for (const auto& u : f.up) {
      const Node& mm = g.nodes[by_weight.at(u).node];
      if (chain.count(mm.inputs[0])) ok = false;  // an up projection reading the unit's own hidden values
      // A weight shared with another layer cannot shrink alone.
      if (g.consumers(u).size() != 1 || (by_weight.at(u).transposed && g.consumers(mm.inputs[1]).size() != 1)) ok = false;
    }
    if (ok) out.push_back(f);
  }
  return out;
}

void keepNeurons(Graph& g, const FfnGroup& f, const at::Tensor& keep) {
  auto transposed = linearLayouts(g);
  for (const auto& u : f.up) sliceInitializer(g, u, transposed.at(u) ? 0 : 1, keep);
  sliceInitializer(g, f.down, transposed.at(f.down) ? 1 : 0, keep);
  for (const auto& b : f.biases) sliceInitializer(g, b, g.initializers.at(b).dim() - 1, keep);
  for (const auto& r : f.resizes) {  // a fresh constant: the old one may have other readers
    std::string& in = g.nodes[static_cast<size_t>(r.node)].inputs[r.input];
    at::Tensor t = g.initializers.at(in).clone();
    t.view(-1)[r.index] = keep.numel();
    const std::string name = g.freshName(in + ".ffn");
    g.initializers[name] = t;
    g.values[name] = ValueInfo{dtypeFromScalarType(t.scalar_type()), Shape{Dim::fixed(t.numel())}};
    in = name;
  }
}

namespace {

// Keeps the `keep_n` highest scores, as sorted indices.
at::Tensor topIndices(const at::Tensor& scores, int64_t keep_n) {
  at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, 0, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(0, 0, keep_n)));
}

// How many units each of several groups keeps when `remove` of all of them go by one ranking of `scores`
// (lowest first; each group keeps at least one unit). `stop` ends removal early (parameter targets).
std::vector<int64_t> globalKeep(const std::vector<at::Tensor>& scores, int64_t remove, const std::function<bool(size_t)>& stop) {
  std::vector<std::tuple<float, size_t, int64_t>> all;
  std::vector<int64_t> keep;
  for (size_t i = 0; i < scores.size(); ++i) {
    at::Tensor s = scores[i].to(at::kFloat).contiguous();
    auto acc = s.accessor<float, 1>();
    for (int64_t j = 0; j < s.numel(); ++j) all.emplace_back(acc[j], i, j);
    keep.push_back(s.numel());
  }
  std::stable_sort(all.begin(), all.end());
  for (int64_t k = 0, removed = 0; removed < remove && k < static_cast<int64_t>(all.size()); ++k) {
    size_t i = std::get<1>(all[static_cast<size_t>(k)]);
    if (keep[i] <= 1) continue;
    if (stop && stop(i)) break;
    keep[i]--;
    removed++;
  }
  return keep;
}

}  // namespace

nlohmann::json structuredPrune(Graph& g, const at::Tensor& calibration, const StructuredPruneOptions& opts, at::Device device) {
  auto t0 = std::chrono::steady_clock::now();
  auto targets = selectPassTargets(g, "structured-prune", opts.targets, opts.ignore);
  requireFloatTargets(g, "structured-prune", targets);
  const bool do_ffn = opts.ffn_ratio > 0 || opts.target_params > 0, do_heads = opts.head_ratio > 0;
  std::vector<FfnGroup> groups;
  if (do_ffn) {
    groups = findFfnGroups(g, targets);
    if (groups.empty())
      fail(ErrorCategory::Config, "structured-prune: no feed-forward unit (up/gate projections -> elementwise -> down projection) among the "
                                  "targeted weights; check `targets`");
  }
  std::vector<AttentionUnit> units;
  if (do_heads) {
    std::vector<std::string> why;
    units = findAttentionUnits(g, targets, &why);
    if (units.empty()) {
      std::string msg = "structured-prune: head_ratio is set but no attention unit (separate q/k/v projections -> per-head attention -> "
                        "output projection) was found among the targeted weights";
      for (size_t k = 0; k < why.size() && k < 4; ++k) msg += "\n  " + why[k];
      fail(ErrorCategory::Config, msg);
    }
  }
  const int64_t params_before = g.parameterCount();
  const auto transposed = linearLayouts(g);
  // Σ x_c² of the inputs of every down and output projection, in one calibration run.
  ChannelNormAccumulator acc;
  if (opts.score == "activation") {
    std::vector<std::string> ws;
    for (const auto& f : groups) ws.push_back(f.down);
    for (const auto& u : units) ws.push_back(u.o);
    BlockRunner runner(g, calibration, opts.chunk, device);
    runner.capture(ws, [&](const std::string& w, const at::Tensor& x) { acc.add(w, x); });
  }
  // Per input channel of a consuming layer: ‖x_c‖₂·‖W[:, c]‖₂ (activation) or ‖W[:, c]‖₂ (magnitude).
  auto channelScores = [&](const std::string& w) {
    at::Tensor n = g.initializers.at(w).to(at::kFloat).norm(2, transposed.at(w) ? 0 : 1);
    return opts.score == "activation" ? acc.norms(w) * n : n;
  };

  // FFN neurons.
  std::vector<at::Tensor> scores;
  std::vector<int64_t> cost;  // parameters per neuron
  for (const auto& f : groups) {
    at::Tensor s = channelScores(f.down);
    if (opts.score == "magnitude")
      for (const auto& u : f.up) s = s * g.initializers.at(u).to(at::kFloat).norm(2, transposed.at(u) ? 1 : 0);
    scores.push_back(s);
    int64_t c = g.initializers.at(f.down).numel() / f.neurons + static_cast<int64_t>(f.biases.size());
    for (const auto& u : f.up) c += g.initializers.at(u).numel() / f.neurons;
    cost.push_back(c);
  }
  auto roundUp = [&](int64_t k, int64_t H) { return std::min(H, (k + opts.multiple_of - 1) / opts.multiple_of * opts.multiple_of); };
  std::vector<int64_t> keep_n(groups.size());
  if (opts.scope == "layer" && opts.target_params <= 0) {
    for (size_t i = 0; i < groups.size(); ++i) {
      int64_t H = groups[i].neurons;
      keep_n[i] = std::max<int64_t>(1, H - std::llround(opts.ffn_ratio * static_cast<double>(H)));
    }
  } else if (!groups.empty()) {
    int64_t total = 0;
    for (const auto& f : groups) total += f.neurons;
    int64_t params = params_before;
    int64_t remove = opts.target_params > 0 ? total : std::llround(opts.ffn_ratio * static_cast<double>(total));
    keep_n = globalKeep(scores, remove, [&](size_t i) {
      if (opts.target_params <= 0) return false;
      if (params <= opts.target_params) return true;
      params -= cost[i];
      return false;
    });
    if (opts.target_params > 0 && params > opts.target_params)
      fail(ErrorCategory::Config, "structured-prune: target_params " + std::to_string(opts.target_params) +
                                      " cannot be reached by removing FFN neurons (the model has " + std::to_string(params_before) +
                                      " parameters; at most " + std::to_string(params_before - params) + " can go this way)");
  }
  nlohmann::json layers = nlohmann::json::array();
  int64_t removed = 0, neurons = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    keep_n[i] = roundUp(keep_n[i], groups[i].neurons);
    at::Tensor keep = topIndices(scores[i], keep_n[i]);
    keepNeurons(g, groups[i], keep);
    removed += groups[i].neurons - keep_n[i];
    neurons += groups[i].neurons;
    std::string ups;
    for (const auto& u : groups[i].up) ups += (ups.empty() ? "" : ", ") + u;
    layers.push_back({{"layer", groups[i].down}, {"group", "ffn neurons (" + ups + ")"}, {"neurons_before", groups[i].neurons},
                      {"kept", keep_n[i]}});
  }

  // Attention heads, in key/value groups.
  std::vector<at::Tensor> head_scores;
  for (const auto& u : units) head_scores.push_back(channelScores(u.o).reshape({u.groups, -1}).sum(1));
  std::vector<int64_t> keep_g(units.size());
  if (opts.scope == "layer") {
    for (size_t i = 0; i < units.size(); ++i)
      keep_g[i] = std::max<int64_t>(1, units[i].groups - std::llround(opts.head_ratio * static_cast<double>(units[i].groups)));
  } else if (!units.empty()) {
    int64_t total = 0;
    for (const auto& u : units) total += u.groups;
    keep_g = globalKeep(head_scores, std::llround(opts.head_ratio * static_cast<double>(total)), nullptr);
  }
  int64_t heads_removed = 0, heads_before = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const AttentionUnit& u = units[i];
    keepHeadGroups(g, u, topIndices(head_scores[i], keep_g[i]));
    int64_t per_group = u.heads / u.groups;
    heads_removed += (u.groups - keep_g[i]) * per_group;
    heads_before += u.heads;
    layers.push_back({{"layer", u.o}, {"group", "attention heads (" + std::to_string(per_group) + " query head" +
                                                    (per_group > 1 ? "s" : "") + " per key/value head)"},
                      {"neurons_before", u.heads}, {"kept", keep_g[i] * per_group}});
  }

  // Value shapes downstream of the changed weights and constants.
  g.pruneUnused();
  reinferShapes(g);
  const int64_t params_after = g.parameterCount();
  return {{"score", opts.score}, {"scope", opts.target_params > 0 ? "global" : opts.scope}, {"ffn_ratio", opts.ffn_ratio},
          {"head_ratio", opts.head_ratio}, {"target_params", opts.target_params}, {"ffn_units", groups.size()},
          {"neurons_before", neurons}, {"neurons_removed", removed}, {"attention_units", units.size()},
          {"heads_before", heads_before}, {"heads_removed", heads_removed}, {"params_before", params_before},
          {"params_after", params_after},
          {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}, {"layers", layers}};
}

namespace {

class StructuredPrunePass : public Pass {
 public:
  const char* name() const override { return "structured-prune"; }
  const char* description() const override {
    return "Structured pruning: remove whole FFN neurons and attention heads by importance, giving a smaller dense model.";
  }
  bool needsCalibration() const override { return opts_.score == "activation"; }
  void configure(OptionReader& r) override {
    opts_.ffn_ratio = r.number("ffn_ratio", 0.25, 0.0, 0.99, "fraction of FFN neurons to remove (0.25 or 25%; 0 = none)");
    opts_.head_ratio = r.number("head_ratio", 0.0, 0.0, 0.99,
                                "fraction of attention heads to remove, in whole key/value groups under grouped-query attention");
    opts_.target_params = r.integer("target_params", 0, 0, int64_t{1} << 50,
                                    "> 0: remove the lowest-scored FFN neurons of all layers until the model has at most this many parameters");
    opts_.scope = r.choice("scope", "layer", {"layer", "global"}, "ffn_ratio of every FFN, or of all FFN neurons ranked together");
    opts_.score = r.choice("score", "activation", {"activation", "magnitude"},
                           "activation: ||h_j|| x ||W_down[:, j]|| on calibration data; magnitude: weight norms only (no data)");
    opts_.multiple_of = r.integer("multiple_of", 1, 1, 4096, "round each FFN's kept neurons up to a multiple of this");
    opts_.targets = r.strings("targets", {"Linear"}, "down projections to consider: Linear (every FFN found), or globs (layers.*.w2)");
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave alone");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = structuredPrune(g, ctx.calibration, opts_, ctx.device);
    char buf[240];
    std::snprintf(buf, sizeof buf, "removed %lld of %lld FFN neurons and %lld of %lld attention heads (%s score): %lld -> %lld parameters",
                  static_cast<long long>(s["neurons_removed"].get<int64_t>()), static_cast<long long>(s["neurons_before"].get<int64_t>()),
                  static_cast<long long>(s["heads_removed"].get<int64_t>()), static_cast<long long>(s["heads_before"].get<int64_t>()),
                  opts_.score.c_str(),
                  static_cast<long long>(s["params_before"].get<int64_t>()), static_cast<long long>(s["params_after"].get<int64_t>()));
    return {buf, s};
  }

 private:
  StructuredPruneOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeStructuredPrunePass() { return std::make_unique<StructuredPrunePass>(); }

}  // namespace compress
