// smoothquant.h — SmoothQuant W8A8 (Xiao et al. 2023, arXiv:2211.10438): int8 weights and int8 activations.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "quant/format.h"

namespace compress {

/// How a linear layer's input is quantized to int8 (symmetric, zero point 0), as the graph then says with
/// standard QuantizeLinear -> DequantizeLinear nodes in front of the MatMul:
///   Dynamic: per token (row), scale = max|x_row| / 127 computed in the graph (Abs, ReduceMax, Div, Max) and used as
///            an opset-21 blocked scale (block_size = the row length);
///   Static:  per tensor, one scale = max over the calibration set of |x| / 127, an initializer; stored as uint8 with
///            zero point 128 (the same integers as int8 with zero point 0, and the form ONNX Runtime fuses into its
///            integer MatMul: measured 10x faster at [1,1] than int8 activations, which it runs op by op).
enum class ActQuant { Dynamic, Static };

/// What the result (`portability` in the pass's report) says of static activations on int8 weights: wherever the file
/// is deployed, not only where it was validated (export validation names it too where it sees it happen).
inline constexpr const char* kStaticInt8WeightsNote =
    "int8 weights with static activations saturate ONNX Runtime's fused U8S8 kernel on x86 CPUs without VNNI (it sums "
    "pairs of products in int16); symmetric: false (uint8 weights, its U8U8 kernel) runs exactly there";

struct SmoothQuantOptions {
  double alpha = 0.5;  // migration strength: s_c = max|x_c|^alpha / max|W_:,c|^(1 - alpha)
  bool smooth = true;  // false: plain W8A8 (no migration), the baseline SmoothQuant improves on
  bool quantize = true;  // false: smoothing only, weights and activations left in float (for a following gptq)
  ActQuant activations = ActQuant::Dynamic;
  QuantFormat format{8, -1, true};  // the weights (per output channel by default)
  std::vector<std::string> targets = {"Linear"};
  std::vector<std::string> ignore;
  int64_t chunk = 8;
};

/// Per-channel smoothing factors of one group of layers that read the same input: max|x_c| over the calibration
/// tokens (`act_max`, [in]) and max over the group's weights of |W[:, c]| (`weight_max`, [in]); both clamped at
/// 1e-5 as the reference implementation does.
at::Tensor smoothingScales(const at::Tensor& act_max, const at::Tensor& weight_max, double alpha);

/// Block-sequential SmoothQuant over the selected linear layers with `calibration` inputs: per group of layers
/// sharing an input, the smoothing scale is folded exactly into the op producing the input (awq.h's ScaleFold; a
/// group without an exact fold keeps scale 1), the weights are RTN-quantized in `format`, and the input is
/// quantized to int8 as `activations` says. Layers that are not linear (convs) are left alone.
nlohmann::json smoothQuantModel(Graph& g, const at::Tensor& calibration, const SmoothQuantOptions& opts, at::Device device,
                                bool progress);

}  // namespace compress
