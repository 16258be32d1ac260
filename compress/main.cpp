// main.cpp — the `compress` CLI. The only place that turns errors into messages and exit codes.

#include <cxxopts.hpp>

#include <cstdio>
#include <iostream>

#include "compress/compare.h"
#include "compress/data.h"
#include "compress/dims.h"
#include "compress/error.h"
#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/host_setup.h"
#include "compress/importer.h"
#include "compress/options.h"
#include "compress/pipeline.h"
#include "compress/progress.h"
#include "compress/recipe.h"
#include "compress/kv_cache.h"
#include "compress/task.h"
#include "export/onnx_export.h"
#include "export/validate.h"

using namespace compress;

namespace {

const char* kUsage = R"(compress — make trained models smaller and faster without losing accuracy.

Usage:
  compress --config RECIPE.yaml [--output DIR] [--quiet] [--overwrite]
                                                           run a recipe (same as `compress run`)
  compress passes [--ops]                                  list passes and their options
  compress inspect MODEL [--no-hashes]                     print a model's IR (.pt, .onnx or model.cir)
  compress eval --model MODEL (--tokens F.npy | --text F.txt --tokenizer T.bin)
                [--seq-len 512] [--max-tokens N] [--batch 1]  perplexity of a model
  compress eval --config RECIPE.yaml                       baseline accuracy of a recipe's model
  compress export MODEL -o model.onnx [--opset 17] [--int4 matmulnbits|qdq] [--external-data] [--kv-cache]
                  [--accuracy-level 4]
                [--tokens val.npy] [--no-validate]          ONNX from a model.cir (or .pt/.onnx), checked
                                                           with ONNX's checker and ONNX Runtime

A recipe (YAML) names the model, the data, the passes and the accuracy gate:

  model: ../../shared/models/stories260K/stories260K.pt   # .pt (TorchScript) or .onnx; paths relative to the recipe
  task: causal-lm
  data:
    eval: {tokens: ../../shared/data/tinystories/val.tok512.npy, max_tokens: 32768, seq_len: 512}
  passes:
    - magnitude-prune: {sparsity: 0.5, targets: [Linear], ignore: [output]}
    - rtn: {bits: 8, group_size: -1, symmetric: true}
  accuracy: {metric: perplexity, max_degradation: 5%}
  export: {onnx: {opset: 17, int4: matmulnbits, validate: true}}   # kv_cache: true for generation
  output: out/prune50_int8
  # optional: device: cpu | cuda, seed: 0, latency_runs: 20 (crun timings in the report),
  #           threads: N (cores for LibTorch's and OpenBLAS's pools; default all, 1 suits small models)

Shipped recipes are in configs/; `compress passes` lists every pass option with its default.
A run writes DIR/report.json, DIR/report.md, DIR/model.cir (the compressed IR), DIR/recipe.yaml and,
with export:, DIR/model.onnx — all at once or not at all. DIR must be new, empty, or an earlier
output (it holds a .compress-output marker); any other folder is refused unless --overwrite, and a
file, link or device is never replaced. The folder's writability is checked before the run starts.

Exit codes:
  0 success            2 recipe/usage error     3 model error (unreadable, unsupported ops)
  4 data error         5 numeric error (NaN/Inf) 6 i/o error
  7 device error       8 accuracy gate failed (results are still written)
  70 internal error (a bug: please report it with the command line)
)";

int usageError(const std::string& msg) {
  std::fprintf(stderr, "compress: %s\nRun `compress --help` for usage.\n", msg.c_str());
  return exitCodeFor(ErrorCategory::Config);
}

int cmdPasses(int argc, char** argv) {
  cxxopts::Options o("compress passes", "List passes and options");
  o.add_options()("ops", "also list the TorchScript ops the importer maps and the IR ops the executor runs")("h,help", "help");
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", o.help().c_str()), 0;
  for (auto f : passFactories()) {
    auto p = f();
    OptionReader r = OptionReader::describe();
    p->configure(r);
    std::printf("%s%s\n  %s\n", p->name(), p->needsCalibration() ? "  (needs data.calibration)" : p->needsTrainData() ? "  (needs data.train)" : "", p->description());
    for (const auto& d : r.docs())
      std::printf("    %-14s %-28s default %-10s %s\n", d.key.c_str(), d.type.c_str(), d.def.c_str(), d.help.c_str());
    std::printf("\n");
  }
  if (a.count("ops")) {
    std::printf("TorchScript ops the importer maps:\n ");
    for (const auto& op : importableOps()) std::printf(" %s", op.c_str());
    std::printf("\n\nIR ops the executor runs (ONNX semantics, opset 17):\n ");
    for (const auto& op : supportedOps()) std::printf(" %s", op.c_str());
    std::printf("\n");
  }
  return 0;
}

int cmdInspect(int argc, char** argv) {
  cxxopts::Options o("compress inspect", "Print a model's IR");
  o.add_options()("model", "model (.pt, .onnx or .cir)", cxxopts::value<std::string>())("no-hashes", "omit tensor hashes")(
      "input", "inputs as name:dtype:dims[;...], e.g. x:float32:batch,3,32,32 (default: int64 tokens [batch,seq])",
      cxxopts::value<std::string>())("h,help", "help");
  o.parse_positional({"model"});
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", o.help().c_str()), 0;
  if (!a.count("model")) return usageError("inspect needs a model path: compress inspect model.pt");
  ImportOptions io;
  std::vector<std::string> specs;
  if (a.count("input")) {
    std::string all = a["input"].as<std::string>();
    for (size_t p = 0; p <= all.size();) {
      size_t q = all.find(';', p);
      if (q == std::string::npos) q = all.size();
      specs.push_back(all.substr(p, q - p));
      p = q + 1;
    }
  }
  for (const auto& spec : specs) {
      auto c1 = spec.find(':'), c2 = spec.find(':', c1 == std::string::npos ? 0 : c1 + 1);
      if (c1 == std::string::npos || c2 == std::string::npos)
        return usageError("--input '" + spec + "' must look like name:dtype:dims, e.g. x:float32:batch,12");
      InputSpec in{spec.substr(0, c1), dtypeFromName(spec.substr(c1 + 1, c2 - c1 - 1)), {}};
      std::string dims = spec.substr(c2 + 1);
      for (size_t p = 0; p <= dims.size();) {
        size_t q = dims.find(',', p);
        if (q == std::string::npos) q = dims.size();
        std::string d = dims.substr(p, q - p);
        if (isInputDimName(d)) in.shape.push_back(Dim::sym(d));
        else if (!d.empty() && d.find_first_not_of("0123456789") == std::string::npos) in.shape.push_back(Dim::fixed(std::stoll(d)));
        else return usageError("--input dim '" + d + "' must be batch, seq, height, width or a number");
        p = q + 1;
      }
      io.inputs.push_back(in);
  }
  Graph g = loadModel(a["model"].as<std::string>(), io);
  std::printf("%s", dumpGraph(g, !a.count("no-hashes")).c_str());
  std::printf("# %zu nodes, %zu initializers, %lld parameters, %lld bytes\n", g.nodes.size(), g.initializers.size(),
              static_cast<long long>(g.parameterCount()), static_cast<long long>(g.parameterBytes()));
  return 0;
}

int cmdEval(int argc, char** argv) {
  cxxopts::Options o("compress eval", "Perplexity of a model on a token stream or text");
  o.add_options()("model", "model (.pt, .onnx or .cir)", cxxopts::value<std::string>())(
      "config", "take model and eval data from a recipe", cxxopts::value<std::string>())(
      "tokens", "token stream .npy", cxxopts::value<std::string>())("text", "plain text file", cxxopts::value<std::string>())(
      "tokenizer", "llama2.c tokenizer.bin for --text", cxxopts::value<std::string>())(
      "seq-len", "window length", cxxopts::value<int64_t>()->default_value("512"))(
      "max-tokens", "scored tokens (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "batch", "windows per forward pass", cxxopts::value<int64_t>()->default_value("1"))("quiet", "no progress")(
      "h,help", "help");
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", o.help().c_str()), 0;
  if (a.count("quiet")) Progress::setEnabled(false);
  std::string model;
  DataSource src;
  ImportOptions io;
  if (a.count("config")) {
    Recipe r = loadRecipe(a["config"].as<std::string>());
    if (!taskFor(r.task).token_stream)
      return usageError("eval --config supports recipes that evaluate on token streams (causal-lm); use `compress --config` for task '" + r.task + "'");
    if (!r.eval.present) return usageError("the recipe has no data.eval section");
    model = r.model;
    src = r.eval;
    io = importOptionsFor(r);
  } else {
    if (!a.count("model")) return usageError("eval needs --model (or --config)");
    model = a["model"].as<std::string>();
    if (a.count("tokens")) src.tokens = a["tokens"].as<std::string>();
    if (a.count("text")) src.text = a["text"].as<std::string>();
    if (a.count("tokenizer")) src.tokenizer = a["tokenizer"].as<std::string>();
    if (src.tokens.empty() == src.text.empty()) return usageError("eval needs exactly one of --tokens or --text");
    if (!src.text.empty() && src.tokenizer.empty()) return usageError("--text needs --tokenizer");
    src.seq_len = a["seq-len"].as<int64_t>();
    src.max_tokens = a["max-tokens"].as<int64_t>();
    src.batch = a["batch"].as<int64_t>();
    if (src.seq_len <= 0 || src.batch <= 0 || src.max_tokens < 0) return usageError("--seq-len and --batch must be positive");
  }
  Graph g = loadModel(model, io);
  LmWindows w = makeWindows(loadTokenStream(src), src.seq_len, src.max_tokens);
  Executor ex(g);
  MetricResult m = perplexity(ex, w, src.batch, !a.count("quiet"));
  std::printf("perplexity %.4f (mean NLL %.5f nats) on %lld tokens, windows of %lld, in %.2fs\n", m.value, m.mean_nll,
              static_cast<long long>(m.count), static_cast<long long>(src.seq_len), m.seconds);
  return 0;
}

int cmdExport(int argc, char** argv) {
  cxxopts::Options o("compress export", "Write a compressed model (model.cir), a TorchScript or an ONNX file as ONNX");
  o.add_options()("model", "model.cir, .pt or .onnx", cxxopts::value<std::string>())(
      "o,output", "ONNX file to write", cxxopts::value<std::string>()->default_value("model.onnx"))(
      "opset", "ONNX opset (13-21; blocked QDQ weights need 21)", cxxopts::value<int>()->default_value("17"))(
      "int4", "grouped weights as matmulnbits (com.microsoft.MatMulNBits) or qdq (opset-21 DequantizeLinear)",
      cxxopts::value<std::string>()->default_value("matmulnbits"))("external-data", "weights in OUTPUT.data")(
      "kv-cache", "a decoder with past.N.key/value inputs and present.N.key/value outputs, for generation with a cache")(
      "accuracy-level", "MatMulNBits accuracy_level: 4 = int8 activations with integer dot products (0 = exact)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "no-validate", "skip ONNX's checker and the ONNX Runtime comparison")(
      "tokens", "token .npy: validation inputs and perplexity through ONNX Runtime", cxxopts::value<std::string>())(
      "seq-len", "perplexity window", cxxopts::value<int64_t>()->default_value("512"))(
      "max-tokens", "perplexity tokens (0 = all)", cxxopts::value<int64_t>()->default_value("32768"))("h,help", "help");
  o.parse_positional({"model"});
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", o.help().c_str()), 0;
  if (!a.count("model")) return usageError("export needs a model: compress export out/run/model.cir -o model.onnx");
  Graph g = loadModel(a["model"].as<std::string>());
  ExportOptions eo;
  eo.opset = a["opset"].as<int>();
  eo.int4 = a["int4"].as<std::string>();
  eo.external_data = a.count("external-data") > 0;
  eo.accuracy_level = a["accuracy-level"].as<int64_t>();
  if (eo.accuracy_level < 0 || eo.accuracy_level > 4) return usageError("--accuracy-level takes 0 to 4 (4: int8 activations)");
  std::string out = a["output"].as<std::string>();
  if (a.count("kv-cache")) {
    const KvCacheInfo kv = addKvCache(g);
    addKvMetadata(kv, eo.metadata);
    std::printf("kv cache: %d layers, %lld kv heads of %lld, context %lld; prefill + steps reproduce the full logits (%.1e of max)\n",
                kv.layers, static_cast<long long>(kv.kv_heads), static_cast<long long>(kv.head_dim),
                static_cast<long long>(kv.context), kv.check_rel_diff);
  }
  nlohmann::json st = exportOnnx(g, out, eo);
  std::printf("wrote %s: opset %d, %lld bytes (%s)\n", out.c_str(), st["opset"].get<int>(),
              static_cast<long long>(st["total_bytes"].get<int64_t>()), st["bytes_by_format"].dump().c_str());
  if (!a.count("no-validate")) {
    std::string tokens = a.count("tokens") ? a["tokens"].as<std::string>() : "";
    ValidationOptions vo;
    vo.int8_activations = st.value("int8_activation_matmuls", int64_t{0}) > 0;
    if (!a.count("kv-cache")) vo.ppl_tokens = tokens;  // ORT's perplexity run feeds the token ids only
    vo.seq_len = a["seq-len"].as<int64_t>();
    vo.max_tokens = a["max-tokens"].as<int64_t>();
    nlohmann::json v;
    try {
      int64_t seq = 64;
      auto ctx = eo.metadata.find("compress.context_length");
      if (ctx != eo.metadata.end() && std::stoll(ctx->second) > 0) seq = std::min<int64_t>(seq, std::stoll(ctx->second) - 3);
      v = validateExport(g, out, validationInputs(g, tokens, 2, seq, 3), vo);
    } catch (const Error& e) {  // a file that failed its check is not left behind looking usable
      std::remove(out.c_str());
      if (eo.external_data) std::remove((out + ".data").c_str());
      fail(e.category(), std::string(e.what()) + " (removed " + out + ")");
    }
    std::printf("validation: %s\n", v.dump(2).c_str());
  }
  return 0;
}

int cmdCompare(int argc, char** argv) {
  cxxopts::Options o("compress compare",
                     "Put runs side by side: one table of accuracy, size, bits per weight, crun and ONNX Runtime latency,\n"
                     "peak memory and wall time, with the uncompressed baseline and the Pareto fronts marked.\n"
                     "Each RUN is an output folder of `compress run` (or its report.json). Runs must share the model,\n"
                     "the metric and the evaluation data.\n\n"
                     "  compress compare out/int8 out/int4_g32 out/prune50_int8 -o out/compare");
  o.add_options()("runs", "output folders or report.json files", cxxopts::value<std::vector<std::string>>())(
      "o,output", "write compare.md, compare.html, compare.json, accuracy_vs_size.svg and accuracy_vs_latency.svg here",
      cxxopts::value<std::string>())("force", "compare runs of different models, metrics or evaluation data")(
      "overwrite", "replace an output folder that compress did not write")("h,help", "help");
  o.parse_positional({"runs"});
  o.positional_help("RUN...");
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", o.help().c_str()), 0;
  if (!a.count("runs")) return usageError("compare needs output folders: compress compare out/int8 out/int4_g32 [-o out/compare]");
  const Comparison c = compareRuns(a["runs"].as<std::vector<std::string>>(), a.count("force") > 0);
  std::printf("%s", compareMarkdown(c).c_str());
  if (a.count("output")) {
    const std::string dir = a["output"].as<std::string>();
    writeComparison(c, dir, a.count("overwrite") > 0);
    std::printf("\nwrote %s/{compare.md, compare.html, compare.json, accuracy_vs_size.svg, accuracy_vs_latency.svg}\n", dir.c_str());
  }
  return 0;
}

int cmdRun(int argc, char** argv) {
  cxxopts::Options o("compress", "Run a recipe");
  o.add_options()("c,config", "recipe YAML", cxxopts::value<std::string>())(
      "o,output", "output folder (overrides the recipe's output:)", cxxopts::value<std::string>())(
      "q,quiet", "no progress display")("overwrite", "replace an output folder that compress did not write")(
      "h,help", "help")("version", "print the version");
  auto a = o.parse(argc, argv);
  if (a.count("help")) return std::printf("%s", kUsage), 0;
  if (a.count("version")) return std::printf("compress %s\n", COMPRESS_VERSION), 0;
  if (!a.unmatched().empty()) return usageError("unexpected argument '" + a.unmatched()[0] + "'");
  if (!a.count("config")) return std::printf("%s", kUsage), exitCodeFor(ErrorCategory::Config);
  RunOptions ro;
  if (a.count("output")) ro.output_override = a["output"].as<std::string>();
  ro.progress = !a.count("quiet");
  ro.overwrite = a.count("overwrite") > 0;
  Progress::setEnabled(ro.progress);
  Recipe r = loadRecipe(a["config"].as<std::string>());
  RunSummary s = runRecipe(r, ro);
  if (!s.gate_passed) {
    std::fprintf(stderr,
                 "compress: accuracy gate failed: %s went from %.4f to %.4f (%+.2f%%), more than the allowed %.2f%%.\n"
                 "Results were written to %s for inspection. Use milder settings (lower sparsity, more bits, a group size)\n"
                 "or raise accuracy.max_degradation.\n",
                 r.metric.c_str(), s.report["accuracy"]["baseline"].get<double>(), s.report["accuracy"]["final"].get<double>(),
                 100.0 * s.report["accuracy"]["degradation"].get<double>(), 100.0 * r.max_degradation, s.output_dir.c_str());
    return exitCodeFor(ErrorCategory::Accuracy);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  keepFreedMemory();
  try {
    std::string sub = argc > 1 ? argv[1] : "";
    if (sub == "passes") return cmdPasses(argc - 1, argv + 1);
    if (sub == "inspect") return cmdInspect(argc - 1, argv + 1);
    if (sub == "eval") return cmdEval(argc - 1, argv + 1);
    if (sub == "run") return cmdRun(argc - 1, argv + 1);
    if (sub == "export") return cmdExport(argc - 1, argv + 1);
    if (sub == "compare") return cmdCompare(argc - 1, argv + 1);
    if (!sub.empty() && sub[0] != '-') return usageError("unknown command '" + sub + "' (commands: run, passes, inspect, eval, export, compare)");
    return cmdRun(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "compress: %s: %s\n", categoryName(e.category()), e.what());
    return exitCodeFor(e.category());
  } catch (const cxxopts::exceptions::exception& e) {
    return usageError(e.what());
  } catch (const std::exception& e) {
    const std::string what = withoutBacktrace(e.what());  // LibTorch appends a C++ backtrace
    std::fprintf(stderr, "compress: internal error: %s\nThis is a bug; please report it with the command line.\n",
                 what.c_str());
    return exitCodeFor(ErrorCategory::Internal);
  }
}
