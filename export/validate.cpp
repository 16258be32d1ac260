#include "export/validate.h"

#include <cmath>
#include <cstdio>

#include "compress/error.h"
#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/npy.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "quant/smoothquant.h"

namespace compress {

using json = nlohmann::json;

/// Validation compares numbers: an output with NaN/Inf would compare as "no difference" (NaN > tol is
/// false), so it is an error of its own.
static void requireFinite(const at::Tensor& t, const std::string& output, const char* engine) {
  if (!t.is_floating_point()) return;
  const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
  if (bad > 0)
    fail(ErrorCategory::Numeric, "export validation: output '" + output + "' holds " + std::to_string(bad) + " NaN/Inf values of " +
                                     std::to_string(t.numel()) + " in " + engine +
                                     "; the compressed model is broken (check the passes' settings, e.g. fp16 overflow)");
}

static bool hasHalf(const Graph& g) {
  for (const auto& [n, t] : g.initializers)
    if (t.scalar_type() == at::kHalf) return true;
  return false;
}

/// Activations quantized in the graph itself (QuantizeLinear, SmoothQuant's W8A8): rounding is discontinuous, so
/// the last-bit differences of two correct implementations can move an activation by one step.
static bool hasQuantizedActivations(const Graph& g) {
  for (const auto& n : g.nodes)
    if (n.op == "QuantizeLinear") return true;
  return false;
}

bool x86WithoutVnni() {
#if defined(__x86_64__)
  return !__builtin_cpu_supports("avx512vnni") && !__builtin_cpu_supports("avxvnni");
#else
  return false;
#endif
}

/// Static int8 activations (a QuantizeLinear with one calibrated scale, no block_size) feeding full-range signed
/// 8-bit weights: the pairing ONNX Runtime fuses into its U8S8 integer MatMul.
static bool staticActsOnInt8Weights(const Graph& g) {
  bool static_acts = false, int8_weights = false;
  for (const auto& n : g.nodes)
    if (n.op == "QuantizeLinear" && !n.hasAttr("block_size") && g.isInitializer(n.inputs.at(1))) static_acts = true;
  for (const auto& [w, q] : g.quant)
    if (q.bits == 8 && q.symmetric) int8_weights = true;
  return static_acts && int8_weights;
}

static std::string num(const char* format, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

/// What a user should know when ONNX Runtime at its default level (its fused kernels) strays from the exact run
/// that matches: empty when it does not.
static std::string ortDefaultWarning(const Graph& g, const json& ort, double tol, bool relative) {
  const double d = ort["opt_all"][relative ? "max_rel_diff" : "max_abs_diff"].get<double>();
  std::string w;
  if (d > tol)
    w = "ONNX Runtime at its default optimization level differs from the executor by " + num("%.2e", d) +
        (relative ? " (relative)" : "") + ", more than the allowed " + num("%.0e", tol) +
        ", though it matches with optimizations off: its fused kernels compute differently on this CPU";
  if (ort.contains("perplexity")) {
    const json& p = ort["perplexity"];
    const double gap = p["ort_opt_all"].get<double>() / p["ort_opt_disabled"].get<double>() - 1;
    if (std::abs(gap) > 1e-3)
      w += std::string(w.empty() ? "ONNX Runtime at its default optimization level" : "; it") + " changes perplexity by " +
           num("%+.2f", 100 * gap) + "%";
  }
  if (!w.empty() && staticActsOnInt8Weights(g) && x86WithoutVnni())
    w += std::string(". Cause and fix: ") + kStaticInt8WeightsNote + " (a smoothquant pass option)";
  return w;
}

std::map<std::string, at::Tensor> validationInputs(const Graph& g, const std::string& tokens_npy, int64_t batch,
                                                   int64_t seq, int64_t past_len) {
  std::map<std::string, at::Tensor> in;
  for (const auto& name : g.inputs) {
    const ValueInfo& vi = g.values.at(name);
    const bool mask = name != g.inputs[0] && name.find("mask") != std::string::npos;
    if ((vi.dtype == DType::Int64 || vi.dtype == DType::Int32 || vi.dtype == DType::Bool) && mask) {
      // an attention mask: every position attends ([batch, past+seq] for a cached decoder)
      int64_t len = seq;
      if (vi.shape && vi.shape->size() == 2 && (*vi.shape)[1].symbol == "past+seq") len = past_len + seq;
      else if (vi.shape && vi.shape->size() == 2 && (*vi.shape)[1].isFixed()) len = (*vi.shape)[1].value;
      in[name] = at::ones({batch, len}, at::TensorOptions().dtype(toScalarType(vi.dtype)));
    } else if (vi.dtype == DType::Int64 || vi.dtype == DType::Int32) {
      at::Tensor ids;
      if (!tokens_npy.empty()) {
        auto stream = readTokenStream(tokens_npy);
        if (static_cast<int64_t>(stream.size()) < batch * seq)
          fail(ErrorCategory::Data, "'" + tokens_npy + "' is too short for validation inputs");
        ids = at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + batch * seq), at::kLong).reshape({batch, seq});
      } else {
        int64_t vocab = 2;
        const auto& out = g.values.at(g.outputs[0]);
        if (out.shape && !out.shape->empty() && out.shape->back().isFixed()) vocab = out.shape->back().value;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
        ids = at::randint(0, vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
      }
      in[name] = ids.to(toScalarType(vi.dtype));
    } else {
      Shape shape = vi.shape.value_or(Shape{});
      for (Dim& d : shape)
        if (d.symbol == "past") d = Dim::fixed(past_len);
      in[name] = probeTensor(vi.dtype, shape, batch, seq);
    }
  }
  return in;
}

json validateExport(const Graph& g, const std::string& onnx_path, const std::map<std::string, at::Tensor>& inputs,
                    const ValidationOptions& opts) {
  json r;
  r["checker"] = checkOnnxFile(onnx_path) ? "passed" : "skipped (ONNX 1.12's checker knows opsets up to 17)";
  std::string why;
  if (!opts.ort || !ortAvailable(&why)) {
    r["onnxruntime"] = opts.ort ? "skipped: " + why : "skipped on request";
    return r;
  }
  at::NoGradGuard ng;
  Executor ex(g);
  std::vector<at::Tensor> ours = ex.run(inputs);
  for (size_t k = 0; k < g.outputs.size(); ++k) requireFinite(ours[k], g.outputs[k], "the executor");
  // fp32 and dequantized weights: absolute; fp16 weights or int8 activations: relative to the output's max |value|.
  const bool int8 = opts.int8_activations || hasQuantizedActivations(g);
  const bool half = hasHalf(g), relative = half || int8;
  const double tol = int8 ? kInt8ActOutputTolerance : half ? 1e-2 : 1e-4;
  json ort = json::object();
  for (const char* level : {"disabled", "all"}) {
    auto theirs = ortRun(onnx_path, inputs, level);
    double worst_abs = 0, worst_rel = 0;
    for (size_t k = 0; k < g.outputs.size(); ++k) {
      auto it = theirs.find(g.outputs[k]);
      if (it == theirs.end()) fail(ErrorCategory::Model, "ONNX Runtime did not return output '" + g.outputs[k] + "'");
      requireFinite(it->second, g.outputs[k], "ONNX Runtime");
      at::Tensor a = ours[k].to(at::kCPU).to(at::kDouble), b = it->second.to(at::kDouble);
      if (a.sizes() != b.sizes())
        fail(ErrorCategory::Model, "output '" + g.outputs[k] + "' is " + c10::str(b.sizes()) + " in ONNX Runtime but " +
                                       c10::str(a.sizes()) + " in the executor");
      double d = (a - b).abs().max().item<double>();
      worst_abs = std::max(worst_abs, d);
      worst_rel = std::max(worst_rel, d / std::max(a.abs().max().item<double>(), 1e-30));
    }
    std::string key = std::string("opt_") + level;
    ort[key] = {{"max_abs_diff", worst_abs}, {"max_rel_diff", worst_rel}};
    if (std::string(level) == "disabled" && (relative ? worst_rel : worst_abs) > tol)
      fail(ErrorCategory::Model, "ONNX Runtime's outputs differ from the executor's by " +
                                     std::to_string(relative ? worst_rel : worst_abs) + (relative ? " (relative)" : "") +
                                     ", more than the allowed " + std::to_string(tol) +
                                     (int8 ? " for int8 activations" : "") +
                                     " for '" + onnx_path + "'");
  }
  ort["tolerance"] = tol;
  ort["tolerance_kind"] = relative ? "relative" : "absolute";
  ort["int8_activations"] = int8;
  if (int8) ort["int8_activations_from"] = opts.int8_activations ? "matmulnbits_accuracy_level" : "quantize_linear";
  if (!opts.ppl_tokens.empty()) {
    double ours_ppl = opts.executor_ppl;
    if (ours_ppl <= 0) {
      LmWindows w = makeWindows(readTokenStream(opts.ppl_tokens), opts.seq_len, opts.max_tokens);
      ours_ppl = perplexity(ex, w, 1, false).value;
    }
    OrtPerplexity p0 = ortPerplexity(onnx_path, opts.ppl_tokens, opts.seq_len, opts.max_tokens, "disabled");
    OrtPerplexity p1 = ortPerplexity(onnx_path, opts.ppl_tokens, opts.seq_len, opts.max_tokens, "all");
    double rel = std::abs(p0.perplexity / ours_ppl - 1.0);
    ort["perplexity"] = {{"executor", ours_ppl}, {"ort_opt_disabled", p0.perplexity}, {"ort_opt_all", p1.perplexity},
                         {"relative_diff", rel}, {"tokens", p0.count}};
    const double ppl_tol = int8 ? kInt8ActPerplexityTolerance : 1e-3;
    if (rel > ppl_tol)
      fail(ErrorCategory::Model, "perplexity through ONNX Runtime (" + std::to_string(p0.perplexity) +
                                     ") differs from the executor's (" + std::to_string(ours_ppl) + ") by more than " +
                                     std::to_string(ppl_tol * 100) + "%" +
                                     (int8 ? " with int8 activations" : ""));
  }
  const std::string warning = ortDefaultWarning(g, ort, tol, relative);
  if (!warning.empty()) ort["warning"] = warning;
  r["onnxruntime"] = ort;
  return r;
}

}  // namespace compress
