// fp16.h — FP16 mixed precision: weights and activations in float16, with a block list of ops kept in
// float32 (normalizations, softmax, reductions, exp/log and the x^2 of RMSNorm, which overflows fp16).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

/// Ops kept in float32 by default: every op of runtime/op_table.def without the Fp16 trait
/// (normalizations, softmax, reductions, exp/log, and Pow/Sqrt/Reciprocal, because RMSNorm's x² overflows).
std::vector<std::string> defaultFp16BlockOps();

struct Fp16Options {
  std::vector<std::string> block_ops = defaultFp16BlockOps();
  bool keep_io_types = true;  // float32 graph inputs/outputs with Casts at the boundary
};

/// Converts the graph: float32 initializers read only by fp16 ops become float16 (finite values beyond
/// ±65504 clamped, and counted), every other float value gets a Cast where precisions meet, existing Casts
/// to float32 inside fp16 regions are retargeted to float16. DequantizeLinear stays float32 (its scales
/// must be float32 below opset 19). Returns counts of converted tensors, inserted Casts, clamped values.
nlohmann::json convertToFp16(Graph& g, const Fp16Options& opts = {});

}  // namespace compress
