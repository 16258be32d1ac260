// sparsity.h — what every pruning pass shares: the pattern a recipe asks for ("unstructured", "2:4"),
// keep-masks from scores (per matrix, per row, N:M), installing a mask into the graph (weights zeroed,
// earlier masks kept), and the per-layer/global sparsity summary the report shows.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

class OptionReader;

/// A requested pattern. N:M means: in every group of M consecutive weights of a row (along the input
/// dimension) at least N are zero — 2:4 and 4:8 are 50%. A row whose length is not a multiple of M ends in a
/// shorter group of r weights that keeps at most r - floor(N·r/M) of them.
struct PatternSpec {
  SparsityPattern pattern = SparsityPattern::Unstructured;
  int n = 0, m = 0;
  bool nm() const { return pattern == SparsityPattern::NofM; }
  std::string str() const;
  double sparsity() const { return nm() ? static_cast<double>(n) / m : 0.0; }
};

/// Parses "unstructured" or "N:M" (0 < N < M ≤ 64); throws Error(Config) with what to write otherwise.
PatternSpec parsePattern(const std::string& s);
/// Reads the `pattern` option of a pruning pass (recording a problem on a bad value).
PatternSpec readPattern(OptionReader& r);
std::string patternName(const SparsityInfo& s);

/// Masks (true = kept) from scores; lower scores are pruned first, ties by position (exact counts).
at::Tensor keepLowestPruned(const at::Tensor& scores, int64_t prune);          // any shape, flat
at::Tensor keepPerRow(const at::Tensor& scores, double sparsity);             // [rows, cols]
at::Tensor keepNofM(const at::Tensor& scores, int n, int m);                   // [rows, cols]

/// Zeroes `w` in place where `mask` is false (and where an earlier mask pruned — pruned weights never come back)
/// and records the mask with its pattern. Returns this layer's report row.
nlohmann::json installMask(Graph& g, const std::string& w, at::Tensor mask, const PatternSpec& p);

/// Keeps the entries `index` of initializer `name` along `dim` (and of its mask): structured pruning's one
/// way to shrink a weight or bias.
void sliceInitializer(Graph& g, const std::string& name, int64_t dim, const at::Tensor& index);

/// Whether each linear weight is stored [out, in] (transposed in its MatMul), by weight name.
std::map<std::string, bool> linearLayouts(const Graph& g);

/// A pass's summary from its layer rows: total zeros/numel/sparsity plus the rows.
nlohmann::json sparsityTotals(const nlohmann::json& layers);

/// The graph's sparsity after all passes, for report.json: every linear weight with its sparsity, pattern
/// (dense ones as "dense"), storage format and bits per weight (scales and zero points included), and global
/// sparsity over linear weights and over pruned ones.
nlohmann::json sparsitySummary(const Graph& g);

/// Pruning passes work on float weights: throws Error(Config) naming the pass when a target is quantized.
void requireFloatTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& weights);

}  // namespace compress
