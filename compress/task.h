// task.h — what a recipe's model does, declared once per task: the data it evaluates and calibrates on,
// its default metric and the metrics that fit, whether it trains. Recipes, the pipeline, `compress eval` and
// the report read these facts instead of comparing task names (no LibTorch).
#pragma once

#include <string>
#include <vector>

namespace compress {

struct Task {
  std::string name;
  std::string description;
  bool token_stream = false;   // data is a token stream (perplexity windows, calibration sequences); else inputs .npy
  std::string default_metric;  // the accuracy metric unless the recipe picks another of `metrics`
  std::string unlabeled_metric;  // the default when the eval data has no labels (empty: the default needs none)
  std::vector<std::string> metrics;
  bool trains = false;         // data.train (distillation on the task's own data) is supported
};

/// An accuracy metric: which way it improves and what it counts.
struct Metric {
  std::string name;
  bool lower_is_better = false;  // perplexity: lower; top-1 and cosine: higher
  std::string counts;            // what `count` in a result is: "tokens" or "examples"
  bool against_model = false;    // measured against the uncompressed model's outputs (1 is no change)
  bool likelihood = false;       // from next-token log-likelihoods: the report adds the mean NLL, export checks it in ORT
  bool needs_labels = false;     // needs data.eval.labels
  std::string description;
};

const std::vector<Metric>& metrics();
/// The metric called `name`; Error(Config) naming the known metrics otherwise.
const Metric& metricFor(const std::string& name);
std::vector<std::string> metricNames();
/// Relative loss from `baseline` to `final_value` (positive = worse), by the metric's direction; cosine
/// (whose baseline is 1 by definition) is 1 - cosine.
double degradation(const std::string& metric, double baseline, double final_value);

/// Every task, in the order `--help` lists them.
const std::vector<Task>& tasks();
/// The task called `name`; Error(Config) naming the known tasks otherwise.
const Task& taskFor(const std::string& name);
std::vector<std::string> taskNames();

}  // namespace compress
