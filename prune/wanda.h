// wanda.h — Wanda pruning (Sun et al. 2023, arXiv:2306.11695): weights by |W| times input-activation norm.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "prune/sparsity.h"

namespace compress {

struct WandaOptions {
  double sparsity = 0.5;
  std::string scope = "row";  // row (the paper's: compare within each output row) or matrix
  PatternSpec pattern;        // N:M: the N lowest scores of every M in a row
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  int64_t chunk = 8;  // calibration sequences per forward pass
};

/// Wanda scores S_ij = |W_ij| · ‖X_j‖₂, X_j = input channel j over all calibration tokens; the mask
/// prunes the lowest scores per row (per matrix, or N of every M). `act_norm` is ‖X_j‖₂ [in].
at::Tensor wandaMask(const at::Tensor& w, const at::Tensor& act_norm, double sparsity, const std::string& scope,
                     const PatternSpec& pattern);

/// Block-sequential Wanda: each block's inputs come from the blocks before it as already pruned.
nlohmann::json wandaPrune(Graph& g, const at::Tensor& calibration, const WandaOptions& opts, at::Device device,
                          bool progress);

}  // namespace compress
