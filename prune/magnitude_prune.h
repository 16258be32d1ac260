// magnitude_prune.h — magnitude pruning: per matrix, per row or global; unstructured or N:M.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "prune/sparsity.h"

namespace compress {

struct MagnitudePruneOptions {
  double sparsity = 0.5;
  std::string scope = "matrix";  // matrix (alias: layer): each matrix alone; row: each output row; global: all targets
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  PatternSpec pattern;  // N:M overrides sparsity and scope (the smallest N of every M in a row)
};

/// Zeroes the round(sparsity * n) smallest-|w| weights of each scope (ties broken by position, so the
/// sparsity is exact), or the N smallest of every M consecutive weights of a row; records the masks in the
/// graph and returns per-layer and total sparsity.
nlohmann::json magnitudePrune(Graph& g, const MagnitudePruneOptions& opts);

}  // namespace compress
