// recipe.h — the YAML recipe: model, inputs, task, data, passes, accuracy gate, output. Parsing checks
// everything (unknown keys with suggestions, types, ranges, missing files, pass options) and reports all
// problems together with file:line:column and the key, before any work starts. LibTorch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compress/pass.h"

namespace compress {

struct DataSource {
  bool present = false;
  std::string tokens;     // .npy token stream (int32/int64)
  std::string text;       // plain text, tokenized by paragraphs with `tokenizer`
  std::string tokenizer;  // llama2.c tokenizer.bin
  std::string inputs;     // .npy model inputs (classifier / embedding / generic tasks)
  std::string labels;     // .npy int labels (classifier)
  int64_t samples = 0;    // calibration: number of sequences
  int64_t seq_len = 0;
  int64_t max_tokens = 0;  // eval: scored tokens (0 = the whole stream)
  int64_t batch = 0;
  int64_t seed = 0;
  std::string sampling = "sequential";  // calibration: sequential (consecutive from the start) | random
};

struct RecipeInput {
  std::string name;
  std::string dtype = "int64";
  std::vector<std::string> shape;  // "batch", "seq" or a number
};

struct ExportSpec {
  bool present = false;
  int64_t opset = 17;
  std::string int4 = "matmulnbits";  // matmulnbits | qdq
  bool external_data = false;
  bool kv_cache = false;             // past.N.key/value inputs, present.N.key/value outputs (compress/kv_cache.h)
  bool validate = true;              // ONNX checker + ONNX Runtime against the executor
  bool validate_perplexity = true;   // also perplexity through ONNX Runtime (causal LMs with data.eval)
  bool compact_sparse = false;       // sparse_weights: compact (export/sparse_weights.h); dense is the default
  int64_t accuracy_level = 0;        // MatMulNBits accuracy_level: 4 = int8 activations (ExportOptions)
};

struct ConfiguredPass {
  std::unique_ptr<Pass> pass;
  std::string where;  // "file:line" of its entry
};

struct Recipe {
  std::string path;  // the recipe file as given
  std::string dir;   // its folder; relative paths resolve against it
  std::string text;  // the YAML as read (hashed into reports)
  std::string model;
  std::string task = "causal-lm";  // causal-lm | classifier | embedding | generic
  std::vector<RecipeInput> inputs;
  DataSource calibration, eval, train;  // train: text for passes that train (distill); never the eval data
  std::vector<ConfiguredPass> passes;
  ExportSpec export_spec;
  std::string metric;              // compress/task.h's metrics (default from the task, and whether labels are given)
  std::string metric_reason;       // why this metric: the report says it
  double max_degradation = -1;     // < 0: no gate
  std::string output;
  std::string device = "cpu";
  int64_t seed = 0;
  int64_t threads = 0;  // 0 = LibTorch's default
  int64_t latency_runs = 20;
};

/// Parses and validates a recipe file. Throws Error(Config) listing every problem, or Error(Io) when the
/// file cannot be read.
Recipe loadRecipe(const std::string& path);
/// Parses recipe text as if it were the file `path` (tests).
Recipe parseRecipe(const std::string& text, const std::string& path);

/// The metric a task is judged by.
std::string defaultMetric(const std::string& task);

}  // namespace compress
