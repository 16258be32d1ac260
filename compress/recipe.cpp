// recipe.cpp — recipe parsing and validation; every problem is collected before anything runs.
#include "compress/recipe.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include "compress/dims.h"
#include "compress/error.h"
#include "compress/task.h"
#include "compress/npy.h"
#include "compress/options.h"

namespace compress {
namespace {

/// Why `p` cannot be read as an input file ("" when it can).
std::string fileProblem(const std::string& p) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return "does not exist";
  if (S_ISDIR(st.st_mode)) return "is a folder, not a file";
  if (!S_ISREG(st.st_mode)) return "is not a regular file (a device, pipe or socket)";
  if (::access(p.c_str(), R_OK) != 0) return "is not readable (check its permissions)";
  return "";
}

/// YAML allows a key twice in a map and yaml-cpp keeps the first; a recipe that says a thing twice is
/// ambiguous, so every repeated key anywhere in the document is an error at its second place.
/// Keys that are not plain names (`[a]: 1`, `{x: 1}: 2`) are errors too; returns false when there are any.
bool checkDuplicateKeys(const YAML::Node& node, const std::string& ctx, Diagnostics& d) {
  bool names = true;
  if (node.IsMap()) {
    std::map<std::string, YAML::Mark> seen;
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) {
        d.add(kv.first.Mark(), ctx, "a key must be a plain name, not a list or a map");
        names = false;
        continue;
      }
      const std::string k = kv.first.Scalar();
      const std::string where = ctx.empty() ? k : ctx + "." + k;
      auto [it, fresh] = seen.emplace(k, kv.first.Mark());
      if (!fresh)
        d.add(kv.first.Mark(), where, "repeated key (first given at line " + std::to_string(it->second.line + 1) +
                                          "); say it once");
      names &= checkDuplicateKeys(kv.second, where, d);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) names &= checkDuplicateKeys(node[i], ctx + "[" + std::to_string(i) + "]", d);
  }
  return names;
}

std::string resolve(const std::string& dir, const std::string& p) {
  if (p.empty() || p[0] == '/' || dir.empty()) return p;
  return dir + "/" + p;
}

void checkFile(Diagnostics& d, const YAML::Node& node, const std::string& key, const std::string& path) {
  if (path.empty()) return;
  if (const std::string why = fileProblem(path); !why.empty())
    d.add(node ? node.Mark() : YAML::Mark::null_mark(), key,
          "file '" + path + "' " + why + " (paths are relative to the recipe's folder)");
}

void readData(const YAML::Node& node, bool calibration, const std::string& task, const std::string& dir,
              Diagnostics& d, DataSource& out, const std::string& ctx) {
  if (!node) return;
  out.present = true;
  OptionReader r(node, &d, ctx);
  out.tokens = resolve(dir, r.str("tokens", "", "token stream .npy (int32/int64)"));
  out.text = resolve(dir, r.str("text", "", "plain text, tokenized by blank-line paragraphs with BOS"));
  out.tokenizer = resolve(dir, r.str("tokenizer", "", "llama2.c tokenizer.bin for `text`"));
  out.inputs = resolve(dir, r.str("inputs", "", "model inputs .npy (classifier/embedding/generic)"));
  out.labels = resolve(dir, r.str("labels", "", "integer labels .npy (classifier)"));
  out.samples = r.integer("samples", calibration ? 64 : 0, 0, 1 << 20, "calibration sequences");
  out.seq_len = r.integer("seq_len", calibration ? 256 : 512, 1, 1 << 20, "tokens per sequence/window");
  out.max_tokens = r.integer("max_tokens", 0, 0, int64_t{1} << 40, "scored tokens (0 = all)");
  out.batch = r.integer("batch", calibration ? 8 : 1, 1, 1 << 16, "sequences per forward pass (LM eval: 1 is fastest on CPU)");
  out.seed = r.integer("seed", 0, 0, int64_t{1} << 40, "sampling seed");
  if (calibration)
    out.sampling = r.choice("sampling", "sequential", {"sequential", "random"},
                            "calibration sequences: consecutive from the start of the stream, or at seeded random offsets");
  r.finish();
  const YAML::Node& n = node;
  for (auto [key, path] : {std::pair{"tokens", out.tokens}, {"text", out.text}, {"tokenizer", out.tokenizer},
                           {"inputs", out.inputs}, {"labels", out.labels}})
    checkFile(d, n[key], ctx + "." + key, path);
  if (taskFor(task).token_stream) {
    if (out.tokens.empty() && out.text.empty())
      d.add(n.Mark(), ctx, "give `tokens: file.npy` or `text: file.txt` with `tokenizer: tokenizer.bin`");
    if (!out.tokens.empty() && !out.text.empty()) d.add(n.Mark(), ctx, "give either `tokens` or `text`, not both");
    if (!out.text.empty() && out.tokenizer.empty()) d.add(n.Mark(), ctx, "`text` needs `tokenizer: path/to/tokenizer.bin`");
  } else {
    if (out.inputs.empty()) d.add(n.Mark(), ctx, "task '" + task + "' needs `inputs: file.npy`");
  }
}

void checkKeys(const YAML::Node& node, const std::vector<std::string>& allowed, const std::string& ctx, Diagnostics& d) {
  for (const auto& kv : node) {
    std::string k = kv.first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
    std::string hint = closestMatch(k, allowed);
    std::string all;
    for (const auto& a : allowed) all += (all.empty() ? "" : ", ") + a;
    d.add(kv.first.Mark(), ctx.empty() ? k : ctx + "." + k,
          "unknown key" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + "; known keys: " + all);
  }
}

void readSections(const YAML::Node& root, Recipe& r, Diagnostics& d);

}  // namespace

std::string defaultMetric(const std::string& task) { return taskFor(task).default_metric; }

Recipe parseRecipe(const std::string& text, const std::string& path) {
  Recipe r;
  r.path = path;
  r.text = text;
  auto slash = path.find_last_of('/');
  r.dir = slash == std::string::npos ? "." : path.substr(0, slash);
  Diagnostics d(path);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    d.add(e.mark, "", "invalid YAML: " + e.msg + " (check indentation and that every `key: value` has a space after the colon)");
    d.throwIfAny();
  }
  if (!root.IsMap()) {
    d.add(root.Mark(), "", "a recipe must be a YAML map with keys like model:, data:, passes:");
    d.throwIfAny();
  }
  if (!checkDuplicateKeys(root, "", d)) d.throwIfAny();  // everything below reads keys as names
  try {
    readSections(root, r, d);
  } catch (const YAML::Exception& e) {  // a value of a shape no reader expected
    d.add(e.mark, "", "unexpected value: " + e.msg);
  }
  d.throwIfAny();
  return r;
}

namespace {

void readSections(const YAML::Node& root, Recipe& r, Diagnostics& d) {
  checkKeys(root, {"model", "inputs", "task", "data", "passes", "accuracy", "export", "output", "device", "seed", "threads", "latency_runs"}, "", d);

  OptionReader top(root, &d, "");
  // The top-level scalars are read with the same typed reader as pass options; unknown keys were checked above.
  r.model = resolve(r.dir, top.str("model", "", "TorchScript model"));
  r.task = top.choice("task", "causal-lm", taskNames(), "what the model does");
  r.output = resolve(r.dir, top.str("output", "", "output folder"));
  r.device = top.choice("device", "cpu", {"cpu", "cuda"}, "where the executor runs");
  r.seed = top.integer("seed", 0, 0, int64_t{1} << 40, "seed for sampling and passes");
  r.threads = top.integer("threads", 0, 0, 1024, "cores for LibTorch's and the BLAS library's thread pools (0 = their defaults: every core)");
  r.latency_runs = top.integer("latency_runs", 20, 0, 100000, "timed runs for the latency figure (0 = skip)");
  if (r.model.empty()) d.add("model", "missing: say which TorchScript file to compress, e.g. `model: ../models/m.pt`");
  else checkFile(d, root["model"], "model", r.model);
  if (r.output.empty()) d.add("output", "missing: say where to write results, e.g. `output: out/my_run`");

  if (YAML::Node in = root["inputs"]) {
    if (!in.IsMap()) d.add(in.Mark(), "inputs", "expected a map like {tokens: {dtype: int64, shape: [batch, seq]}}");
    else
      for (const auto& kv : in) {
        RecipeInput ri;
        ri.name = kv.first.as<std::string>();
        OptionReader ir(kv.second, &d, "inputs." + ri.name);
        ri.dtype = ir.choice("dtype", "int64", {"int64", "int32", "float32", "float16", "bool"}, "input dtype");
        ri.shape = ir.strings("shape", {"batch", "seq"}, "dims: batch, seq, height, width or numbers");
        ir.finish();
        for (const auto& s : ri.shape) {
          bool num = !s.empty() && s.size() <= 12 && s.find_first_not_of("0123456789") == std::string::npos;
          if (!num && !isInputDimName(s))
            d.add(kv.second["shape"].Mark(), "inputs." + ri.name + ".shape", "dim '" + s + "' must be batch, seq, height, width or a number");
        }
        r.inputs.push_back(ri);
      }
  }

  YAML::Node data = root["data"];
  if (data && !data.IsMap()) d.add(data.Mark(), "data", "expected a map with calibration:, eval: and/or train:");
  else if (data) {
    checkKeys(data, {"calibration", "eval", "train"}, "data", d);
    readData(data["calibration"], true, r.task, r.dir, d, r.calibration, "data.calibration");
    readData(data["eval"], false, r.task, r.dir, d, r.eval, "data.eval");
    readData(data["train"], false, r.task, r.dir, d, r.train, "data.train");
    if (r.train.present && !taskFor(r.task).trains)
      d.add(data["train"].Mark(), "data.train", "training data is not supported for task '" + r.task + "' (it is for causal-lm)");
    // Training on the text the result is judged on would make the evaluation meaningless.
    auto same = [](const std::string& a, const std::string& b) {
      if (a.empty() || b.empty()) return false;
      char ra[PATH_MAX], rb[PATH_MAX];
      return ::realpath(a.c_str(), ra) && ::realpath(b.c_str(), rb) && std::string(ra) == rb;
    };
    if (r.train.present && r.eval.present && (same(r.train.tokens, r.eval.tokens) || same(r.train.text, r.eval.text)))
      d.add(data["train"].Mark(), "data.train",
            "is the same file as data.eval: training on the evaluation text would make the reported accuracy meaningless; "
            "train on other text (e.g. train_head.tok512.npy) and keep val for evaluation");
  }

  if (YAML::Node passes = root["passes"]) {
    if (!passes.IsSequence()) {
      d.add(passes.Mark(), "passes", "expected a list like\n    passes:\n      - rtn: {bits: 8}");
    } else {
      for (size_t i = 0; i < passes.size(); ++i) {
        YAML::Node item = passes[i];
        std::string ctx = "passes[" + std::to_string(i) + "]";
        std::string name;
        YAML::Node opts;
        if (item.IsScalar()) name = item.Scalar();
        else if (item.IsMap() && item.size() == 1) name = item.begin()->first.as<std::string>(), opts = item.begin()->second;
        else {
          d.add(item.Mark(), ctx, "each pass is `- name: {options}` or `- name`");
          continue;
        }
        auto pass = createPass(name);
        if (!pass) {
          std::string hint = closestMatch(name, passNames());
          std::string all;
          for (const auto& p : passNames()) all += (all.empty() ? "" : ", ") + p;
          d.add(item.Mark(), ctx, "unknown pass '" + name + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                                      "; available: " + all + " (see `compress passes`)");
          continue;
        }
        OptionReader pr(opts, &d, ctx + "." + name);
        pass->configure(pr);
        pr.finish();
        if (pass->needsCalibration() && !r.calibration.present)
          d.add(item.Mark(), ctx + "." + name, "this pass needs calibration data: add data.calibration to the recipe");
        if (pass->needsTrainData() && !r.train.present)
          d.add(item.Mark(), ctx + "." + name, "this pass trains: add data.train (training text, not the eval text) to the recipe");
        r.passes.push_back({std::move(pass), r.path + ":" + std::to_string(item.Mark().line + 1)});
      }
    }
  }

  if (YAML::Node ex = root["export"]) {
    if (!ex.IsMap()) d.add(ex.Mark(), "export", "expected a map like {onnx: {opset: 17}}");
    else {
      checkKeys(ex, {"onnx"}, "export", d);
      OptionReader er(ex["onnx"], &d, "export.onnx");
      ExportSpec& e = r.export_spec;
      e.present = true;
      e.opset = er.integer("opset", 17, 13, 21, "ONNX opset (blocked QDQ weights raise it to 21)");
      e.int4 = er.choice("int4", "matmulnbits", {"matmulnbits", "qdq"}, "grouped weights as com.microsoft.MatMulNBits or opset-21 DequantizeLinear");
      e.external_data = er.boolean("external_data", false, "weights in model.onnx.data (automatic above 2 GB)");
      e.kv_cache = er.boolean("kv_cache", false, "a decoder with past/present key-value inputs and outputs (generation with a cache)");
      e.validate = er.boolean("validate", true, "check with ONNX's checker and ONNX Runtime against the executor");
      e.validate_perplexity = er.boolean("validate_perplexity", true, "also compare perplexity through ONNX Runtime");
      e.compact_sparse = er.choice("sparse_weights", "dense", {"dense", "compact"},
                                   "pruned fp32/int8 linear weights as dense tensors, or compact: a bitmask plus the "
                                   "nonzeros, rebuilt by standard ops at load (smaller files; ONNX Runtime and crun "
                                   "run both)") == "compact";
      e.accuracy_level = er.integer("accuracy_level", 0, 0, 4,
                                    "MatMulNBits accuracy_level: 0 exact fp32 compute, 4 int8 activations with integer "
                                    "dot products (faster in ONNX Runtime and crun, within a stated error bound)");
      er.finish();
    }
  }

  const Task& task = taskFor(r.task);
  const bool labels = !r.eval.labels.empty();
  r.metric = !labels && !task.unlabeled_metric.empty() ? task.unlabeled_metric : task.default_metric;
  r.metric_reason = r.metric == task.default_metric ? "the default for task '" + r.task + "'"
                                                    : "no data.eval.labels: the default for task '" + r.task + "' without labels";
  if (YAML::Node acc = root["accuracy"]) {
    OptionReader ar(acc, &d, "accuracy");
    const std::string chosen = ar.choice("metric", r.metric, metricNames(), "metric to gate on");
    if (acc["metric"]) r.metric_reason = "chosen in the recipe";
    r.metric = chosen;
    r.max_degradation = ar.number("max_degradation", -1, -1, 1e6, "allowed relative loss, e.g. 5% or 0.05");
    ar.finish();
    const Task& t = taskFor(r.task);
    if (std::find(t.metrics.begin(), t.metrics.end(), r.metric) == t.metrics.end()) {
      std::string fits;
      for (const auto& m : t.metrics) fits += (fits.empty() ? "" : " or ") + m;
      d.add(acc["metric"].Mark(), "accuracy.metric", "metric '" + r.metric + "' does not fit task '" + r.task + "' (use " + fits + ")");
    } else if (metricFor(r.metric).needs_labels && !labels && r.eval.present) {
      d.add(acc["metric"].Mark(), "accuracy.metric", "metric '" + r.metric + "' needs `labels: file.npy` in data.eval" +
                                                         (task.unlabeled_metric.empty() ? "" : " (without labels use " + task.unlabeled_metric + ")"));
    }
  }
  if (!r.eval.present && r.max_degradation >= 0)
    d.add(root["accuracy"].Mark(), "accuracy", "an accuracy gate needs data.eval to measure against");
}

}  // namespace

Recipe loadRecipe(const std::string& path) {
  return parseRecipe(readRegularFile(path, "a recipe .yaml file (try `ls configs/`)"), path);
}

}  // namespace compress
