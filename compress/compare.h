// compare.h — `compress compare`: runs side by side. Reads the report.json of several output folders, puts them
// in one table with the uncompressed baseline, marks the Pareto fronts (accuracy against size, accuracy
// against crun latency) and renders compare.md, compare.html (self-contained) and two SVG plots.
// Runs of different models, metrics or evaluation data are refused unless forced. No LibTorch.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace compress {

/// One run (or the baseline) as the comparison sees it. NaN marks a value the report does not have.
struct CompareRow {
  std::string name;     // the output folder's name; "uncompressed" for the baseline model
  std::string source;   // the report.json it came from
  std::string recipe;
  bool baseline = false;
  bool measured = false;    // the accuracy was measured (data.eval)
  double metric = NAN;      // the run's final metric value
  double change = NAN;      // relative degradation against the baseline (positive = worse)
  std::string gate;         // "pass", "fail" or "none"
  double bytes = NAN;       // weight bytes of the compressed model (IR, packed)
  double onnx_bytes = NAN;  // model.onnx with its external data
  double bits_per_weight = NAN;  // 8 * bytes / the baseline's parameter count
  double crun_decode_ms = NAN, crun_decode_p90_ms = NAN;    // crun at [1, 1] (LMs) or the probe shape
  double crun_prefill_ms = NAN, crun_prefill_p90_ms = NAN;  // crun at the prefill probe ([1, 128] for LMs)
  double ort_ms = NAN;      // ONNX Runtime at the probe shape
  double peak_rss_bytes = NAN;
  double wall_seconds = NAN;
  bool front_size = false, front_latency = false;  // on the Pareto front of accuracy against size / latency
};

struct Comparison {
  std::string metric;            // the accuracy metric every run shares
  bool lower_is_better = true;   // the metric's direction
  std::string model;             // the model's path (from the first report)
  std::string decode_shape, prefill_shape, ort_shape;  // "[1, 1]", ... as measured (empty when none)
  int crun_threads = 0, ort_threads = 0;
  std::vector<CompareRow> rows;  // the baseline first, then the runs in the order given
  std::vector<std::string> notes;  // what was forced past or left out, for the reader
};

/// Loads each path (an output folder or its report.json) and builds the comparison. Error(Io) for a
/// missing or unreadable report, Error(Data) for one that is not a compress report (naming the file and
/// key), Error(Config) when runs differ in model, metric or evaluation data (unless `force`).
Comparison compareRuns(const std::vector<std::string>& paths, bool force);

/// Marks the non-dominated points: no other point is at most as costly and at most as lossy with one of
/// the two strictly less. Both coordinates are minimized; a point with a non-finite coordinate is never
/// on the front. Equal points are all on it.
std::vector<bool> paretoFront(const std::vector<double>& cost, const std::vector<double>& loss);

std::string compareMarkdown(const Comparison& c);
nlohmann::json compareJson(const Comparison& c);
/// Accuracy against size / against crun decode latency, with the front connected.
std::string accuracySizePlot(const Comparison& c);
std::string accuracyLatencyPlot(const Comparison& c);
/// The table and both plots in one HTML page without external references.
std::string compareHtml(const Comparison& c);

/// Writes compare.md, compare.html, compare.json, accuracy_vs_size.svg and accuracy_vs_latency.svg into
/// `dir`, all at once (an output folder with the rules of `compress run`'s).
void writeComparison(const Comparison& c, const std::string& dir, bool overwrite);

}  // namespace compress
