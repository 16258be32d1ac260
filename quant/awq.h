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
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  std::vector<std::string> no_clip = {"*wq*", "*wk*", "*q_proj*", "*k_proj*", "*query*", "*key*"};
  int64_t chunk = 8;
};

/// Where a group of layers' shared input can absorb a per-channel scale 1/s exactly: found by walking back
/// from the input through positively homogeneous ops (ReLU, LeakyReLU, pooling: f(x/s) = f(x)/s for s > 0;
/// op_table.def's Homogeneous) whose values nothing else reads.
struct ScaleFold {
  enum Kind {
    None,
    VectorMul,  // an RMSNorm's weight: x · w
    Affine,     // LayerNorm's or BatchNorm's scale and bias
    PrevRows,   // the output rows (and bias) of the previous linear or conv layer
  } kind = None;
  std::string tensor;  // the norm weight, the normalization scale, or the previous layer's weight
  std::string bias;    // the normalization's or previous layer's bias (divided too), if any
  std::string why;     // for None: why no fold is exact
};
/// Finds the fold target for `weights`: linear layers or convs (groups 1) that read one input.
ScaleFold findScaleFold(const Graph& g, const std::vector<std::string>& weights);
/// Applies x -> x / s at the fold target and W[:, c] -> W[:, c] * s[c] to every weight (all kernel
/// positions of input channel c for a conv); the float model computes the same function afterwards (up to
/// rounding).
void applyScale(Graph& g, const ScaleFold& fold, const std::vector<std::string>& weights, const at::Tensor& s);

/// How many of a pass report's `groups` had their scale folded (awq and smoothquant report them alike).
int foldedGroups(const nlohmann::json& groups);

/// Block-sequential AWQ over the selected linear and conv weights with `calibration` inputs. Grouped and
/// depthwise convs are quantized without a scale (listed in `layers_skipped`).
nlohmann::json awqQuantizeModel(Graph& g, const at::Tensor& calibration, const AwqOptions& opts, at::Device device,
                                 bool progress);

}  // namespace compress
