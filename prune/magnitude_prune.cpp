// magnitude_prune.cpp — magnitude pruning (Han et al. 2015, arXiv:1506.02626): remove the weights of
// smallest absolute value. Changes: selected Linear weights get zeros and a mask (graph.sparsity).
// Keeps: shapes and topology (unstructured sparsity exports as dense weights with zeros).
#include "prune/magnitude_prune.h"

#include <cmath>

#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {
namespace {

// Mask keeping all but the k smallest scores of a flat tensor; stable order makes ties deterministic.
at::Tensor keepMask(const at::Tensor& scores, int64_t k) {
  at::Tensor mask = at::ones({scores.numel()}, at::kBool);
  if (k <= 0) return mask;
  at::Tensor order = std::get<1>(at::sort(scores.reshape({-1}), /*stable=*/true, 0, false));
  mask.index_fill_(0, order.narrow(0, 0, std::min<int64_t>(k, scores.numel())), false);
  return mask;
}

}  // namespace

nlohmann::json magnitudePrune(Graph& g, const MagnitudePruneOptions& opts) {
  auto weights = selectPassTargets(g, "magnitude-prune", opts.targets, opts.ignore);
  for (const auto& w : weights)
    if (!g.isInitializer(w))
      fail(ErrorCategory::Config, "magnitude-prune: '" + w + "' is already quantized; put pruning before quantization in the recipe");
  std::map<std::string, at::Tensor> masks;
  if (opts.scope == "global") {
    std::vector<at::Tensor> flat;
    for (const auto& w : weights) flat.push_back(g.initializers.at(w).abs().reshape({-1}).to(at::kFloat));
    at::Tensor all = flat.empty() ? at::empty({0}) : at::cat(flat);
    at::Tensor m = keepMask(all, std::llround(opts.sparsity * static_cast<double>(all.numel())));
    int64_t off = 0;
    for (const auto& w : weights) {
      const at::Tensor& t = g.initializers.at(w);
      masks[w] = m.narrow(0, off, t.numel()).reshape(t.sizes());
      off += t.numel();
    }
  } else {
    for (const auto& w : weights) {
      at::Tensor a = g.initializers.at(w).abs().to(at::kFloat);
      if (opts.scope == "row") {
        int64_t k = std::llround(opts.sparsity * static_cast<double>(a.size(1)));
        std::vector<at::Tensor> rows;
        for (int64_t r = 0; r < a.size(0); ++r) rows.push_back(keepMask(a[r], k));
        masks[w] = at::stack(rows);
      } else {
        masks[w] = keepMask(a, std::llround(opts.sparsity * static_cast<double>(a.numel()))).reshape(a.sizes());
      }
    }
  }
  nlohmann::json layers = nlohmann::json::array();
  int64_t zeros = 0, total = 0;
  for (const auto& w : weights) {
    at::Tensor& t = g.initializers.at(w);
    at::Tensor m = masks.at(w);
    auto prev = g.sparsity.find(w);
    if (prev != g.sparsity.end()) m = m & prev->second.mask;  // never revive pruned weights
    t = t * m.to(t.scalar_type());
    g.sparsity[w] = SparsityInfo{m, SparsityPattern::Unstructured, 0, 0};
    int64_t z = m.numel() - m.sum().item<int64_t>();
    zeros += z;
    total += m.numel();
    layers.push_back({{"weight", w}, {"shape", t.sizes().vec()}, {"zeros", z}, {"numel", m.numel()},
                      {"sparsity", static_cast<double>(z) / static_cast<double>(m.numel())}});
  }
  return {{"target_sparsity", opts.sparsity}, {"scope", opts.scope}, {"pattern", "unstructured"},
          {"zeros", zeros}, {"numel", total},
          {"sparsity", total ? static_cast<double>(zeros) / static_cast<double>(total) : 0.0}, {"layers", layers}};
}

namespace {

class MagnitudePrunePass : public Pass {
 public:
  const char* name() const override { return "magnitude-prune"; }
  const char* description() const override {
    return "Unstructured magnitude pruning: zero the smallest |w| per layer, per row or globally.";
  }
  void configure(OptionReader& r) override {
    opts_.sparsity = r.number("sparsity", 0.5, 0.0, 1.0, "fraction of targeted weights to zero (0.5 or 50%)");
    opts_.scope = r.choice("scope", "layer", {"layer", "row", "global"}, "where the fraction applies");
    opts_.targets = r.strings("targets", {"Linear"}, "weights to prune: Linear, or parameter-name globs");
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave dense (e.g. output)");
  }
  PassResult run(Graph& g, PassContext&) override {
    nlohmann::json s = magnitudePrune(g, opts_);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%.1f%% of %lld targeted weights zeroed in %d layers (%s)",
                  100.0 * s["sparsity"].get<double>(), static_cast<long long>(s["numel"].get<int64_t>()),
                  static_cast<int>(s["layers"].size()), opts_.scope.c_str());
    return {buf, s};
  }

 private:
  MagnitudePruneOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeMagnitudePrunePass() { return std::make_unique<MagnitudePrunePass>(); }

}  // namespace compress
