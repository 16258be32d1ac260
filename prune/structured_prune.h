// structured_prune.h — remove whole FFN neurons and attention heads so the model becomes a genuinely
// smaller dense model.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

/// A feed-forward unit found in the graph: `down` reads h = f(up_1 x, ..., up_k x) where f is elementwise
/// (SwiGLU: silu(w1 x) * (w3 x); GELU MLP: gelu(fc x + b)). Neuron j is row j of every up weight (and
/// element j of biases inside f) and column j of down.
struct FfnGroup {
  std::string down;                    // weight name
  std::vector<std::string> up;         // weight names
  std::vector<std::string> biases;     // initializers inside f sliced along their last dim
  int64_t neurons = 0;                 // hidden size H
  /// Shape constants inside f that hold H (HF Conv1D's `view(*size_out)` between the up projection and the
  /// activation): element `index` of input `input` of node `node`, rewritten to the kept count.
  struct Resize {
    int node;
    size_t input;
    int64_t index;
  };
  std::vector<Resize> resizes;
};

/// Every FFN unit among the linear weights whose down projection is selected by `targets`/`ignore`.
std::vector<FfnGroup> findFfnGroups(const Graph& g, const std::vector<std::string>& down_weights);

struct StructuredPruneOptions {
  double ffn_ratio = 0.25;          // fraction of FFN neurons to remove
  double head_ratio = 0.0;          // fraction of attention heads to remove (whole key/value groups under GQA)
  int64_t target_params = 0;        // > 0: remove the lowest-scored neurons (globally) until params <= this
  std::string scope = "layer";      // layer: ffn_ratio of each FFN; global: of all FFN neurons by one ranking
  std::string score = "activation"; // activation: ‖h_j‖₂·‖W_down[:, j]‖₂; magnitude: ‖W_down[:, j]‖₂·Σ‖W_up[j, :]‖₂
  int64_t multiple_of = 1;          // kept neurons per FFN rounded up to a multiple of this (kernel-friendly sizes)
  std::vector<std::string> targets = {"Linear"};
  std::vector<std::string> ignore;
  int64_t chunk = 8;
};

/// Keeps the neurons `keep` (sorted indices) of one FFN: slices its weights, biases and masks.
void keepNeurons(Graph& g, const FfnGroup& f, const at::Tensor& keep);

/// Scores FFN neurons and attention-head groups (activation scores from `calibration`, which may be
/// undefined for magnitude), removes the lowest-scored ones, re-infers value shapes and verifies the graph. Returns per-layer counts and
/// parameter counts before/after.
nlohmann::json structuredPrune(Graph& g, const at::Tensor& calibration, const StructuredPruneOptions& opts,
                               at::Device device);

}  // namespace compress
