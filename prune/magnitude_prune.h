// magnitude_prune.h — unstructured magnitude pruning (per layer, per row or global).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

struct MagnitudePruneOptions {
  double sparsity = 0.5;
  std::string scope = "layer";  // layer: each matrix alone; row: each output row; global: all targets together
  std::vector<std::string> targets = {"Linear"};
  std::vector<std::string> ignore;
};

/// Zeroes the round(sparsity * n) smallest-|w| weights of each scope (ties broken by position, so the
/// sparsity is exact), records the masks in the graph and returns per-layer and total sparsity.
nlohmann::json magnitudePrune(Graph& g, const MagnitudePruneOptions& opts);

}  // namespace compress
