// importer.h — TorchScript (.pt) to IR. Maps the aten ops of traced or scripted transformer LMs, MLPs and
// small CNNs to ONNX-semantics IR nodes; shape arithmetic from aten::size stays dynamic (Shape/Gather),
// parameters keep their names and tied weights stay tied.
#pragma once

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

struct InputSpec {
  std::string name;  // matched against the TorchScript forward() argument names
  DType dtype = DType::Int64;
  Shape shape;  // symbolic "batch"/"seq" dims stay dynamic
};

struct ImportOptions {
  /// One spec per forward() argument, in order or by name. Empty: every argument is int64 [batch, seq]
  /// (token ids), which is what causal LMs take.
  std::vector<InputSpec> inputs;
  /// Names of the graph outputs; empty gives "logits" for one output and "output_N" for several.
  std::vector<std::string> output_names;
};

/// Loads and converts a TorchScript file. Errors: Error(Io) when the file cannot be read, Error(Model)
/// when it is not TorchScript or uses ops the importer does not map (all of them listed in one message,
/// each with its count and first source location).
Graph importTorchScript(const std::string& path, const ImportOptions& options = {});

/// The aten/prim ops the importer maps, sorted (for `compress passes --ops` and docs).
std::vector<std::string> importableOps();

}  // namespace compress
