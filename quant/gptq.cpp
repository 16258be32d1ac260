// gptq.cpp — GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantizes weight columns one at a time and
// compensates each column's error on the columns still to come, using the inverse Hessian of the layer's
// calibration inputs. Changes: selected Linear weights -> quantized weights (DequantizeLinear form).
// Keeps: topology, pruning masks. Runs block by block (compress/calibration.h) so each block sees the
// inputs produced by the already-quantized blocks before it.
#include "quant/gptq.h"

#include <chrono>
#include <cmath>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "compress/progress.h"

namespace compress {

QuantizedTensor gptqQuantize(const at::Tensor& w0, const at::Tensor& h0, const QuantFormat& f, double damp,
                             int64_t block_size, bool act_order, const at::Tensor& mask0) {
  at::NoGradGuard ng;
  at::Tensor W = w0.detach().to(at::kFloat).clone();
  at::Tensor H = h0.detach().to(at::kFloat).clone();
  const int64_t rows = W.size(0), cols = W.size(1);
  if (H.size(0) != cols || H.size(1) != cols)
    fail(ErrorCategory::Internal, "GPTQ: Hessian " + c10::str(H.sizes()) + " does not fit weight " + c10::str(W.sizes()));
  at::Tensor mask = mask0.defined() ? mask0.to(at::kBool) : at::Tensor();
  // Dead inputs (never active in calibration): their column cannot matter; quantize it as zero.
  at::Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);
  const int64_t g = f.group_size > 0 ? f.group_size : cols;
  const int64_t groups = (cols + g - 1) / g;
  // Scales: per channel from the whole weight; per group when the sweep reaches the group (from the
  // updated weight), or all up front from the original weight with act_order (static groups).
  QuantFormat per_row = f;  // (scale_dtype too)
  per_row.group_size = -1;
  at::Tensor scales = at::zeros({rows, groups}), zeros = at::zeros({rows, groups});
  auto setGroup = [&](int64_t gi, const at::Tensor& cols_w) {
    at::Tensor s, z;
    computeScales(cols_w, per_row, s, z);
    scales.select(1, gi).copy_(s);
    if (z.defined()) zeros.select(1, gi).copy_(z.to(at::kFloat));
  };
  // Per channel: one set of scales from the whole weight up front. Groups: each group's scales are taken
  // when the sweep first reaches one of its columns, from the group's columns as updated so far. With
  // act_order those columns are spread over the permuted order, but the groups stay the contiguous groups
  // of the original layout, so the result needs no permutation index (g_idx) at inference.
  bool static_groups = f.group_size <= 0;
  if (static_groups) setGroup(0, W);
  std::vector<bool> group_set(static_cast<size_t>(groups), static_groups);
  at::Tensor perm, invperm;
  if (act_order) {
    perm = std::get<1>(at::sort(H.diagonal(), /*stable=*/true, 0, /*descending=*/true));
    invperm = at::argsort(perm);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    if (mask.defined()) mask = mask.index_select(1, perm);
  }
  H.diagonal().add_(damp * H.diagonal().mean().item<double>());
  // Hinv = upper Cholesky factor of H⁻¹.
  at::Tensor L = at::linalg_cholesky(H.to(at::kDouble));
  at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true).to(at::kFloat);
  const double qmin = f.symmetric ? -(1 << (f.bits - 1)) : 0, qmax = f.symmetric ? (1 << (f.bits - 1)) - 1 : (1 << f.bits) - 1;
  at::Tensor Q = at::zeros({rows, cols}, at::kInt);
  at::Tensor group_of = at::arange(cols, at::kLong).div(g, "floor");
  if (act_order) group_of = group_of.index_select(0, perm);
  auto group_acc = group_of.accessor<int64_t, 1>();
  for (int64_t i1 = 0; i1 < cols; i1 += block_size) {
    int64_t i2 = std::min(i1 + block_size, cols), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();
    at::Tensor Err1 = at::zeros({rows, count});
    at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    for (int64_t i = 0; i < count; ++i) {
      int64_t col = i1 + i, gi = group_acc[col];
      if (!group_set[static_cast<size_t>(gi)]) {
        // The group's columns as they stand now: in this lazy batch (W1) or beyond it (W).
        std::vector<at::Tensor> parts;
        for (int64_t oc = gi * g; oc < std::min(cols, (gi + 1) * g); ++oc) {
          int64_t pc = act_order ? invperm[oc].item<int64_t>() : oc;
          parts.push_back(pc >= i1 && pc < i2 ? W1.select(1, pc - i1) : W.select(1, pc));
        }
        setGroup(gi, at::stack(parts, 1));
        group_set[static_cast<size_t>(gi)] = true;
      }
      at::Tensor w = W1.select(1, i);
      at::Tensor s = scales.select(1, gi), z = zeros.select(1, gi);
      at::Tensor q = at::clamp(at::round(w / s) + z, qmin, qmax);
      at::Tensor deq = (q - z) * s;
      if (mask.defined()) {
        at::Tensor keep = mask.select(1, col);
        q = at::where(keep, q, z);
        deq = at::where(keep, deq, at::zeros_like(deq));
      }
      Q.select(1, col).copy_(q);
      double d = Hinv1[i][i].item<double>();
      at::Tensor err = (w - deq) / d;
      if (i + 1 < count) W1.narrow(1, i + 1, count - i - 1).sub_(err.unsqueeze(1) * Hinv1[i].narrow(0, i + 1, count - i - 1).unsqueeze(0));
      Err1.select(1, i).copy_(err);
    }
    if (i2 < cols) W.narrow(1, i2, cols - i2).sub_(Err1.matmul(Hinv.narrow(0, i1, count).narrow(1, i2, cols - i2)));
  }
  if (act_order) Q = Q.index_select(1, invperm);
  QuantizedTensor out;
  out.format = f;
  out.qdata = f.symmetric ? Q.to(at::kChar) : Q.to(at::kByte);
  out.scales = f.group_size > 0 ? scales.contiguous() : scales.select(1, 0).contiguous();
  if (!f.symmetric) out.zero_points = (f.group_size > 0 ? zeros : zeros.select(1, 0)).to(at::kByte).contiguous();
  return out;
}

nlohmann::json gptqQuantizeModel(Graph& g, const at::Tensor& calibration, const GptqOptions& opts, at::Device device,
                                 bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  auto weights = selectPassTargets(g, "gptq", opts.targets, opts.ignore);
  std::vector<std::string> todo = floatTargets(g, "gptq", weights);
  nlohmann::json skipped = nlohmann::json::array();
  dropGroupedConvs(g, todo, &skipped);
  // The weights are updated in place below; own them first so no other graph copy sees the changes.
  for (const auto& w : todo) g.initializers.at(w) = g.initializers.at(w).clone();
  auto blocks = groupIntoBlocks(g, todo);
  BlockRunner runner(g, calibration, opts.chunk, device);
  if (!blocks.empty()) runner.advanceTo(&blocks[0]);
  std::map<std::string, QuantizedTensor> results;
  nlohmann::json layers = nlohmann::json::array();
  Progress prog("gptq", static_cast<int64_t>(blocks.size()), "blocks", progress);
  for (size_t bi = 0; bi < blocks.size(); ++bi) {
    const Block& b = blocks[bi];
    auto steps = opts.true_sequential ? sharedInputGroups(g, b) : std::vector<std::vector<std::string>>{b.weights};
    for (const auto& step : steps) {
      std::map<std::string, HessianAccumulator> acc;
      runner.capture(step, [&](const std::string& w, const at::Tensor& x) { acc[w].add(x); });
      for (const auto& w : step) {
        at::Tensor W = weightMatrix(g.initializers.at(w));  // a conv's [out, in·k]: a view, updated in place
        at::Tensor H = acc.at(w).hessian();
        at::Tensor mask = g.sparsity.count(w) ? weightMatrix(g.sparsity.at(w).mask) : at::Tensor();
        QuantizedTensor q = gptqQuantize(W, H, opts.format, opts.damp, opts.block_size, opts.act_order, mask);
        at::Tensor deq = dequantize(q);
        // Output error on the calibration inputs, against round-to-nearest: tr(ΔW H ΔWᵀ) / 2.
        auto err = [&](const at::Tensor& d) { return (d.matmul(H) * d).sum().item<double>() / 2.0; };
        double e_gptq = err(deq - W.to(at::kFloat));
        double e_rtn = err(dequantize(quantizeRtn(W, opts.format)) - W.to(at::kFloat));
        layers.push_back({{"weight", w}, {"shape", W.sizes().vec()}, {"format", opts.format.name()},
                          {"output_error", e_gptq}, {"output_error_rtn", e_rtn}});
        W.copy_(deq.to(W.scalar_type()));  // in place: later blocks see the quantized layer
        results.emplace(w, q);
      }
    }
    if (bi + 1 < blocks.size()) runner.advanceTo(&blocks[bi + 1]);  // nothing after the last block is needed
    prog.advance(1);
  }
  prog.finish();
  int64_t before = 0, after = 0;
  for (auto& [w, q] : results) {
    before += g.initializers.at(w).numel() * 4;
    after += (q.qdata.numel() * q.format.bits + 7) / 8 + q.scales.numel() * 4 +
             (q.zero_points.defined() ? (q.zero_points.numel() * q.format.bits + 7) / 8 : 0);
    installQuantized(g, w, q, "gptq");
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {{"format", opts.format.name()}, {"bits", opts.format.bits}, {"group_size", opts.format.group_size},
          {"symmetric", opts.format.symmetric}, {"damp", opts.damp}, {"block_size", opts.block_size},
          {"act_order", opts.act_order}, {"true_sequential", opts.true_sequential},
          {"calibration_samples", calibration.size(0)}, {"blocks", blocks.size()},
          {"layers_quantized", results.size()}, {"layers_skipped", skipped}, {"bytes_before", before}, {"bytes_after", after},
          {"forward_nodes", runner.forwardNodes()}, {"seconds", secs}, {"layers", layers}};
}

namespace {

class GptqPass : public Pass {
 public:
  const char* name() const override { return "gptq"; }
  const char* description() const override {
    return "GPTQ: quantize weights column by column, compensating errors with the calibration Hessian.";
  }
  bool needsCalibration() const override { return true; }
  void configure(OptionReader& r) override {
    opts_.format = readFormatOptions(r, QuantFormat{4, 128, false});
    opts_.damp = r.number("damp", 0.01, 0.0, 10.0, "dampening, as a fraction of mean(diag H)");
    opts_.block_size = r.integer("block_size", 128, 1, 1 << 20, "columns per lazy batch update");
    opts_.act_order = r.boolean("act_order", false, "quantize columns by decreasing diag(H); groups stay contiguous (no g_idx)");
    opts_.true_sequential = r.boolean("true_sequential", true, "q/k/v, then o, then w1/w3, then w2 inside a block");
    opts_.targets = r.strings("targets", kLayerTargets, kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs to leave in float");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration sequences per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = gptqQuantizeModel(g, ctx.calibration, opts_, ctx.device, ctx.show_progress);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s on %d layers (%s%d calibration sequences): %.1f KiB -> %.1f KiB",
                  opts_.format.name().c_str(), static_cast<int>(s["layers_quantized"].get<size_t>()),
                  opts_.act_order ? "act-order, " : "", static_cast<int>(ctx.calibration.size(0)),
                  s["bytes_before"].get<int64_t>() / 1024.0, s["bytes_after"].get<int64_t>() / 1024.0);
    return {buf, s};
  }

 private:
  GptqOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeGptqPass() { return std::make_unique<GptqPass>(); }

}  // namespace compress
