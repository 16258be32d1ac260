// task.cpp — the task table (task.h).
#include "compress/task.h"

#include "compress/error.h"

namespace compress {
namespace {

/// The entry of `table` called `name`; Error(Config) listing the known names otherwise.
template <typename T>
const T& byName(const std::vector<T>& table, const std::string& name, const char* what) {
  for (const T& e : table)
    if (e.name == name) return e;
  std::string all;
  for (const T& e : table) all += (all.empty() ? "" : ", ") + e.name;
  fail(ErrorCategory::Config, std::string("unknown ") + what + " '" + name + "' (" + what + "s: " + all + ")");
}

}  // namespace

const std::vector<Task>& tasks() {
  // name, description, token stream, default metric, metric without labels, fitting metrics, trains
  static const std::vector<Task> k = {
      {"causal-lm", "next-token prediction on token ids", true, "perplexity", "", {"perplexity", "cosine"}, true},
      {"classifier", "class logits: top-1 accuracy on labels, or agreement with the uncompressed model without them", false,
       "top1", "agreement", {"top1", "agreement", "cosine"}, false},
      {"embedding", "vectors (encoders), judged by cosine similarity of pooled embeddings to the uncompressed model's", false,
       "pooled_cosine", "", {"pooled_cosine", "cosine"}, false},
      {"generic", "any outputs, judged by cosine similarity to the uncompressed model's", false, "cosine", "", {"cosine"}, false},
  };
  return k;
}

const std::vector<Metric>& metrics() {
  // name, lower is better, counts, against the uncompressed model, likelihood, needs labels, description
  static const std::vector<Metric> k = {
      {"perplexity", true, "tokens", false, true, false, "exp of the mean next-token negative log-likelihood"},
      {"top1", false, "examples", false, false, true, "share of examples whose top class is the label"},
      {"agreement", false, "examples", true, false, false, "share of examples whose top class is the uncompressed model's"},
      {"cosine", false, "examples", true, false, false, "mean cosine similarity of the outputs to the uncompressed model's"},
      {"pooled_cosine", false, "examples", true, false, false,
       "mean cosine similarity of the sequence-mean-pooled outputs (sentence embeddings) to the uncompressed model's"},
  };
  return k;
}

std::vector<std::string> metricNames() {
  std::vector<std::string> n;
  for (const Metric& m : metrics()) n.push_back(m.name);
  return n;
}

const Metric& metricFor(const std::string& name) { return byName(metrics(), name, "metric"); }

double degradation(const std::string& metric, double baseline, double final_value) {
  const Metric& m = metricFor(metric);
  if (m.against_model) return 1.0 - final_value;  // the reference is the uncompressed model itself
  if (m.lower_is_better) return final_value / baseline - 1.0;
  return baseline > 0 ? (baseline - final_value) / baseline : 0.0;
}

std::vector<std::string> taskNames() {
  std::vector<std::string> n;
  for (const Task& t : tasks()) n.push_back(t.name);
  return n;
}

const Task& taskFor(const std::string& name) { return byName(tasks(), name, "task"); }

}  // namespace compress
