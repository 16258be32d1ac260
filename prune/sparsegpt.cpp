// sparsegpt.cpp — SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774): one-shot pruning that solves
// the layer-wise reconstruction approximately with the OBS update — the GPTQ sweep with pruning in it —
// and, when asked, quantizes the kept weights in the same sweep (the paper's joint 50% + 4-bit mode).
// Calibration runs block by block as in the paper's code: every linear layer of a block gets its Hessian
// from the block's input, then the pruned block produces the next block's input.
// Changes: selected Linear weights get zeros and masks (and, with bits, the quantized form).
// Keeps: shapes and topology.
#include "prune/sparsegpt.h"

#include <chrono>
#include <cmath>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {

SparseGptResult sparseGpt(const at::Tensor& w0, const at::Tensor& h0, const SparseGptOptions& o, const at::Tensor& mask0) {
  at::NoGradGuard ng;
  at::Tensor W = w0.detach().to(at::kFloat).clone();
  at::Tensor H = h0.detach().to(at::kFloat).clone();
  const int64_t rows = W.size(0), cols = W.size(1);
  if (H.dim() != 2 || H.size(0) != cols || H.size(1) != cols)
    fail(ErrorCategory::Internal, "SparseGPT: Hessian " + c10::str(H.sizes()) + " does not fit weight " + c10::str(W.sizes()));
  const PatternSpec& p = o.pattern;
  // Blocks hold whole N:M groups.
  int64_t bs = std::max<int64_t>(1, o.block_size);
  if (p.nm()) bs = std::max<int64_t>(p.m, bs / p.m * p.m);
  // Dead inputs (never active in calibration) cannot matter: their weights are zeroed and H made regular.
  at::Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);
  H.diagonal().add_(o.damp * H.diagonal().mean().item<double>());
  at::Tensor L = at::linalg_cholesky(H.to(at::kDouble));
  at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true).to(at::kFloat);

  const bool quant = o.quant.has_value();
  QuantFormat f = quant ? *o.quant : QuantFormat{};
  const int64_t g = quant && f.group_size > 0 ? f.group_size : cols, groups = (cols + g - 1) / g;
  const double qmin = f.symmetric ? -(1 << (f.bits - 1)) : 0, qmax = f.symmetric ? (1 << (f.bits - 1)) - 1 : (1 << f.bits) - 1;
  at::Tensor scales = at::ones({rows, groups}), zeros = at::zeros({rows, groups});
  at::Tensor Q = at::zeros({rows, cols}, at::kInt);
  // A group's scales are taken when the sweep reaches its first column, from its columns as updated so far.
  auto setGroup = [&](int64_t gi, const at::Tensor& cols_w) {
    at::Tensor s, z;
    QuantFormat per_row = f;  // (scale_dtype too)
    per_row.group_size = -1;
    computeScales(cols_w, per_row, s, z);
    scales.select(1, gi).copy_(s);
    if (z.defined()) zeros.select(1, gi).copy_(z.to(at::kFloat));
  };
  if (quant) setGroup(0, W);  // per channel; grouped formats overwrite group 0 at column 0

  at::Tensor keep = at::ones({rows, cols}, at::kBool);
  at::Tensor prior = mask0.defined() ? mask0.to(at::kBool) : at::Tensor();
  double loss = 0;
  for (int64_t i1 = 0; i1 < cols; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, cols), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();
    at::Tensor Err1 = at::zeros({rows, count});
    at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    at::Tensor dinv2 = Hinv1.diagonal().pow(2).unsqueeze(0);
    at::Tensor keep1 = at::ones({rows, count}, at::kBool);
    // Saliency w² / [H⁻¹]_jj²; weights pruned earlier score -1 so they are chosen (and counted) first.
    auto saliency = [&](int64_t c0, int64_t n) {
      at::Tensor s = W1.narrow(1, c0, n).pow(2) / dinv2.narrow(1, c0, n);
      if (prior.defined()) s.masked_fill_(prior.narrow(1, i1 + c0, n).logical_not(), -1.0);
      return s;
    };
    if (!p.nm() && o.sparsity > 0)
      keep1 = keepLowestPruned(saliency(0, count), std::llround(o.sparsity * static_cast<double>(rows * count)));
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      if (p.nm() && i % p.m == 0) {
        int64_t n = std::min<int64_t>(p.m, count - i);
        keep1.narrow(1, i, n).copy_(keepNofM(saliency(i, n), p.n, p.m));
      }
      at::Tensor w = W1.select(1, i);
      at::Tensor k = keep1.select(1, i);
      at::Tensor q = w * k.to(at::kFloat);
      if (quant) {
        int64_t gi = col / g;
        if (f.group_size > 0 && col % g == 0) {
          int64_t n = std::min(g, cols - col), in_block = std::min(n, count - i);
          at::Tensor part = W1.narrow(1, i, in_block);
          setGroup(gi, in_block < n ? at::cat({part, W.narrow(1, i2, n - in_block)}, 1) : part);
        }
        at::Tensor s = scales.select(1, gi), z = zeros.select(1, gi);
        at::Tensor qi = at::clamp(at::round(w / s) + z, qmin, qmax);
        qi = at::where(k, qi, z);
        q = (qi - z) * s;
        Q.select(1, col).copy_(qi);
      }
      double d = Hinv1[i][i].item<double>();
      at::Tensor diff = w - q;
      loss += diff.pow(2).sum().item<double>() / (d * d);
      at::Tensor err = diff / d;
      W1.narrow(1, i, count - i).sub_(err.unsqueeze(1) * Hinv1[i].narrow(0, i, count - i).unsqueeze(0));
      W1.select(1, i).copy_(q);
      Err1.select(1, i).copy_(err);
    }
    W.narrow(1, i1, count).copy_(W1);
    keep.narrow(1, i1, count).copy_(keep1);
    if (i2 < cols) W.narrow(1, i2, cols - i2).sub_(Err1.matmul(Hinv.narrow(0, i1, count).narrow(1, i2, cols - i2)));
  }
  SparseGptResult r;
  r.weight = W * keep.to(at::kFloat);
  r.mask = keep;
  r.error = loss;
  if (quant) {
    QuantizedTensor qt;
    qt.format = f;
    qt.qdata = f.symmetric ? Q.to(at::kChar) : Q.to(at::kByte);
    qt.scales = f.group_size > 0 ? scales.contiguous() : scales.select(1, 0).contiguous();
    if (!f.symmetric) qt.zero_points = (f.group_size > 0 ? zeros : zeros.select(1, 0)).to(at::kByte).contiguous();
    r.quantized = qt;
  }
  return r;
}

nlohmann::json sparseGptPrune(Graph& g, const at::Tensor& calibration, const SparseGptOptions& opts, at::Device device,
                              bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  auto weights = selectPassTargets(g, "sparsegpt", opts.targets, opts.ignore);
  requireFloatTargets(g, "sparsegpt", weights);
  nlohmann::json skipped = nlohmann::json::array();
  dropGroupedConvs(g, weights, &skipped);
  for (const auto& w : weights) g.initializers.at(w) = g.initializers.at(w).clone();  // updated in place below
  nlohmann::json layers = nlohmann::json::array();
  std::map<std::string, QuantizedTensor> quantized;
  int64_t forward = forEachBlock(g, calibration, weights, opts.chunk, device, "sparsegpt", progress, [&](const Block& b, BlockRunner& runner) {
    std::map<std::string, HessianAccumulator> acc;
    runner.capture(b.weights, [&](const std::string& w, const at::Tensor& x) { acc[w].add(x); });
    for (const auto& w : b.weights) {
      at::Tensor W = weightMatrix(g.initializers.at(w));  // a conv's [out, in·k]: a view, updated in place
      at::Tensor H = acc.at(w).hessian();
      at::Tensor prior = g.sparsity.count(w) ? weightMatrix(g.sparsity.at(w).mask) : at::Tensor();
      SparseGptResult r = sparseGpt(W, H, opts, prior);
      // Output error on the calibration inputs, tr(ΔW H ΔWᵀ) / 2, and magnitude pruning's at the same mask size.
      auto outErr = [&](const at::Tensor& d) { return (d.matmul(H) * d).sum().item<double>() / 2.0; };
      at::Tensor w32 = W.to(at::kFloat);
      double e = outErr(r.weight - w32);
      int64_t pruned = r.mask.numel() - r.mask.sum().item<int64_t>();
      at::Tensor mag = opts.pattern.nm() ? keepNofM(w32.abs(), opts.pattern.n, opts.pattern.m) : keepLowestPruned(w32.abs(), pruned);
      double e_mag = outErr(w32 * mag.to(at::kFloat) - w32);
      W.copy_(r.weight.to(W.scalar_type()));  // in place: the next block's inputs see the pruned layer
      nlohmann::json row = installMask(g, w, r.mask, opts.pattern);
      row["output_error"] = e;
      row["output_error_magnitude"] = e_mag;
      layers.push_back(row);
      if (r.quantized) quantized.emplace(w, *r.quantized);
    }
  });
  for (const auto& [w, q] : quantized) installQuantized(g, w, q, "sparsegpt");
  nlohmann::json s = sparsityTotals(layers);
  s["target_sparsity"] = opts.pattern.nm() ? opts.pattern.sparsity() : opts.sparsity;
  s["pattern"] = opts.pattern.str();
  s["block_size"] = opts.block_size;
  s["damp"] = opts.damp;
  s["format"] = opts.quant ? opts.quant->name() : "float";
  s["layers_skipped"] = skipped;
  s["calibration_samples"] = calibration.size(0);
  s["forward_nodes"] = forward;
  s["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

namespace {

class SparseGptPass : public Pass {
 public:
  const char* name() const override { return "sparsegpt"; }
  const char* description() const override {
    return "SparseGPT: prune with OBS weight updates from the calibration Hessian (unstructured or N:M), optionally quantizing jointly.";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    opts_.sparsity = r.number("sparsity", 0.5, 0.0, 1.0, "fraction of targeted weights to zero; ignored with N:M");
    opts_.pattern = readPattern(r);
    opts_.block_size = r.integer("blocksize", 128, 1, 1 << 20, "columns per adaptive-mask block and lazy update");
    opts_.damp = r.number("damp", 0.01, 0.0, 10.0, "dampening, as a fraction of mean(diag H)");
    int64_t bits = r.integer("bits", 0, 0, 8, "0 = prune only; 2-8 = quantize the kept weights in the same sweep");
    int64_t group = r.integer("group_size", -1, -1, 1 << 20, "with bits: input channels per scale; -1 = per output channel");
    bool sym = r.boolean("symmetric", false, "with bits: symmetric (no zero point) or asymmetric");
    if (bits == 1) r.error("bits", "must be 0 (no quantization) or 2-8");
    if (group == 0 || group == 1) r.error("group_size", "must be -1 (per channel) or at least 2");
    opts_.quant.reset();
    if (bits >= 2) opts_.quant = QuantFormat{static_cast<int32_t>(bits), static_cast<int32_t>(group), sym};
    opts_.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave dense (e.g. output)");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = sparseGptPrune(g, ctx.calibration, opts_, ctx.device, ctx.show_progress);
    char buf[240];
    std::snprintf(buf, sizeof buf, "%.1f%% of %lld targeted weights zeroed in %d layers (%s%s%s, %d calibration sequences)",
                  100.0 * s["sparsity"].get<double>(), static_cast<long long>(s["numel"].get<int64_t>()),
                  static_cast<int>(s["layers"].size()), opts_.pattern.str().c_str(), opts_.quant ? ", jointly " : "",
                  opts_.quant ? opts_.quant->name().c_str() : "", static_cast<int>(ctx.calibration.size(0)));
    return {buf, s};
  }

 private:
  SparseGptOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeSparseGptPass() { return std::make_unique<SparseGptPass>(); }

}  // namespace compress
