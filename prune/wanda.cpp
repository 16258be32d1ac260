// wanda.cpp — Wanda (Sun et al. 2023, arXiv:2306.11695): prune by |W_ij| · ‖X_j‖₂ compared within each
// output row, no weight update. Calibration runs block by block (compress/calibration.h) as in the
// paper's code: all linear layers of a block are scored on the block's input with the block dense, then
// pruned, then the pruned block produces the next block's input.
// Changes: selected Linear weights get zeros and masks. Keeps: shapes and topology.
#include "prune/wanda.h"

#include <chrono>
#include <cmath>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {

at::Tensor wandaMask(const at::Tensor& w, const at::Tensor& act_norm, double sparsity, const std::string& scope,
                     const PatternSpec& pattern) {
  if (act_norm.dim() != 1 || act_norm.size(0) != w.size(1))
    fail(ErrorCategory::Internal, "wanda: activation norms " + c10::str(act_norm.sizes()) + " do not fit weight " + c10::str(w.sizes()));
  at::Tensor score = w.abs().to(at::kFloat) * act_norm.to(at::kFloat).unsqueeze(0);
  if (pattern.nm()) return keepNofM(score, pattern.n, pattern.m);
  if (scope == "matrix") return keepLowestPruned(score, std::llround(sparsity * static_cast<double>(score.numel())));
  return keepPerRow(score, sparsity);
}

nlohmann::json wandaPrune(Graph& g, const at::Tensor& calibration, const WandaOptions& opts, at::Device device, bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  auto weights = selectPassTargets(g, "wanda", opts.targets, opts.ignore);
  requireFloatTargets(g, "wanda", weights);
  nlohmann::json skipped = nlohmann::json::array();
  dropGroupedConvs(g, weights, &skipped);
  for (const auto& w : weights) g.initializers.at(w) = g.initializers.at(w).clone();  // pruned in place below
  nlohmann::json layers = nlohmann::json::array();
  int64_t forward = forEachBlock(g, calibration, weights, opts.chunk, device, "wanda", progress, [&](const Block& b, BlockRunner& runner) {
    ChannelNormAccumulator acc;
    runner.capture(b.weights, [&](const std::string& w, const at::Tensor& x) { acc.add(w, x); });
    for (const auto& w : b.weights)
      layers.push_back(installMask(g, w, wandaMask(weightMatrix(g.initializers.at(w)), acc.norms(w), opts.sparsity, opts.scope, opts.pattern), opts.pattern));
  });
  nlohmann::json s = sparsityTotals(layers);
  s["target_sparsity"] = opts.pattern.nm() ? opts.pattern.sparsity() : opts.sparsity;
  s["scope"] = opts.pattern.nm() ? "row" : opts.scope;
  s["pattern"] = opts.pattern.str();
  s["layers_skipped"] = skipped;
  s["calibration_samples"] = calibration.size(0);
  s["forward_nodes"] = forward;
  s["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

namespace {

class WandaPass : public Pass {
 public:
  const char* name() const override { return "wanda"; }
  const char* description() const override {
    return "Wanda: prune the lowest |w| x input-activation norm per output row (or N of every M), no retraining.";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    opts_.sparsity = r.number("sparsity", 0.5, 0.0, 1.0, "fraction of targeted weights to zero; ignored with N:M");
    opts_.scope = r.choice("scope", "row", {"row", "matrix"}, "compare scores within each output row (the paper's) or each matrix");
    opts_.pattern = readPattern(r);
    opts_.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave dense (e.g. output)");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = wandaPrune(g, ctx.calibration, opts_, ctx.device, ctx.show_progress);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%.1f%% of %lld targeted weights zeroed in %d layers (%s, %d calibration sequences)",
                  100.0 * s["sparsity"].get<double>(), static_cast<long long>(s["numel"].get<int64_t>()),
                  static_cast<int>(s["layers"].size()), opts_.pattern.str().c_str(), static_cast<int>(ctx.calibration.size(0)));
    return {buf, s};
  }

 private:
  WandaOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeWandaPass() { return std::make_unique<WandaPass>(); }

}  // namespace compress
