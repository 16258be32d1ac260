// onnx_import.h — ONNX (.onnx, opsets 13-21) to IR. The IR speaks ONNX, so import is mostly a copy:
// initializers become tensors under their own names (one initializer read twice stays one weight: tied),
// nodes keep their op types and attributes (adapted to the IR's opset-17 forms), symbolic dims become the
// IR's batch/seq (or height/width) symbols, and Gemm with a constant weight becomes the MatMul(x,
// Transpose(W)) [+ Add(bias)] form every pass recognises as a linear layer.
#pragma once

#include <string>

#include "compress/graph.h"
#include "compress/importer.h"

namespace compress {

/// Loads an .onnx file (external data beside it, inside its folder). Errors: Error(Io) for unreadable
/// files, Error(Model) for what is not ONNX or uses ops/types/opsets the IR lacks (all listed in one message).
/// `options.inputs` may name each input's dims; otherwise dim 0 is "batch", dim 1 of integer [b, s] and
/// float [b, s, d] inputs is "seq", dims 2-3 of a float [b, c, h, w] input are "height"/"width".
Graph importOnnx(const std::string& path, const ImportOptions& options = {});

}  // namespace compress
