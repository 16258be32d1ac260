// auto_precision.h — sensitivity analysis and accuracy-driven mixed precision (the `sensitivity` and `auto`
// passes). The idea of NVIDIA ModelOpt's auto_quantize and Intel Neural Compressor's tolerable-loss search,
// on our IR: measure what each layer costs in accuracy in each candidate format, then give the cheap formats
// to the layers that mind them least until a goal (bits per weight, or a degradation on the eval metric) is met.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "quant/format.h"

namespace compress {

/// A candidate weight format: a quantization format, or float32 (the weight as it is).
struct Candidate {
  bool keep_float = false;
  QuantFormat format;
  std::string name() const { return keep_float ? "fp32" : format.name(); }
  double bits() const { return keep_float ? 32.0 : format.bits; }  // nominal bits per weight (scales not counted)
  /// Bytes an [out, in] weight takes in this candidate: packed integers, float32 scales, packed zero points.
  double storedBytes(int64_t out, int64_t in) const;
};

/// "fp32", "int8", "int4-g32", "int4-g128-asym" (the grammar of QuantFormat::name()); Error(Config) otherwise.
Candidate parseCandidate(const std::string& name);

/// Sensitivity of each layer to each candidate: the mean per-token KL divergence (nats) of the model's
/// output distribution from the unchanged model's when only that layer is rounded (RTN) to the candidate.
struct Sensitivity {
  std::vector<std::string> weights;
  std::vector<int64_t> out, in;  // each weight's matrix shape
  std::vector<Candidate> candidates;
  std::vector<std::vector<double>> kl;  // [weight][candidate]
};

/// Measures it on `calibration` (the model's first input, in chunks of `chunk` rows). The graph is restored.
Sensitivity measureSensitivity(Graph& g, const std::vector<std::string>& weights, const std::vector<Candidate>& candidates,
                               const at::Tensor& calibration, at::Device device, int64_t chunk, bool progress);

/// One step of the greedy path: `weight` goes from candidate `from` to the cheaper `to`.
struct Move {
  size_t weight, from, to;
};

/// The greedy path from every layer in its most precise candidate to every layer in its cheapest (candidates
/// ordered by stored bytes): at each step the move with the least added KL per byte saved (KL summed over
/// layers). Ties go to the earlier layer, so the path is deterministic.
std::vector<Move> greedyPath(const Sensitivity& s);

/// The assignment after the first `k` moves of `path` (candidate index per weight), and its nominal bits per
/// weight over the weights.
std::vector<size_t> assignmentAfter(const Sensitivity& s, const std::vector<Move>& path, size_t k);
double nominalBits(const Sensitivity& s, const std::vector<size_t>& assignment);
/// The fewest moves of `path` that bring the nominal bits to `budget` or below, then the budget left filled: the
/// moves taken are undone, last first, wherever the bits stay within it (each undo lowers the summed KL). Error(Config)
/// when even the cheapest assignment is above the budget.
std::vector<size_t> assignmentForBits(const Sensitivity& s, const std::vector<Move>& path, double budget, size_t* moves);
double storedBytes(const Sensitivity& s, const std::vector<size_t>& assignment);

}  // namespace compress
