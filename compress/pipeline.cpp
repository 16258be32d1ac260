// pipeline.cpp — the end-to-end run behind `compress --config`.
#include "compress/pipeline.h"
#include "prune/sparsity.h"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdio>

#include <sys/resource.h>

#include "compress/atomic_dir.h"
#include "compress/data.h"
#include "compress/dims.h"
#include "compress/error.h"
#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/npy.h"
#include "compress/pass_context.h"
#include "compress/report.h"
#include "compress/serialize.h"
#include "compress/kv_cache.h"
#include "compress/onnx_import.h"
#include "compress/task.h"
#include "compress/host_setup.h"
#include "export/crun_latency.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "export/validate.h"

namespace compress {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool endsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// What the evaluation needs, loaded once.
struct EvalData {
  LmWindows windows;
  at::Tensor inputs, labels;
  int64_t batch = 8;
};

EvalData loadEval(const Recipe& r) {
  EvalData d;
  d.batch = r.eval.batch;
  if (taskFor(r.task).token_stream) d.windows = makeWindows(loadTokenStream(r.eval), r.eval.seq_len, r.eval.max_tokens);
  else {
    d.inputs = tensorFromNpy(readNpy(r.eval.inputs), r.eval.inputs);
    if (!r.eval.labels.empty()) d.labels = tensorFromNpy(readNpy(r.eval.labels), r.eval.labels);
  }
  return d;
}

/// The one place a metric's name picks its implementation (compress/eval.h).
MetricResult evaluate(const Recipe& r, const Graph& g, const Graph& original, const EvalData& d, at::Device dev, bool progress) {
  Executor ex(g, ExecOptions{dev});
  if (r.metric == "perplexity") return perplexity(ex, d.windows, d.batch, progress);
  if (r.metric == "top1") return top1(ex, d.inputs, d.labels, d.batch, progress);
  Executor ref(original, ExecOptions{dev});
  if (r.metric == "agreement") return agreement(ex, ref, d.inputs, d.batch, progress);
  if (r.metric == "pooled_cosine") return pooledCosine(ex, ref, d.inputs, d.batch, progress);
  at::Tensor in = taskFor(r.task).token_stream ? d.windows.inputs : d.inputs;
  return cosine(ex, ref, in, d.batch, progress);
}

double medianLatencyMs(const Graph& g, const at::Tensor& input, int runs, at::Device dev) {
  if (runs <= 0) return std::nan("");
  at::NoGradGuard ng;
  Executor ex(g, ExecOptions{dev});
  ex.run1(input);  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    ex.run1(input);
    ms.push_back(1000.0 * since(t0));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/// crun's latency (our runtime, 2 threads) of the baseline and of the compressed export at the decode shape [1, 1]
/// (LMs) and at the probe's shape, so the report shows what compression bought where the model ships. Skipped
/// with a line where crun cannot run the probe (extra inputs such as masks or a KV cache's pasts).
void measureCrunLatency(const Graph& original, const std::string& model, const std::string& base_path,
                        const std::string& input, const at::Tensor& probe, bool lm, int runs, json& latency) {
  exportOnnx(original, base_path, ExportOptions{});
  std::vector<at::Tensor> probes;
  if (lm && probe.size(1) > 1) probes.push_back(at::zeros({1, 1}, at::kLong));
  probes.push_back(probe);
  try {
    for (const at::Tensor& t : probes) {
      const std::map<std::string, at::Tensor> in = {{input, t}};
      const std::vector<CrunLatency> bc = crunLatencies({base_path, model}, in, runs, 2);  // (interleaved)
      const CrunLatency &b = bc[0], &c = bc[1];
      latency.push_back({{"engine", "crun (ours, " + c.isa + ")"}, {"device", "cpu"}, {"shape", t.sizes().vec()}, {"threads", 2},
                         {"runs", runs}, {"baseline_median_ms", b.median_ms}, {"compressed_median_ms", c.median_ms},
                         {"baseline_p90_ms", b.p90_ms}, {"compressed_p90_ms", c.p90_ms},
                         {"baseline_weight_bytes", b.weight_bytes}, {"compressed_weight_bytes", c.weight_bytes},
                         {"sparse_matmuls", c.sparse_matmuls}});
      std::string shape;
      for (int64_t d : t.sizes()) shape += (shape.empty() ? "[" : ", ") + std::to_string(d);
      std::printf("      crun %s]: %.3f ms -> %.3f ms (x%.2f; weights read %s -> %s%s)\n", shape.c_str(),
                  b.median_ms, c.median_ms, c.median_ms / b.median_ms, humanBytes(static_cast<double>(b.weight_bytes)).c_str(),
                  humanBytes(static_cast<double>(c.weight_bytes)).c_str(),
                  c.sparse_matmuls > 0 ? (", " + std::to_string(c.sparse_matmuls) + " sparse").c_str() : "");
    }
  } catch (const Error& e) {
    if (e.category() != ErrorCategory::Data) throw;
    std::printf("      crun latency not measured: %s\n", e.what());
  }
  std::filesystem::remove(base_path);
}

at::Device deviceFor(const Recipe& r) {
  if (r.device == "cuda") {
    if (!at::hasCUDA())
      fail(ErrorCategory::Device, "the recipe asks for device: cuda but this LibTorch build or machine has no CUDA GPU; use device: cpu");
    return at::Device(at::kCUDA);
  }
  return at::Device(at::kCPU);
}

}  // namespace

ImportOptions importOptionsFor(const Recipe& r) {
  ImportOptions o;
  for (const auto& in : r.inputs) {
    InputSpec s;
    s.name = in.name;
    s.dtype = dtypeFromName(in.dtype);
    for (const auto& d : in.shape) s.shape.push_back(isInputDimName(d) ? Dim::sym(d) : Dim::fixed(std::stoll(d)));  // recipe.cpp checked the rest are numbers
    o.inputs.push_back(s);
  }
  return o;
}

Graph loadModel(const std::string& path, const ImportOptions& opts) {
  if (endsWith(path, ".cir")) return loadGraph(path);
  if (endsWith(path, ".onnx")) return importOnnx(path, opts);
  return importTorchScript(path, opts);
}

namespace {

/// Calibration and training data for the passes, loaded once.
PassContext passContextFor(const Recipe& r, at::Device dev, bool progress, const Graph& original) {
  PassContext ctx;
  ctx.device = dev;
  ctx.seed = r.seed;
  ctx.show_progress = progress;
  if (r.calibration.present) {
    if (taskFor(r.task).token_stream) {
      auto stream = loadTokenStream(r.calibration);
      ctx.calibration = r.calibration.sampling == "random"
                            ? sampleSequences(stream, r.calibration.samples, r.calibration.seq_len, r.calibration.seed)
                            : consecutiveSequences(stream, r.calibration.samples, r.calibration.seq_len);
    } else {
      at::Tensor all = tensorFromNpy(readNpy(r.calibration.inputs), r.calibration.inputs);
      ctx.calibration = r.calibration.samples > 0 ? all.narrow(0, 0, std::min(all.size(0), r.calibration.samples)) : all;
    }
  }
  if (r.train.present) ctx.train_tokens = at::tensor(loadTokenStream(r.train), at::kLong);
  ctx.original = &original;
  return ctx;
}

/// Runs the recipe's passes in order on g, verifying the graph after each; their report entries.
json runPasses(const Recipe& r, Graph& g, PassContext& ctx, int steps) {
  json passes = json::array();
  for (size_t i = 0; i < r.passes.size(); ++i) {
    Pass& p = *r.passes[i].pass;
    auto tp = Clock::now();
    PassResult res = p.run(g, ctx);
    g.pruneUnused();
    verify(g);
    double s = since(tp);
    std::printf("[3/%d] pass %zu/%zu %s: %s (%.2fs)\n", steps, i + 1, r.passes.size(), p.name(), res.summary.c_str(), s);
    std::fflush(stdout);
    passes.push_back({{"name", p.name()}, {"seconds", s}, {"summary", res.summary}, {"stats", res.stats}, {"recipe_line", r.passes[i].where}});
  }
  return passes;
}

/// The input latency is measured on: a [1, 128] token prompt for LMs, shorter when the recipe's sequences
/// are (a model with a learned position table may take no more); one eval example otherwise.
at::Tensor latencyProbe(const Recipe& r, const EvalData& eval) {
  const int64_t data_seq = r.eval.present ? r.eval.seq_len : r.calibration.present ? r.calibration.seq_len : 0;
  if (taskFor(r.task).token_stream) return at::zeros({1, data_seq > 0 ? std::min<int64_t>(128, data_seq) : 128}, at::kLong);
  if (eval.inputs.defined()) return eval.inputs.narrow(0, 0, 1);
  return at::Tensor();
}

void measureExecutorLatency(const Graph& original, const Graph& g, const at::Tensor& probe, int runs, at::Device dev,
                            json& latency) {
  try {
    latency.push_back({{"engine", "executor (ATen)"}, {"device", dev.str()}, {"shape", probe.sizes().vec()},
                       {"threads", at::get_num_threads()}, {"runs", runs},
                       {"baseline_median_ms", medianLatencyMs(original, probe, runs, dev)},
                       {"compressed_median_ms", medianLatencyMs(g, probe, runs, dev)}});
  } catch (const Error& e) {  // the compressed model is fine; only this probe does not fit it
    if (e.category() != ErrorCategory::Data) throw;
    std::string shape;
    for (int64_t d : probe.sizes()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    std::printf("      latency not measured: the model does not run on a [%s] probe (%s); set data.eval.seq_len to a length it takes\n",
                shape.c_str(), e.what());
  }
}

/// Peak resident memory of this process and of its largest child (ONNX Runtime's checks run in node).
json peakMemory() {
  struct rusage self {}, children {};
  ::getrusage(RUSAGE_SELF, &self);
  ::getrusage(RUSAGE_CHILDREN, &children);
  return {{"peak_rss_bytes", static_cast<int64_t>(self.ru_maxrss) * 1024},
          {"children_peak_rss_bytes", static_cast<int64_t>(children.ru_maxrss) * 1024}};
}

/// What a run found, in the order the report is built from it.
struct RunResults {
  const Graph* original = nullptr;
  const Graph* compressed = nullptr;
  bool has_eval = false;
  MetricResult base, fin;
  json passes, latency;
  double import_seconds = 0;
};

json buildReport(const Recipe& r, at::Device dev, const RunResults& res, bool gate, bool passed, double deg) {
  const Graph& original = *res.original;
  const Graph& g = *res.compressed;
  const bool has_eval = res.has_eval;
  json report;
  report["schema_version"] = kReportSchemaVersion;
  report["tool"] = {{"name", "compress"}, {"version", COMPRESS_VERSION}};
  report["recipe"] = {{"path", r.path}, {"fnv1a64", fnv1a64Hex(r.text)}};
  report["task"] = r.task;
  report["model"] = {{"path", r.model}, {"params", original.parameterCount()}, {"bytes", original.parameterBytes()},
                     {"nodes", original.nodes.size()}, {"inputs", original.inputs}, {"outputs", original.outputs}};
  report["compressed"] = {{"params", g.parameterCount()}, {"bytes", g.parameterBytes()}, {"nodes", g.nodes.size()},
                          {"file", "model.cir"}};
  report["size_ratio"] = original.parameterBytes() > 0
                             ? static_cast<double>(g.parameterBytes()) / static_cast<double>(original.parameterBytes())
                             : 1.0;
  report["passes"] = res.passes;
  report["sparsity"] = sparsitySummary(g);
  report["accuracy"] = {{"metric", r.metric},
                        {"measured", has_eval},
                        {"baseline", has_eval ? res.base.value : 0.0},
                        {"final", has_eval ? res.fin.value : 0.0},
                        {"degradation", deg},
                        {"count", has_eval ? res.base.count : 0},
                        {"max_degradation", r.max_degradation},
                        {"gate", gate ? (passed ? "pass" : "fail") : "none"},
                        {"metric_reason", r.metric_reason}};
  if (has_eval && metricFor(r.metric).likelihood) {
    report["accuracy"]["baseline_mean_nll"] = res.base.mean_nll;
    report["accuracy"]["final_mean_nll"] = res.fin.mean_nll;
  }
  report["latency"] = res.latency;
  json env = hostEnvironment();
  env["libtorch"] = TORCH_VERSION;
  env["threads"] = at::get_num_threads();
  if (blasThreads() > 0) env["blas_threads"] = blasThreads();
  env["device"] = dev.str();
  report["environment"] = env;
  report["timing"] = {{"import_seconds", res.import_seconds},
                      {"baseline_eval_seconds", has_eval ? res.base.seconds : 0.0},
                      {"final_eval_seconds", has_eval ? res.fin.seconds : 0.0},
                      {"total_seconds", 0.0}};
  return report;
}

/// Writes model.onnx (with a KV cache when asked), checks it in ONNX's checker and ONNX Runtime, and times it
/// in ONNX Runtime and crun; the report's export entry. Appends to `latency`.
json exportStep(const Recipe& r, const Graph& original, const Graph& g, bool has_eval, const MetricResult& fin,
                const at::Tensor& probe, const StagingDir& out, int steps, json& latency) {
  auto te = Clock::now();
  ExportOptions eo;
  eo.opset = static_cast<int>(r.export_spec.opset);
  eo.int4 = r.export_spec.int4;
  eo.external_data = r.export_spec.external_data;
  eo.compact_sparse = r.export_spec.compact_sparse;
  eo.accuracy_level = r.export_spec.accuracy_level;
  eo.metadata = {{"recipe", r.path}, {"recipe_fnv1a64", fnv1a64Hex(r.text)}, {"task", r.task}};
  Graph cached;
  const Graph& exported = r.export_spec.kv_cache ? cached : g;
  json kv_json;
  if (r.export_spec.kv_cache) {
    cached = g;
    const KvCacheInfo kv = addKvCache(cached);
    addKvMetadata(kv, eo.metadata);
    kv_json = {{"layers", kv.layers}, {"heads", kv.heads}, {"kv_heads", kv.kv_heads}, {"head_dim", kv.head_dim},
               {"context_length", kv.context}, {"check_rel_diff", kv.check_rel_diff}};
  }
  json ex = exportOnnx(exported, out.path("model.onnx"), eo);
  if (!kv_json.is_null()) ex["kv_cache"] = kv_json;
  onnx::ModelProto unused;
  json base_stats;
  buildOnnx(original, eo, unused, &base_stats);
  ex["fp32_linear_weight_bytes"] = base_stats["linear_weight_bytes"];
  ex["linear_weight_ratio"] = base_stats["linear_weight_bytes"].get<double>() > 0
                                  ? ex["linear_weight_bytes"].get<double>() / base_stats["linear_weight_bytes"].get<double>()
                                  : 1.0;
  ex["file"] = "model.onnx";
  std::printf("[5/%d] exported model.onnx: opset %d, %s; linear weights %.3f of fp32", steps, ex["opset"].get<int>(),
              humanBytes(ex["total_bytes"].get<double>()).c_str(), ex["linear_weight_ratio"].get<double>());
  if (ex["quantized_weight_fp32_bytes"].get<int64_t>() > 0)
    std::printf(" (quantized ones %.3f)", ex["quantized_weight_ratio"].get<double>());
  std::printf("\n");
  std::fflush(stdout);
  const bool timed = probe.defined() && r.latency_runs > 0;
  if (r.export_spec.validate) {
    const bool lm = taskFor(r.task).token_stream;
    std::string tokens = lm && has_eval ? r.eval.tokens : "";
    int64_t seq = lm && has_eval ? std::min<int64_t>(64, r.eval.seq_len) : 64;
    if (!kv_json.is_null() && kv_json["context_length"].get<int64_t>() > 0)
      seq = std::min<int64_t>(seq, kv_json["context_length"].get<int64_t>() - 3);
    auto inputs = validationInputs(exported, tokens, 2, seq, 3);  // a cached export: random pasts of 3 positions
    ValidationOptions vo;
    vo.int8_activations = ex.value("int8_activation_matmuls", int64_t{0}) > 0;
    // (a cached export is scored from an empty cache: scripts/ort/ort_run.js feeds empty pasts)
    if (lm && has_eval && !r.eval.tokens.empty() && r.export_spec.validate_perplexity && metricFor(r.metric).likelihood) {
      vo.ppl_tokens = r.eval.tokens;
      vo.seq_len = r.eval.seq_len;
      vo.max_tokens = r.eval.max_tokens;
      vo.executor_ppl = fin.value;
    }
    ex["validation"] = validateExport(exported, out.path("model.onnx"), inputs, vo);
    const json& v = ex["validation"];
    if (v["onnxruntime"].is_object()) {
      const bool rel = v["onnxruntime"]["tolerance_kind"] == "relative";
      const char* key = rel ? "max_rel_diff" : "max_abs_diff";
      std::printf("      ONNX Runtime matches: max |diff|%s %.2e (optimizations off), %.2e (ORT default)", rel ? " / max |y|" : "",
                  v["onnxruntime"]["opt_disabled"][key].get<double>(), v["onnxruntime"]["opt_all"][key].get<double>());
      if (v["onnxruntime"].contains("perplexity"))
        std::printf("; perplexity %.4f (ORT default: %.4f)", v["onnxruntime"]["perplexity"]["ort_opt_disabled"].get<double>(),
                    v["onnxruntime"]["perplexity"]["ort_opt_all"].get<double>());
      if (vo.int8_activations && v["onnxruntime"].contains("perplexity"))
        std::printf("; int8 activations cost %+.3f%% perplexity against exact compute",
                    100 * (v["onnxruntime"]["perplexity"]["ort_opt_disabled"].get<double>() / fin.value - 1));
      std::printf("\n");
      if (v["onnxruntime"].contains("warning"))
        std::printf("      warning: %s\n", v["onnxruntime"]["warning"].get<std::string>().c_str());
      if (timed) {
        std::string base_onnx = out.path("baseline.onnx.tmp");
        exportOnnx(original, base_onnx, ExportOptions{});
        std::map<std::string, at::Tensor> pin = {{g.inputs[0], probe}};
        latency.push_back({{"engine", "onnxruntime 1.30 (cpu, default optimizations)"}, {"device", "cpu"},
                           {"shape", probe.sizes().vec()}, {"threads", 2}, {"runs", r.latency_runs},
                           {"baseline_median_ms", ortLatencyMs(base_onnx, pin, static_cast<int>(r.latency_runs))},
                           {"compressed_median_ms", ortLatencyMs(out.path("model.onnx"), pin, static_cast<int>(r.latency_runs))}});
        std::filesystem::remove(base_onnx);
      }
    } else {
      std::printf("      %s\n", v["onnxruntime"].get<std::string>().c_str());
    }
  }
  if (timed)
    measureCrunLatency(original, out.path("model.onnx"), out.path("baseline_crun.onnx.tmp"), exported.inputs[0], probe,
                       taskFor(r.task).token_stream, static_cast<int>(r.latency_runs), latency);
  ex["seconds"] = since(te);
  return ex;
}

}  // namespace

RunSummary runRecipe(const Recipe& r, const RunOptions& opts) {
  auto t_start = Clock::now();
  setComputeThreads(static_cast<int>(r.threads));
  at::manual_seed(static_cast<uint64_t>(r.seed));
  at::Device dev = deviceFor(r);
  std::string out_dir = opts.output_override.empty() ? r.output : opts.output_override;
  const int steps = 5;
  std::printf("compress %s — recipe %s\n", COMPRESS_VERSION, r.path.c_str());
  // Made first: an output that cannot be written, or that holds the user's own files, fails before the work.
  StagingDir out(out_dir, opts.overwrite);

  auto t0 = Clock::now();
  Graph original = loadModel(r.model, importOptionsFor(r));
  RunResults res;
  res.original = &original;
  res.import_seconds = since(t0);
  std::printf("[1/%d] imported %s: %zu nodes, %lld parameters (%s) in %.2fs\n", steps, r.model.c_str(),
              original.nodes.size(), static_cast<long long>(original.parameterCount()),
              humanBytes(static_cast<double>(original.parameterBytes())).c_str(), res.import_seconds);
  std::fflush(stdout);

  EvalData eval;
  res.has_eval = r.eval.present;
  if (res.has_eval) eval = loadEval(r);
  PassContext ctx = passContextFor(r, dev, opts.progress, original);

  if (res.has_eval) {
    res.base = evaluate(r, original, original, eval, dev, opts.progress);
    std::printf("[2/%d] baseline %s: %.4f on %lld %s (%.2fs)\n", steps, res.base.metric.c_str(), res.base.value,
                static_cast<long long>(res.base.count), metricFor(res.base.metric).counts.c_str(), res.base.seconds);
  } else {
    std::printf("[2/%d] no data.eval in the recipe: accuracy is not measured\n", steps);
  }
  std::fflush(stdout);

  if (res.has_eval)  // passes that search (auto) check their candidates on the recipe's metric
    ctx.degradation = [&, base = res.base.value](const Graph& candidate) {
      return degradation(r.metric, base, evaluate(r, candidate, original, eval, dev, false).value);
    };

  Graph g = original.clone();  // passes may change weights in place; the original stays the reference
  res.compressed = &g;
  res.passes = runPasses(r, g, ctx, steps);

  res.fin = res.base;
  if (res.has_eval) {
    res.fin = evaluate(r, g, original, eval, dev, opts.progress);
    std::printf("[4/%d] final %s: %.4f (%+.2f%%) (%.2fs)\n", steps, res.fin.metric.c_str(), res.fin.value,
                100.0 * degradation(r.metric, res.base.value, res.fin.value), res.fin.seconds);
  } else {
    std::printf("[4/%d] final accuracy not measured (no data.eval)\n", steps);
  }

  res.latency = json::array();
  const at::Tensor probe = latencyProbe(r, eval);
  if (probe.defined() && r.latency_runs > 0)
    measureExecutorLatency(original, g, probe, static_cast<int>(r.latency_runs), dev, res.latency);

  const double deg = res.has_eval ? degradation(r.metric, res.base.value, res.fin.value) : 0.0;
  const bool gate = r.max_degradation >= 0 && res.has_eval;
  const bool passed = !gate || deg <= r.max_degradation + 1e-12;
  json report = buildReport(r, dev, res, gate, passed, deg);

  saveGraph(g, out.path("model.cir"));
  if (r.export_spec.present) {
    report["export"] = exportStep(r, original, g, res.has_eval, res.fin, probe, out, steps, res.latency);
    report["latency"] = res.latency;
  }
  writeFileAtomic(out.path("recipe.yaml"), r.text);
  report["plots"] = json::array();
  for (const ReportPlot& p : reportPlots(report)) {
    writeFileAtomic(out.path(p.file), p.svg);
    report["plots"].push_back({{"file", p.file}, {"title", p.title}});
  }
  report["memory"] = peakMemory();
  report["timing"]["total_seconds"] = since(t_start);
  writeFileAtomic(out.path("report.json"), report.dump(2) + "\n");
  writeFileAtomic(out.path("report.md"), renderMarkdown(report));
  out.commit();
  std::printf("[5/%d] wrote %s/{model.cir,%s report.json, report.md, recipe.yaml, %zu plots}\n", steps, out_dir.c_str(),
              r.export_spec.present ? " model.onnx," : "", report["plots"].size());
  std::printf("size: %s -> %s (ratio %.3f)\n", humanBytes(static_cast<double>(original.parameterBytes())).c_str(),
              humanBytes(static_cast<double>(g.parameterBytes())).c_str(), report["size_ratio"].get<double>());
  if (gate)
    std::printf("accuracy gate: %s (%s changed by %+.2f%%, allowed %.2f%%)\n", passed ? "PASS" : "FAIL", r.metric.c_str(),
                100.0 * deg, 100.0 * r.max_degradation);
  std::fflush(stdout);
  return RunSummary{passed, out_dir, report};
}

}  // namespace compress
