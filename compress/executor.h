// executor.h — runs the IR with ATen ops on CPU or CUDA. Hooks see every node's inputs and outputs
// (calibration statistics, activation capture). Subgraphs that depend only on initializers (weight
// transposes, dequantization) are folded once at construction unless training needs them live.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

/// Runs one IR node on ATen tensors with ONNX (opset 17) semantics. Throws Error(Model) for an op the
/// executor does not implement and Error(Data) for inputs that violate the op's contract.
std::vector<at::Tensor> runNode(const Node& n, const std::vector<at::Tensor>& inputs);
/// True when runNode implements `op` (domain "" only).
bool isSupportedOp(const std::string& op);
/// Every op type runNode implements, sorted.
std::vector<std::string> supportedOps();

struct ExecOptions {
  at::Device device = at::kCPU;
  bool fold_constants = true;  // false keeps weight-only subgraphs live (needed when weights require grad)
};

using NodeHook = std::function<void(int node_index, const Node& node, const std::vector<at::Tensor>& inputs,
                                    const std::vector<at::Tensor>& outputs)>;

class Executor {
 public:
  Executor(const Graph& g, ExecOptions opts = {});

  /// Runs the graph. Inputs are given by graph input name and moved to the executor's device; missing or
  /// extra inputs, wrong dtypes and wrong ranks are Error(Data). Returns the graph outputs in order.
  std::vector<at::Tensor> run(const std::map<std::string, at::Tensor>& inputs);
  /// Runs the graph on its first input; further inputs get their defaults (companionInputs). Returns the
  /// first output.
  at::Tensor run1(const at::Tensor& input);

  /// Values computed so far, by name: what block-sequential calibration saves at a block boundary.
  using Env = std::map<std::string, at::Tensor>;
  /// An environment holding the graph inputs (validated and moved to the device), ready for runRange.
  Env start(const std::map<std::string, at::Tensor>& inputs);
  /// Runs the non-folded nodes with positions [from, to) on `env` (hooks fire), dropping values nothing at
  /// or after `to` reads. Positions are those of liveIndexOf().
  void runRange(Env& env, int from, int to);
  /// Position of a node among the nodes that run each time, or -1 when it was folded into a constant.
  int liveIndexOf(const std::string& node_name) const;
  /// Position of the first node that runs each time at or after graph node index `node` (liveCount() when none).
  int firstLiveAtOrAfter(int node) const;
  int liveCount() const { return static_cast<int>(live_nodes_.size()); }
  /// Position of the first running node that reads `value` directly, or -1.
  int firstReaderOf(const std::string& value) const;

  int addHook(NodeHook hook);
  void removeHook(int id);
  const Graph& graph() const { return g_; }
  at::Device device() const { return opts_.device; }

 private:
  const Graph& g_;
  ExecOptions opts_;
  std::map<std::string, at::Tensor> constants_;  // initializers and folded values, on device
  std::vector<int> live_nodes_;                   // nodes that run each time
  struct Fused {
    enum Kind { Rsqrt, Silu } kind;
    std::string input;
  };
  std::map<int, Fused> fused_;  // node -> the ATen op that computes it together with its producer
  std::map<std::string, int> last_use_;           // value -> index in live_nodes_ of its last reader
  std::map<int, NodeHook> hooks_;
  int next_hook_ = 0;
};

/// Runs the graph on probe inputs of two different batch/sequence sizes and records every value's dtype
/// and shape, naming dims that follow the batch or sequence size symbolically. `input_shapes` gives each
/// input's shape (Dims named "batch"/"seq" are varied; other symbols get size 4 and 6).
void inferShapes(Graph& g, const std::map<std::string, std::pair<DType, Shape>>& input_specs);

/// inferShapes from the graph's own input specs (after a pass changed weight shapes), then verify().
void reinferShapes(Graph& g);

/// A concrete probe tensor for an input spec: zeros for integer inputs (always a valid token/index),
/// seeded normal values for floating inputs.
at::Tensor probeTensor(DType dtype, const Shape& shape, int64_t batch, int64_t seq);

/// Feeds for a model run on its first input only, as evaluation and calibration data give it: the
/// further inputs of a text model ([batch, seq] integers) get the values a tokenizer gives a full,
/// unpadded batch: attention masks all ones (padding masks zeros), position ids 0..seq-1, token type (segment) ids zeros.
/// Any other further input is Error(Data) naming it.
std::map<std::string, at::Tensor> companionInputs(const Graph& g, const at::Tensor& first);

}  // namespace compress
