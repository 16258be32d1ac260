// validate.h — checks an exported ONNX file the way users will run it: ONNX's checker (opset <= 17),
// then ONNX Runtime on real inputs against our executor (graph optimizations off for the exact
// comparison, and at ORT's default level to report what users get), optionally perplexity through ORT.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "compress/graph.h"

namespace compress {

struct ValidationOptions {
  bool ort = true;            // compare with ONNX Runtime (skipped with a note when it is not installed)
  std::string ppl_tokens;     // .npy token stream: also compare perplexity through ORT (causal LMs)
  int64_t seq_len = 512, max_tokens = 32768;
  double executor_ppl = 0;    // our perplexity on the same windows (0: computed here)
  /// The file asks for int8 activations (MatMulNBits accuracy_level 4): ONNX Runtime then rounds activations as
  /// the executor does not, so outputs are held to kInt8ActOutputTolerance relative and perplexity to
  /// kInt8ActPerplexityTolerance, and the difference is reported as the cost of int8 compute. A graph that quantizes
  /// activations itself (QuantizeLinear: SmoothQuant's W8A8) is held to the same bounds: rounding is discontinuous,
  /// so last-bit differences between two correct implementations can move an activation by one step.
  bool int8_activations = false;
};

/// Bounds for a file computed with int8 activations (measured on stories260K int4-g32: outputs 1.6e-2 of the
/// largest logit, perplexity +0.04%; runtime/int8_acts.h bounds the per-output error).
constexpr double kInt8ActOutputTolerance = 5e-2;
constexpr double kInt8ActPerplexityTolerance = 1e-2;

/// An x86-64 CPU without integer dot products (AVX-512 VNNI or AVX-VNNI), where ONNX Runtime's U8S8 kernels sum
/// pairs of products in 16 bits and saturate on full-range int8 weights; false elsewhere.
bool x86WithoutVnni();

/// Real inputs for a validation run: token ids (from `tokens_npy` when given, else seeded random ids below
/// the vocabulary size read off the logits) shaped [batch, seq] for int inputs; seeded normals otherwise.
/// A cached decoder's past.N.key/value inputs (their "past" dim) get `past_len` seeded random positions.
std::map<std::string, at::Tensor> validationInputs(const Graph& g, const std::string& tokens_npy, int64_t batch = 2,
                                                   int64_t seq = 64, int64_t past_len = 3);

/// Validates `onnx_path` (exported from `g`) on `inputs`. Returns the measurements; throws Error(Model)
/// when the checker rejects the file or ORT's outputs differ beyond the tolerance: max |diff| <= 1e-4
/// (fp32 and dequantized weights), <= 1e-2 relative to the output's max |value| (fp16), perplexity
/// within 0.1%. ORT at its default level is reported, not gated (the file is right; its fused kernels on this CPU
/// are what differs): beyond the same tolerance, or 0.1% of perplexity off the exact run, `onnxruntime.warning` says
/// so, with the cause and the fix where it is known.
nlohmann::json validateExport(const Graph& g, const std::string& onnx_path,
                              const std::map<std::string, at::Tensor>& inputs, const ValidationOptions& opts = {});

}  // namespace compress
