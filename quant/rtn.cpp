// rtn.cpp — round-to-nearest (RTN) weight-only quantization, 2-8 bits, per channel or per group,
// symmetric or asymmetric. Changes: selected Linear/MatMul and Conv weights -> DequantizeLinear(qdata, scale[, zp])
// (a conv's as its [out, in·k] matrix, then Reshape).
// Keeps: topology, pruning masks (zeros quantize to exactly zero).
#include "quant/rtn.h"

#include <cmath>

#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {

nlohmann::json rtnQuantize(Graph& g, const RtnOptions& opts) {
  const auto targets = selectPassTargets(g, "rtn", opts.targets, opts.ignore);
  const auto weights = floatTargets(g, "rtn", targets);  // the others were quantized by an earlier pass
  nlohmann::json layers = nlohmann::json::array();
  int64_t before = 0, after = 0;
  const int64_t skipped = static_cast<int64_t>(targets.size() - weights.size());
  for (const auto& w : weights) {
    at::Tensor t = g.initializers.at(w);
    QuantizedTensor q = quantizeRtn(weightMatrix(t), opts.format);
    at::Tensor deq = dequantize(q);
    double rmse = std::sqrt((deq - weightMatrix(t).to(at::kFloat)).pow(2).mean().item<double>());
    int64_t b0 = t.numel() * static_cast<int64_t>(t.element_size());
    int64_t b1 = (q.qdata.numel() * opts.format.bits + 7) / 8 + q.scales.numel() * 4 +
                 (q.zero_points.defined() ? (q.zero_points.numel() * opts.format.bits + 7) / 8 : 0);
    installQuantized(g, w, q, "rtn");
    before += b0;
    after += b1;
    layers.push_back({{"weight", w}, {"shape", t.sizes().vec()}, {"format", opts.format.name()},
                      {"bytes_before", b0}, {"bytes_after", b1}, {"rmse", rmse}});
  }
  return {{"format", opts.format.name()}, {"bits", opts.format.bits}, {"group_size", opts.format.group_size},
          {"symmetric", opts.format.symmetric}, {"layers_quantized", layers.size()}, {"layers_skipped", skipped},
          {"bytes_before", before}, {"bytes_after", after}, {"layers", layers}};
}

namespace {

class RtnPass : public Pass {
 public:
  const char* name() const override { return "rtn"; }
  const char* description() const override {
    return "Round-to-nearest weight quantization (2-8 bits, per channel or per group, symmetric or asymmetric).";
  }
  void configure(OptionReader& r) override {
    opts_.format = readFormatOptions(r, QuantFormat{8, -1, true});
    opts_.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave in float");
  }
  PassResult run(Graph& g, PassContext&) override {
    nlohmann::json s = rtnQuantize(g, opts_);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s on %d layers: %.1f KiB -> %.1f KiB of weights", opts_.format.name().c_str(),
                  static_cast<int>(s["layers_quantized"].get<int64_t>()), s["bytes_before"].get<int64_t>() / 1024.0,
                  s["bytes_after"].get<int64_t>() / 1024.0);
    return {buf, s};
  }

 private:
  RtnOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeRtnPass() { return std::make_unique<RtnPass>(); }

}  // namespace compress
