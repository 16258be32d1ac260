// sparsegpt.h — SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774), optionally with joint quantization.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "compress/graph.h"
#include "prune/sparsity.h"
#include "quant/format.h"

namespace compress {

struct SparseGptOptions {
  double sparsity = 0.5;
  PatternSpec pattern;               // N:M: N of every M chosen as the sweep reaches the group
  int64_t block_size = 128;          // columns per adaptive-mask block and lazy batch update
  double damp = 0.01;                // fraction of mean(diag H) added to the diagonal
  std::optional<QuantFormat> quant;  // joint quantization in the same sweep
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  int64_t chunk = 8;
};

struct SparseGptResult {
  at::Tensor weight;  // the pruned (and, with quant, dequantized) weight, float32
  at::Tensor mask;    // true = kept
  std::optional<QuantizedTensor> quantized;
  double error = 0;   // Σ (w - q)² / [H⁻¹]_ii², the OBS loss the sweep paid
};

/// SparseGPT on one weight W [out, in] with the Hessian H [in, in] = 2/n Σ x xᵀ of its inputs. Columns are
/// visited in order through the upper Cholesky factor of H⁻¹; at the start of each block of `block_size`
/// columns the mask of the block is chosen by the OBS saliency w² / [H⁻¹]_jj² (unstructured: the lowest
/// `sparsity` of the block, over all rows; N:M: the N lowest of each group of M in a row when the sweep
/// reaches the group), and each column's pruning (and rounding) error is spread over the later columns.
/// `mask0` (optional, true = kept) keeps weights an earlier pass pruned at zero.
SparseGptResult sparseGpt(const at::Tensor& w, const at::Tensor& h, const SparseGptOptions& o,
                          const at::Tensor& mask0 = at::Tensor());

/// Block-sequential SparseGPT over the selected linear weights with `calibration` inputs.
nlohmann::json sparseGptPrune(Graph& g, const at::Tensor& calibration, const SparseGptOptions& opts, at::Device device,
                              bool progress);

}  // namespace compress
