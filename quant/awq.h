// awq.h — activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "quant/format.h"

namespace compress {

struct AwqOptions {
  QuantFormat format{4, 128, false};
  int64_t grid = 20;          // alpha in {0, 1/grid, ..., (grid-1)/grid}
  bool clip = true;           // per-group max-value shrink search after scaling
  int64_t clip_grid = 20;
  double max_shrink = 0.5;    // clip ratios 1, 1 - 1/clip_grid, ... > 1 - max_shrink
  int64_t clip_tokens = 512;  // tokens sampled (evenly) for the clip search
  bool quantize = true;       // RTN-quantize at the end; false leaves scaled/clipped float weights (for gptq)
  std::vector<std::string> targets = {"Linear"};
  std::vector<std::string> ignore;
  std::vector<std::string> no_clip = {"*wq*", "*wk*", "*q_proj*", "*k_proj*", "*query*", "*key*"};
  int64_t chunk = 8;
};

/// Where a group of linear layers' shared input can absorb a per-channel scale 1/s exactly.
struct ScaleFold {
  enum Kind { None, VectorMul, LayerNorm, PrevLinearRows } kind = None;
  std::string tensor;  // the norm weight (VectorMul), LayerNormalization scale, or the previous linear weight
  std::string bias;    // LayerNormalization bias (divided too)
};
/// Finds the fold target for the MatMuls of `weights` (which must share one input).
ScaleFold findScaleFold(const Graph& g, const std::vector<std::string>& weights);
/// Applies x -> x / s at the fold target and W[:, j] -> W[:, j] * s[j] to every weight; the float model
/// computes the same function afterwards (up to rounding).
void applyScale(Graph& g, const ScaleFold& fold, const std::vector<std::string>& weights, const at::Tensor& s);

/// Block-sequential AWQ over the selected linear weights with `calibration` inputs.
nlohmann::json awqQuantizeModel(Graph& g, const at::Tensor& calibration, const AwqOptions& opts, at::Device device,
                                 bool progress);

}  // namespace compress
