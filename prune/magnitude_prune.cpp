// magnitude_prune.cpp — magnitude pruning (Han et al. 2015, arXiv:1506.02626): remove the weights of
// smallest absolute value. Changes: selected Linear weights get zeros and a mask (graph.sparsity).
// Keeps: shapes and topology (unstructured and N:M sparsity export as dense weights with zeros).
#include "prune/magnitude_prune.h"

#include <cmath>

#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {

nlohmann::json magnitudePrune(Graph& g, const MagnitudePruneOptions& opts) {
  auto weights = selectPassTargets(g, "magnitude-prune", opts.targets, opts.ignore);
  requireFloatTargets(g, "magnitude-prune", weights);
  std::map<std::string, at::Tensor> masks;
  if (opts.pattern.nm()) {
    for (const auto& w : weights) masks[w] = keepNofM(weightMatrix(g.initializers.at(w)).abs(), opts.pattern.n, opts.pattern.m);
  } else if (opts.scope == "global") {
    std::vector<at::Tensor> flat;
    for (const auto& w : weights) flat.push_back(g.initializers.at(w).abs().reshape({-1}).to(at::kFloat));
    at::Tensor all = flat.empty() ? at::empty({0}) : at::cat(flat);
    at::Tensor m = keepLowestPruned(all, std::llround(opts.sparsity * static_cast<double>(all.numel())));
    int64_t off = 0;
    for (const auto& w : weights) {
      const at::Tensor& t = g.initializers.at(w);
      masks[w] = m.narrow(0, off, t.numel()).reshape(t.sizes());
      off += t.numel();
    }
  } else {
    for (const auto& w : weights) {
      at::Tensor a = weightMatrix(g.initializers.at(w)).abs();  // rows = output channels (a conv's [out, in·k])
      masks[w] = opts.scope == "row" ? keepPerRow(a, opts.sparsity)
                                     : keepLowestPruned(a, std::llround(opts.sparsity * static_cast<double>(a.numel())));
    }
  }
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& w : weights) {
    g.initializers.at(w) = g.initializers.at(w).clone();  // never write through storage another graph shares
    layers.push_back(installMask(g, w, masks.at(w), opts.pattern));
  }
  nlohmann::json s = sparsityTotals(layers);
  s["target_sparsity"] = opts.pattern.nm() ? opts.pattern.sparsity() : opts.sparsity;
  s["scope"] = opts.pattern.nm() ? "row" : opts.scope;
  s["pattern"] = opts.pattern.str();
  return s;
}

namespace {

class MagnitudePrunePass : public Pass {
 public:
  const char* name() const override { return "magnitude-prune"; }
  const char* description() const override {
    return "Magnitude pruning: zero the smallest |w| per matrix, per row or globally, or N of every M (2:4).";
  }
  void configure(OptionReader& r) override {
    opts_.sparsity = r.number("sparsity", 0.5, 0.0, 1.0, "fraction of targeted weights to zero (0.5 or 50%); ignored with N:M");
    opts_.scope = r.choice("scope", "matrix", {"matrix", "layer", "row", "global"},
                           "where the fraction applies: each matrix (layer is a synonym), each output row, all targets together");
    if (opts_.scope == "layer") opts_.scope = "matrix";
    opts_.pattern = readPattern(r);
    opts_.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave dense (e.g. output)");
  }
  PassResult run(Graph& g, PassContext&) override {
    nlohmann::json s = magnitudePrune(g, opts_);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%.1f%% of %lld targeted weights zeroed in %d layers (%s, %s)",
                  100.0 * s["sparsity"].get<double>(), static_cast<long long>(s["numel"].get<int64_t>()),
                  static_cast<int>(s["layers"].size()), opts_.pattern.str().c_str(), s["scope"].get<std::string>().c_str());
    return {buf, s};
  }

 private:
  MagnitudePruneOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeMagnitudePrunePass() { return std::make_unique<MagnitudePrunePass>(); }

}  // namespace compress
