// awq.cpp — AWQ (Lin et al. 2023, arXiv:2306.00978): protects the weights that meet large activations by
// scaling input channels up (s = mean|x|^alpha, alpha searched on a grid against the layers' output error
// after fake quantization) and folding 1/s into the op that produces the input (RMSNorm/LayerNorm weight,
// or the rows of the previous linear layer), then shrinking each group's clipping range where that lowers
// the output error. Changes: norm weights / previous linear rows (float, exactly compensated), selected
// Linear weights -> scaled, clipped and (unless quantize: false) RTN-quantized. Keeps: topology.
#include "quant/awq.h"

#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "compress/calibration.h"
#include "runtime/op_table.h"
#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "compress/progress.h"

namespace compress {
namespace {

at::Tensor fakeQuant(const at::Tensor& w, const QuantFormat& f) { return dequantize(quantizeRtn(w, f)); }

// Per-group clipping search (llm-awq auto_clip): for each output row and input group, the max |w| ratio
// that minimises the group's output error on sampled tokens; rows are processed in batches.
at::Tensor clipWeight(const at::Tensor& w, const at::Tensor& x_all, const AwqOptions& o) {
  int64_t out = w.size(0), in = w.size(1);
  int64_t gs = o.format.group_size > 0 ? o.format.group_size : in;
  if (in % gs != 0) return w;  // ragged groups: keep it simple, no clipping
  int64_t step = std::max<int64_t>(1, x_all.size(0) / o.clip_tokens);
  at::Tensor x = x_all.slice(0, 0, x_all.size(0), step).narrow(0, 0, std::min(o.clip_tokens, (x_all.size(0) + step - 1) / step));
  int64_t n = x.size(0), ng = in / gs;
  at::Tensor xg = x.reshape({1, n, ng, gs});
  at::Tensor result = w.clone();
  const int64_t rows_per_batch = 64;
  for (int64_t r0 = 0; r0 < out; r0 += rows_per_batch) {
    int64_t rb = std::min(rows_per_batch, out - r0);
    at::Tensor wb = w.narrow(0, r0, rb).reshape({rb, 1, ng, gs});
    at::Tensor org_out = (xg * wb).sum(-1);                   // [rb, n, ng]
    at::Tensor org_max = wb.abs().amax(-1, true);             // [rb, 1, ng, 1]
    at::Tensor best_max = org_max.clone();
    at::Tensor min_err = at::full({rb, 1, ng, 1}, INFINITY);
    for (int64_t i = 0; i < static_cast<int64_t>(o.max_shrink * o.clip_grid); ++i) {
      at::Tensor max_val = org_max * (1.0 - static_cast<double>(i) / static_cast<double>(o.clip_grid));
      at::Tensor cur = at::max(at::min(wb, max_val), -max_val);
      at::Tensor q = fakeQuant(cur.reshape({rb, in}), o.format).reshape({rb, 1, ng, gs});
      at::Tensor err = ((xg * q).sum(-1) - org_out).pow(2).mean(1).reshape({rb, 1, ng, 1});
      at::Tensor better = err < min_err;
      min_err = at::where(better, err, min_err);
      best_max = at::where(better, max_val, best_max);
    }
    result.narrow(0, r0, rb).copy_(at::max(at::min(wb, best_max), -best_max).reshape({rb, in}));
  }
  return result;
}

bool matchesAny(const std::vector<std::string>& pats, const std::vector<std::string>& names) {
  for (const auto& p : pats)
    for (const auto& n : names)
      if (fnmatch(p.c_str(), n.c_str(), 0) == 0) return true;
  return false;
}

}  // namespace

namespace {

/// Readers of `v` that read its values (Shape nodes read only the shape, which a scale leaves alone).
int valueReaders(const Graph& g, const std::string& v) {
  int n = 0;
  for (int c : g.consumers(v)) n += g.nodes[static_cast<size_t>(c)].op == "Shape" ? 0 : 1;
  return n;
}

/// A per-channel initializer of `n` entries that only one node reads: it can take the scale alone.
bool ownVector(const Graph& g, const std::string& v, int64_t n) {
  return !v.empty() && g.isInitializer(v) && g.initializers.at(v).dim() == 1 && g.initializers.at(v).size(0) == n &&
         g.consumers(v).size() == 1;
}

ScaleFold noFold(const std::string& why) {
  ScaleFold f;
  f.why = why;
  return f;
}

}  // namespace

ScaleFold findScaleFold(const Graph& g, const std::vector<std::string>& weights) {
  std::map<std::string, LinearRef> lin;
  for (const auto& l : findLinears(g)) lin.emplace(l.weight, l);
  std::map<std::string, ConvRef> conv;
  for (const auto& c : findConvs(g)) conv.emplace(c.weight, c);
  std::string x;
  std::set<int> readers;
  bool convs = false;
  for (const auto& w : weights) {
    int node = -1;
    if (auto it = lin.find(w); it != lin.end() && it->second.transposed) node = it->second.node;
    else if (auto c = conv.find(w); c != conv.end() && c->second.groups == 1) node = c->second.node, convs = true;
    if (node < 0) return noFold("'" + w + "' is not a linear layer or a conv with groups 1");
    // A weight read elsewhere too (an lm_head tied to the token embedding's Gather) cannot take the scale.
    if (!g.isInitializer(w) || g.consumers(w).size() != 1) return noFold("'" + w + "' is tied to another use");
    readers.insert(node);
    const std::string& in = g.nodes[static_cast<size_t>(node)].inputs[0];
    if (!x.empty() && x != in) return noFold("the layers read different inputs");
    x = in;
  }
  // Every reader of x must be one of the group's layers, or the scale would leak elsewhere.
  for (int c : g.consumers(x))
    if (!readers.count(c)) return noFold("the input is also read by " + g.nodes[static_cast<size_t>(c)].op + " node '" + g.nodes[static_cast<size_t>(c)].name + "'");
  const int64_t in_dim = g.initializers.at(weights[0]).size(1);
  int p = g.producer(x);
  // Through reshapes that keep the channel axis last ([B, S, D] -> [B·S, D] before HF Conv1D's addmm), and
  // through positively homogeneous ops; nothing else may read the values on the way.
  while (p >= 0) {
    const Node& n = g.nodes[static_cast<size_t>(p)];
    const std::string& src = n.inputs[0];
    if (n.op == "Reshape" && !convs) {
      auto vi = g.values.find(src);
      if (vi == g.values.end() || !vi->second.shape || vi->second.shape->empty() || !vi->second.shape->back().isFixed() ||
          vi->second.shape->back().value != in_dim)
        return noFold("a reshape moves the channels");
    } else if (!crt::opHas(n.op, crt::op_trait::Homogeneous)) {
      break;
    }
    if (valueReaders(g, src) != 1) return noFold("a value on the way to the input is read elsewhere too");
    p = g.producer(src);
  }
  if (p < 0) return noFold("the input is a model input");
  const Node& n = g.nodes[static_cast<size_t>(p)];
  const std::string out = n.outputs[0];
  auto xi = g.values.find(x);
  const bool flat = xi != g.values.end() && xi->second.shape && xi->second.shape->size() == 2;  // [N, C]: BN's axis 1 is last
  if ((n.op == "LayerNormalization" && !convs) || (n.op == "BatchNormalization" && (convs || flat))) {
    const std::string bias = n.inputs.size() > 2 ? n.inputs[2] : "";
    if (ownVector(g, n.inputs[1], in_dim) && (bias.empty() || ownVector(g, bias, in_dim))) return {ScaleFold::Affine, n.inputs[1], bias, ""};
    return noFold(n.op + "'s parameters are shared or not per channel");
  }
  if (n.op == "Conv" && n.attrInt("group", 1) == 1 && n.inputs.size() > 1 && g.isInitializer(n.inputs[1]) &&
      g.initializers.at(n.inputs[1]).size(0) == in_dim && g.consumers(n.inputs[1]).size() == 1) {
    const std::string bias = n.inputs.size() > 2 ? n.inputs[2] : "";
    if (bias.empty() || ownVector(g, bias, in_dim)) return {ScaleFold::PrevRows, n.inputs[1], bias, ""};
  }
  if (convs) return noFold("the input comes from " + n.op + " node '" + n.name + "', which cannot take a per-channel scale exactly");
  auto prevLinear = [&](const std::string& v) -> std::string {  // the [out, in] weight of the linear computing v
    int pp = g.producer(v);
    if (pp < 0 || g.nodes[static_cast<size_t>(pp)].op != "MatMul" || g.consumers(v).size() != 1) return "";
    for (const auto& [w, l] : lin)
      if (l.node == pp && l.transposed && g.isInitializer(w) && g.initializers.at(w).size(0) == in_dim && g.consumers(w).size() == 1) return w;
    return "";
  };
  if (n.op == "Mul") {
    for (int k = 0; k < 2; ++k)
      if (ownVector(g, n.inputs[static_cast<size_t>(k)], in_dim)) return {ScaleFold::VectorMul, n.inputs[static_cast<size_t>(k)], "", ""};
    // x = a * (X W_prevᵀ): scale the rows of W_prev (SwiGLU's up projection feeding the down projection).
    for (int k = 0; k < 2; ++k)
      if (auto w = prevLinear(n.inputs[static_cast<size_t>(k)]); !w.empty()) return {ScaleFold::PrevRows, w, "", ""};
  }
  if (n.op == "Add") {  // x = X W_prevᵀ + b (through a ReLU above): the previous linear's rows and bias
    for (int k = 0; k < 2; ++k)
      if (ownVector(g, n.inputs[static_cast<size_t>(k)], in_dim))
        if (auto w = prevLinear(n.inputs[static_cast<size_t>(1 - k)]); !w.empty()) return {ScaleFold::PrevRows, w, n.inputs[static_cast<size_t>(k)], ""};
  }
  if (auto w = prevLinear(out); n.op == "MatMul" && !w.empty()) return {ScaleFold::PrevRows, w, "", ""};
  return noFold("the input comes from " + n.op + " node '" + n.name + "', which cannot take a per-channel scale exactly");
}

void applyScale(Graph& g, const ScaleFold& fold, const std::vector<std::string>& weights, const at::Tensor& s) {
  at::NoGradGuard ng;
  switch (fold.kind) {
    case ScaleFold::VectorMul:
    case ScaleFold::Affine: {
      at::Tensor& t = g.initializers.at(fold.tensor);
      t.div_(s.to(t.scalar_type()));
      break;
    }
    case ScaleFold::PrevRows: {
      at::Tensor rows = weightMatrix(g.initializers.at(fold.tensor));  // a view: [out, fan_in]
      rows.div_(s.unsqueeze(1).to(rows.scalar_type()));
      break;
    }
    case ScaleFold::None:
      fail(ErrorCategory::Internal, "applyScale without a fold target");
  }
  if (!fold.bias.empty()) g.initializers.at(fold.bias).div_(s);
  for (const auto& w : weights) {
    at::Tensor m = weightMatrix(g.initializers.at(w));  // [out, in·k]: channel c owns columns c·k .. c·k + k - 1
    m.mul_(s.repeat_interleave(m.size(1) / s.size(0)).unsqueeze(0).to(m.scalar_type()));
  }
}

nlohmann::json awqQuantizeModel(Graph& g, const at::Tensor& calibration, const AwqOptions& o, at::Device device,
                                bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  auto selected = selectPassTargets(g, "awq", o.targets, o.ignore);
  std::vector<std::string> todo = floatTargets(g, "awq", selected);
  // Weights, norms and previous rows are updated in place below; own every float tensor first.
  for (auto& [name, t] : g.initializers)
    if (t.is_floating_point()) t = t.clone();
  // Grouped and depthwise convs read their input per group: no one scale per input channel fits them.
  // They are quantized at the end like the rest, unscaled.
  std::vector<std::string> scaled = todo;
  nlohmann::json skipped = nlohmann::json::array();
  dropGroupedConvs(g, scaled, &skipped);
  auto blocks = groupIntoBlocks(g, scaled);
  BlockRunner runner(g, calibration, o.chunk, device);
  if (!blocks.empty()) runner.advanceTo(&blocks[0]);
  nlohmann::json groups = nlohmann::json::array();
  Progress prog("awq", static_cast<int64_t>(blocks.size()), "blocks", progress);
  for (size_t bi = 0; bi < blocks.size(); ++bi) {
    auto grps = sharedInputGroups(g, blocks[bi]);
    for (size_t gi = 0; gi < grps.size(); ++gi) {
      const auto& grp = grps[gi];
      // Each layer's input as its matrix multiplies it: [tokens, in] for linears (one capture serves all),
      // im2col columns [positions, in·k] for convs (kernels may differ within a group).
      const bool linear_only = std::all_of(grp.begin(), grp.end(), [&](const std::string& w) { return g.initializers.at(w).dim() == 2; });
      std::map<std::string, std::vector<at::Tensor>> parts;
      runner.capture(linear_only ? std::vector<std::string>{grp[0]} : grp,
                     [&](const std::string& w, const at::Tensor& x) { parts[w].push_back(x); });
      std::map<std::string, at::Tensor> xin;
      for (const auto& w : grp) xin[w] = at::cat(parts.at(linear_only ? grp[0] : w));
      const int64_t channels = g.initializers.at(grp[0]).size(1);
      auto columns = [&](const std::string& w, const at::Tensor& per_channel) {  // a channel's scale on each of its k columns
        return per_channel.repeat_interleave(xin.at(w).size(1) / channels).unsqueeze(0);
      };
      ScaleFold fold = findScaleFold(g, grp);
      nlohmann::json info = {{"weights", grp}, {"fold", fold.kind == ScaleFold::None ? "none" : fold.tensor}};
      if (fold.kind == ScaleFold::None) info["why"] = fold.why;
      at::Tensor s = at::ones({channels});
      if (fold.kind != ScaleFold::None) {
        // The loss is measured where the reference measures it: at the output of the module these layers
        // feed — q/k/v at the attention output (the next single-layer group, o), w1/w3 at the MLP output
        // (w2) — or at the layers' own outputs when nothing single follows (and for convs).
        std::string inspect =
            linear_only && grp.size() > 1 && gi + 1 < grps.size() && grps[gi + 1].size() == 1 ? grps[gi + 1][0] : "";
        auto moduleOut = [&]() {
          std::vector<at::Tensor> outs;
          if (inspect.empty()) {
            for (const auto& w : grp) outs.push_back(xin.at(w).matmul(weightMatrix(g.initializers.at(w)).to(at::kFloat).t()).reshape({-1}));
            return at::cat(outs);
          }
          runner.capture({inspect}, [&](const std::string&, const at::Tensor& y) { outs.push_back(y); }, true);
          return at::cat(outs);
        };
        at::Tensor ref = moduleOut();
        const at::Tensor& x0 = xin.at(grp[0]);
        at::Tensor x_mean = x0.abs().reshape({x0.size(0), channels, -1}).mean(at::IntArrayRef{0, 2});  // mean |x_c| per input channel
        std::vector<at::Tensor> w0;
        for (const auto& w : grp) w0.push_back(g.initializers.at(w).clone());
        double best = INFINITY, best_alpha = 0, loss0 = 0;
        for (int64_t k = 0; k < o.grid; ++k) {
          double alpha = static_cast<double>(k) / static_cast<double>(o.grid);
          at::Tensor sc = x_mean.pow(alpha).clamp_min(1e-4);
          sc = sc / (sc.max() * sc.min()).sqrt();
          for (size_t j = 0; j < grp.size(); ++j) {  // fake-quantized scaled weights, in place (the executor sees them)
            const at::Tensor cs = columns(grp[j], sc);
            weightMatrix(g.initializers.at(grp[j])).copy_(fakeQuant(weightMatrix(w0[j]).to(at::kFloat) * cs, o.format) / cs);
          }
          double loss = (moduleOut() - ref).pow(2).mean().item<double>();
          if (k == 0) loss0 = loss;
          if (loss < best) best = loss, best_alpha = alpha, s = sc;
        }
        for (size_t j = 0; j < grp.size(); ++j) g.initializers.at(grp[j]).copy_(w0[j]);
        applyScale(g, fold, grp, s);
        info["alpha"] = best_alpha;
        info["loss"] = best;
        info["loss_rtn"] = loss0;
        info["loss_at"] = inspect.empty() ? "own outputs" : inspect;
      }
      if (o.clip) {
        for (const auto& w : grp) {
          if (matchesAny(o.no_clip, namesOf(g, w))) continue;
          // In place now: a later group may fold its scale into this weight's rows (w2 into w3).
          at::Tensor m = weightMatrix(g.initializers.at(w));
          m.copy_(clipWeight(m.to(at::kFloat), xin.at(w) / columns(w, s), o).to(m.scalar_type()));
        }
      }
      groups.push_back(info);
    }
    if (bi + 1 < blocks.size()) runner.advanceTo(&blocks[bi + 1]);  // nothing after the last block is needed
    prog.advance(1);
  }
  prog.finish();
  int64_t quantized = 0;
  if (o.quantize)
    for (const auto& w : todo) {
      installQuantized(g, w, quantizeRtn(weightMatrix(g.initializers.at(w)), o.format), "awq");
      ++quantized;
    }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {{"format", o.format.name()}, {"grid", o.grid}, {"clip", o.clip}, {"quantized", o.quantize},
          {"layers_quantized", quantized}, {"layer_count", todo.size()}, {"groups", groups}, {"layers_skipped", skipped},
          {"calibration_samples", calibration.size(0)}, {"forward_nodes", runner.forwardNodes()}, {"seconds", secs}};
}

int foldedGroups(const nlohmann::json& groups) {
  int folded = 0;
  for (const auto& gr : groups) folded += gr["fold"] != "none";
  return folded;
}

namespace {

class AwqPass : public Pass {
 public:
  const char* name() const override { return "awq"; }
  const char* description() const override {
    return "AWQ: activation-aware per-channel scaling and clipping, then round-to-nearest (or a following gptq).";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    opts_.format = readFormatOptions(r, QuantFormat{4, 128, false});
    opts_.grid = r.integer("grid", 20, 1, 1000, "scale exponents searched: alpha = k / grid");
    opts_.clip = r.boolean("clip", true, "search per-group clipping ranges after scaling");
    opts_.clip_grid = r.integer("clip_grid", 20, 1, 1000, "clip ratios 1 - k / clip_grid");
    opts_.max_shrink = r.number("max_shrink", 0.5, 0.0, 1.0, "largest clip shrink");
    opts_.clip_tokens = r.integer("clip_tokens", 512, 1, 1 << 20, "tokens sampled for the clip search");
    opts_.quantize = r.boolean("quantize", true, "round-to-nearest at the end (false: leave float for gptq)");
    opts_.targets = r.strings("targets", kLayerTargets, std::string("weights to quantize: ") + kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave alone");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = awqQuantizeModel(g, ctx.calibration, opts_, ctx.device, ctx.show_progress);
    const int folded = foldedGroups(s["groups"]);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s: scales folded for %d of %d input groups%s, %d layers %s",
                  opts_.format.name().c_str(), folded, static_cast<int>(s["groups"].size()), opts_.clip ? ", clipped" : "",
                  static_cast<int>(s["layer_count"].get<size_t>()), opts_.quantize ? "quantized (RTN)" : "left in float");
    return {buf, s};
  }

 private:
  AwqOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeAwqPass() { return std::make_unique<AwqPass>(); }

}  // namespace compress
