// gptq.h — GPTQ weight quantization (Frantar et al. 2022, arXiv:2210.17323).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "quant/format.h"

namespace compress {

struct GptqOptions {
  QuantFormat format{4, 128, false};
  double damp = 0.01;         // fraction of mean(diag H) added to the diagonal
  int64_t block_size = 128;   // columns per lazy batch update
  bool act_order = false;     // quantize columns by decreasing diag(H)
  bool true_sequential = true;
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  int64_t chunk = 8;          // calibration sequences per forward pass
};

/// GPTQ on one weight W [out, in] with the Hessian H [in, in] of its inputs. Columns are quantized in
/// order (or by decreasing diag(H) with act_order), each one's rounding error spread over the columns not
/// yet quantized through the Cholesky factor of H⁻¹, in lazy batches of `block_size`. Groups are the
/// format's contiguous groups of the original layout; a group's scales are taken when the sweep first
/// reaches one of its columns, from its columns as updated so far, so even with act_order the result is an
/// ordinary grouped tensor with no permutation (g_idx) to store.
/// `mask` (optional, true = kept) keeps pruned weights at exactly zero.
QuantizedTensor gptqQuantize(const at::Tensor& w, const at::Tensor& h, const QuantFormat& f, double damp,
                             int64_t block_size, bool act_order, const at::Tensor& mask = at::Tensor());

/// Block-sequential GPTQ over the selected linear weights with `calibration` inputs.
nlohmann::json gptqQuantizeModel(Graph& g, const at::Tensor& calibration, const GptqOptions& opts, at::Device device,
                                  bool progress);

}  // namespace compress
