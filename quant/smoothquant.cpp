// smoothquant.cpp — SmoothQuant W8A8 (Xiao et al. 2023, arXiv:2211.10438). Activation outliers sit in a few
// input channels and make per-tensor (or per-token) int8 activations lossy; SmoothQuant divides each input
// channel by s_c = max|x_c|^alpha / max|W_:,c|^(1-alpha) and multiplies the weights' column c by s_c, which moves
// part of the range into the weights (quantized per output channel, where it costs little). The division is
// folded exactly into the op that produces the input (RMSNorm/LayerNorm weight or the previous linear's rows;
// awq.h's findScaleFold), so the float model is unchanged. Then the weights are RTN-quantized and each group's
// input is quantized to int8 with QuantizeLinear -> DequantizeLinear in front of its MatMuls (smoothquant.h).
// Changes: norm weights / previous linear rows (exactly compensated), selected Linear weights -> int8 (format),
// their inputs -> int8 QDQ. Keeps: topology otherwise.
#include "quant/smoothquant.h"

#include <chrono>
#include <cmath>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/executor.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "compress/progress.h"
#include "quant/awq.h"

namespace compress {
namespace {

/// One group's input as it will be quantized: the value, the MatMuls that read it (by node name), the row
/// length, and for static quantization the per-tensor range after smoothing.
struct InputQuant {
  std::string x;
  std::vector<std::string> matmuls;
  int64_t k = 0;
  double amax = 0;
};

Node makeNode(const Graph& g, const std::string& op, const std::string& base, std::vector<std::string> inputs,
              const std::string& output) {
  Node n;
  n.op = op;
  n.name = g.freshName(base);
  n.inputs = std::move(inputs);
  n.outputs = {output};
  return n;
}

/// The nodes that quantize `iq.x` to int8 and back (smoothquant.h's ActQuant), inserted in front of the first of its
/// MatMuls, which then read the dequantized value.
void insertInputQuant(Graph& g, const InputQuant& iq, ActQuant mode) {
  const std::string base = iq.matmuls[0] + ".input";
  const std::string q = g.freshName(base + ".q"), dq = g.freshName(base + ".dq");
  std::vector<Node> nodes;
  std::map<std::string, Attribute> qattrs;
  std::vector<std::string> params;
  if (mode == ActQuant::Static) {
    const std::string scale = g.freshName(base + ".scale"), zp = g.freshName(base + ".zero_point");
    g.initializers[scale] = at::scalar_tensor(iq.amax > 0 && std::isfinite(iq.amax) ? iq.amax / 127.0 : 1.0, at::kFloat);
    g.initializers[zp] = at::scalar_tensor(128, at::kByte);  // uint8 - 128: int8's integers (smoothquant.h)
    params = {scale, zp};
  } else {
    // scale = max(max|x_row| / 127, FLT_MIN): a row of zeros quantizes to zeros instead of 0 / 0.
    const std::string c127 = "smoothquant.int8_max", cmin = "smoothquant.min_scale";
    if (!g.isInitializer(c127)) g.initializers[c127] = at::scalar_tensor(127.0, at::kFloat);
    if (!g.isInitializer(cmin)) g.initializers[cmin] = at::scalar_tensor(std::numeric_limits<float>::min(), at::kFloat);
    const std::string a = g.freshName(base + ".abs"), m = g.freshName(base + ".absmax"), s0 = g.freshName(base + ".scale0"),
                      s = g.freshName(base + ".scale");
    nodes.push_back(makeNode(g, "Abs", a, {iq.x}, a));
    nodes.push_back(makeNode(g, "ReduceMax", m, {a}, m));
    nodes.back().attrs = {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{1}}};
    nodes.push_back(makeNode(g, "Div", s0, {m, c127}, s0));
    nodes.push_back(makeNode(g, "Max", s, {s0, cmin}, s));
    qattrs = {{"axis", int64_t{-1}}, {"block_size", iq.k}};
    params = {s};
  }
  nodes.push_back(makeNode(g, "QuantizeLinear", q, {iq.x}, q));
  for (const auto& p : params) nodes.back().inputs.push_back(p);
  nodes.back().attrs = qattrs;
  if (mode == ActQuant::Dynamic) nodes.back().attrs["output_dtype"] = int64_t{3};  // onnx.TensorProto INT8
  nodes.push_back(makeNode(g, "DequantizeLinear", dq, {q}, dq));
  for (const auto& p : params) nodes.back().inputs.push_back(p);
  nodes.back().attrs = qattrs;
  size_t first = g.nodes.size();
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (std::find(iq.matmuls.begin(), iq.matmuls.end(), g.nodes[i].name) != iq.matmuls.end()) {
      first = std::min(first, i);
      g.nodes[i].inputs[0] = dq;
    }
  if (first == g.nodes.size()) fail(ErrorCategory::Internal, "smoothquant: the MatMuls of '" + iq.x + "' are gone");
  g.nodes.insert(g.nodes.begin() + static_cast<std::ptrdiff_t>(first), nodes.begin(), nodes.end());
}

/// max_c s / min_c s over channels that carry signal: how uneven a range is (SmoothQuant's outlier ratio).
double spread(const at::Tensor& v) {
  const at::Tensor live = v.masked_select(v > 0);
  return live.numel() == 0 ? 1.0 : (live.max() / live.min()).item<double>();
}

}  // namespace

at::Tensor smoothingScales(const at::Tensor& act_max, const at::Tensor& weight_max, double alpha) {
  return (act_max.clamp_min(1e-5).pow(alpha) / weight_max.clamp_min(1e-5).pow(1.0 - alpha)).clamp_min(1e-5);
}

nlohmann::json smoothQuantModel(Graph& g, const at::Tensor& calibration, const SmoothQuantOptions& o, at::Device device,
                                bool progress) {
  const auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  const auto selected = selectPassTargets(g, "smoothquant", o.targets, o.ignore);
  std::map<std::string, LinearRef> lin;
  for (const auto& l : findLinears(g)) lin.emplace(l.weight, l);
  std::vector<std::string> todo;
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& w : floatTargets(g, "smoothquant", selected)) {
    auto it = lin.find(w);
    if (it == lin.end() || !it->second.transposed || g.initializers.at(w).dim() != 2) skipped.push_back({{"weight", w}, {"why", "not a linear layer"}});
    else todo.push_back(w);
  }
  for (auto& [name, t] : g.initializers)  // norms and weights are scaled in place below
    if (t.is_floating_point()) t = t.clone();
  const auto blocks = groupIntoBlocks(g, todo);
  BlockRunner runner(g, calibration, o.chunk, device);
  if (!blocks.empty()) runner.advanceTo(&blocks[0]);
  std::vector<InputQuant> inputs;
  nlohmann::json groups = nlohmann::json::array();
  Progress prog("smoothquant", static_cast<int64_t>(blocks.size()), "blocks", progress);
  for (size_t bi = 0; bi < blocks.size(); ++bi) {
    for (const auto& grp : sharedInputGroups(g, blocks[bi])) {
      at::Tensor act_max;
      runner.capture({grp[0]}, [&](const std::string&, const at::Tensor& x) {
        const at::Tensor m = x.abs().amax(0);
        act_max = act_max.defined() ? at::maximum(act_max, m) : m;
      });
      InputQuant iq;
      iq.x = g.nodes[static_cast<size_t>(lin.at(grp[0]).node)].inputs[0];
      iq.k = act_max.size(0);
      for (const auto& w : grp) iq.matmuls.push_back(g.nodes[static_cast<size_t>(lin.at(w).node)].name);
      const ScaleFold fold = o.smooth ? findScaleFold(g, grp) : ScaleFold{};
      at::Tensor s = at::ones_like(act_max);
      nlohmann::json info = {{"weights", grp}, {"input", iq.x}, {"act_spread_before", spread(act_max)}};
      if (fold.kind != ScaleFold::None) {
        at::Tensor weight_max = at::zeros_like(act_max);
        for (const auto& w : grp) weight_max = at::maximum(weight_max, g.initializers.at(w).abs().amax(0).to(at::kFloat));
        s = smoothingScales(act_max, weight_max, o.alpha);
        applyScale(g, fold, grp, s);
        info["fold"] = fold.tensor;
      } else {
        info["fold"] = "none";
        if (o.smooth) info["why"] = fold.why;
      }
      const at::Tensor smoothed = act_max / s;
      iq.amax = smoothed.max().item<double>();
      info["act_spread_after"] = spread(smoothed);
      info["act_max"] = iq.amax;
      if (!std::isfinite(iq.amax))
        fail(ErrorCategory::Data, "smoothquant: the calibration input of '" + grp[0] + "' holds NaN or infinity");
      inputs.push_back(iq);
      groups.push_back(info);
    }
    if (bi + 1 < blocks.size()) runner.advanceTo(&blocks[bi + 1]);
    prog.advance(1);
  }
  prog.finish();
  if (o.quantize) {
    for (const auto& w : todo) installQuantized(g, w, quantizeRtn(weightMatrix(g.initializers.at(w)), o.format), "smoothquant");
    for (const auto& iq : inputs) insertInputQuant(g, iq, o.activations);
    reinferShapes(g);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json out = {{"format", o.format.name()}, {"alpha", o.alpha}, {"smooth", o.smooth},
          {"activations", o.activations == ActQuant::Dynamic ? "int8 per token (dynamic)" : "int8 per tensor (static)"},
          {"quantized", o.quantize}, {"layers_quantized", o.quantize ? todo.size() : 0},
          {"inputs_quantized", o.quantize ? inputs.size() : 0}, {"groups", groups},
          {"layers_skipped", skipped}, {"calibration_samples", calibration.size(0)}, {"forward_nodes", runner.forwardNodes()},
          {"seconds", secs}};
  if (o.quantize && o.activations == ActQuant::Static && o.format.bits == 8 && o.format.symmetric)
    out["portability"] = kStaticInt8WeightsNote;
  return out;
}

namespace {

class SmoothQuantPass : public Pass {
 public:
  const char* name() const override { return "smoothquant"; }
  const char* description() const override {
    return "SmoothQuant W8A8: migrate activation outliers into the weights (strength alpha), int8 weights per channel, "
           "int8 activations per token (dynamic) or per tensor (static), as standard QDQ.";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    opts_.alpha = r.number("alpha", 0.5, 0.0, 1.0, "migration strength: s = max|x|^alpha / max|W|^(1-alpha)");
    opts_.smooth = r.boolean("smooth", true, "migrate outliers (false: plain W8A8, for comparison)");
    opts_.activations = r.choice("activations", "dynamic", {"dynamic", "static"},
                                 "int8 activations per token computed at run time (dynamic: the most accurate; crun runs it as integer "
                                 "MatMuls, ONNX Runtime op by op, slowly) or one calibrated scale per tensor (static: ONNX Runtime's "
                                 "fused int8 form)") == "static"
                            ? ActQuant::Static
                            : ActQuant::Dynamic;
    opts_.quantize = r.boolean("quantize", true, "quantize weights and activations (false: smoothing only, for a following gptq)");
    opts_.format = readFormatOptions(r, QuantFormat{8, -1, true});
    opts_.targets = r.strings("targets", {"Linear"}, "weights to quantize (linear layers)");
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave in float");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = smoothQuantModel(g, ctx.calibration, opts_, ctx.device, ctx.show_progress);
    const int folded = foldedGroups(s["groups"]);
    char buf[220];
    if (!opts_.quantize)
      std::snprintf(buf, sizeof buf, "smoothing only: scales folded for %d of %d inputs (alpha %.2f), weights left in float",
                    folded, static_cast<int>(s["groups"].size()), opts_.alpha);
    else
      std::snprintf(buf, sizeof buf, "W8A8 (%s weights, %s): %d layers, scales folded for %d of %d inputs (alpha %.2f)",
                    opts_.format.name().c_str(), s["activations"].get<std::string>().c_str(),
                    static_cast<int>(s["layers_quantized"].get<size_t>()), folded, static_cast<int>(s["groups"].size()), opts_.alpha);
    std::string summary = buf;
    if (s.contains("portability")) summary += "; " + s["portability"].get<std::string>();
    return {summary, s};
  }

 private:
  SmoothQuantOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeSmoothQuantPass() { return std::make_unique<SmoothQuantPass>(); }

}  // namespace compress
