// onnx_export.h — IR to ONNX (protobuf API of Debian's ONNX 1.12). The IR already speaks ONNX, so export
// is a mapping: nodes as they are (adapted to the target opset), initializers as raw data, symbolic
// batch/sequence dims as dim_params, quantized weights in the format the user asked for:
//   int8 / per-channel        QDQ: int8|uint8 initializer -> DequantizeLinear(axis=0) -> Transpose -> MatMul
//   grouped (block) weights   com.microsoft.MatMulNBits (int4: matmulnbits, the default), or
//                             opset-21 DequantizeLinear with INT4/UINT4 (or INT8/UINT8) and block_size (int4: qdq)
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>

#include "compress/graph.h"

namespace onnx {
class ModelProto;
}

namespace compress {

struct ExportOptions {
  int opset = 17;
  std::string int4 = "matmulnbits";  // matmulnbits | qdq: how grouped (block-quantized) weights are written
  bool external_data = false;        // always write weights to <file>.data
  int64_t external_threshold = int64_t{1} << 31;  // above this many bytes of weights, use external data anyway
  std::map<std::string, std::string> metadata;    // extra metadata_props (recipe hash, ...)
  bool compact_sparse = false;  // pruned fp32/int8 linear weights as bitmask + nonzeros (export/sparse_weights.h)
  /// MatMulNBits' accuracy_level (0 unset: exact; 4: int8 activations with integer dot products, in ONNX Runtime
  /// and crun; runtime/int8_acts.h). Written on every MatMulNBits node when > 0.
  int64_t accuracy_level = 0;
};

/// Writes `g` to `path` (atomically; plus `path`.data for external data). Returns what was written:
/// opset, file bytes, external bytes, bytes per weight format, node counts.
nlohmann::json exportOnnx(const Graph& g, const std::string& path, const ExportOptions& opts = {});

/// Builds the ModelProto without writing it (tests, dumps).
void buildOnnx(const Graph& g, const ExportOptions& opts, onnx::ModelProto& model, nlohmann::json* stats = nullptr);

/// Canonical text of an ONNX file: opsets, inputs/outputs with types, initializers (dtype, dims, FNV hash
/// of their bytes, external data resolved), nodes in order with sorted attributes. For golden tests.
std::string dumpOnnxFile(const std::string& path);

/// ONNX's own checker (full check, with shape inference) for opsets it knows (<= 17 in ONNX 1.12).
/// Error(Model) with the checker's message when the file is invalid; returns false when skipped.
bool checkOnnxFile(const std::string& path);

}  // namespace compress
