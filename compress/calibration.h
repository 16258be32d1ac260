// calibration.h — block-sequential calibration for GPTQ, AWQ and friends.
// Linear and conv weights are grouped into blocks by the graph's structure: the residual stream between
// one residual Add and the next (a transformer's attention or MLP half, a ResNet block), whatever the
// parameters are called; the halves of one numbered layer ("layers.N.", "h.N.") stay one block.
// The calibration inputs run once up to block 0; the values live at that boundary are kept, and each
// step runs only from the current boundary: to a layer of the block (to capture its input), or through
// the whole block (to move the boundary on, with the block's weights as the pass has just left them). So
// the cost is O(blocks) block-forwards and only one block's activations are alive at a time.
#pragma once

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compress/executor.h"
#include "compress/graph.h"

namespace compress {

struct Block {
  std::string name;                  // "layers.3", or "block 4 (<first weight>)" for unnumbered names
  std::vector<std::string> weights;  // linear and conv weights in graph order
  int start = 0;                     // graph node index where the block's residual segment begins
};

/// The matrix a conv multiplies: the im2col columns of its input x ([B, C, H, W] or [B, C, L]) as
/// [B·positions, C·k...], in the order of weightMatrix(w) (ONNX pads, strides and dilations honoured).
at::Tensor convColumns(const Node& n, const at::Tensor& x, const at::Tensor& w);

/// Removes grouped and depthwise convs from `weights` (their groups read different inputs, so one
/// Hessian or activation norm does not describe them), listing each with the reason in `skipped`.
void dropGroupedConvs(const Graph& g, std::vector<std::string>& weights, nlohmann::json* skipped);

/// Groups `weights` (linear or conv weights) into blocks: residual segments (see the top of this file).
std::vector<Block> groupIntoBlocks(const Graph& g, const std::vector<std::string>& weights);

/// Sub-groups of a block that share one input, in the order a true-sequential pass quantizes them: q/k/v
/// (one input), then o, then w1/w3, then w2 — in general, weights whose MatMuls read the same activation.
std::vector<std::vector<std::string>> sharedInputGroups(const Graph& g, const Block& b);

/// Runs the calibration set block by block. Weights may be changed in place between calls (the
/// executor's folded transposes are views of them); structural changes need a new BlockRunner.
class BlockRunner {
 public:
  /// `inputs`: [samples, seq] token ids (or the model's single input), run in chunks of `chunk` samples.
  BlockRunner(const Graph& g, const at::Tensor& inputs, int64_t chunk, at::Device device);

  /// Calls fn(weight, x) with the input x ([tokens, in], float32) of every MatMul of `weights` (its output
  /// [tokens, out] with `outputs`; for a conv its im2col columns [positions, in·k], outputs [positions,
  /// out]), for every chunk, running from the current boundary only as far as the
  /// last of them.
  void capture(const std::vector<std::string>& weights,
               const std::function<void(const std::string& weight, const at::Tensor& x)>& fn, bool outputs = false);
  /// Moves the boundary to the start of `next` (or to the end of the graph when null), running the nodes
  /// between with the current weights.
  void advanceTo(const Block* next);
  /// The position where block `b` starts (first node reading one of its parameters or its MatMuls).
  int boundaryOf(const Block& b) const;
  int64_t forwardNodes() const { return nodes_run_; }  // nodes executed so far, for the report

 private:
  const Graph& g_;
  std::unique_ptr<Executor> ex_;
  std::vector<Executor::Env> envs_;  // one per chunk, at position boundary_
  int boundary_ = 0;
  int64_t nodes_run_ = 0;
  std::map<std::string, std::string> matmul_of_;  // weight -> MatMul node name
};

/// Runs `fn(block)` for every block of `weights` in graph order with the calibration boundary at the block's
/// start (capture from `runner` inside fn), then moves on through the block as fn left its weights. With a
/// progress line named `name`. Returns the runner's forward-node count.
int64_t forEachBlock(const Graph& g, const at::Tensor& calibration, const std::vector<std::string>& weights, int64_t chunk,
                     at::Device device, const char* name, bool progress,
                     const std::function<void(const Block& b, BlockRunner& runner)>& fn);

/// Accumulates Σ x_c² (float64) per input channel of several layers' inputs: ‖X_c‖₂ for Wanda-style scores.
struct ChannelNormAccumulator {
  std::map<std::string, at::Tensor> sumsq;
  void add(const std::string& weight, const at::Tensor& x);  // x [tokens, in]
  at::Tensor norms(const std::string& weight) const;         // ‖X_c‖₂ [in], float32
};

/// Accumulates H = 2/n Σ x xᵀ (float64) of a layer's inputs.
struct HessianAccumulator {
  at::Tensor h;  // [in, in] float64
  int64_t n = 0;
  void add(const at::Tensor& x);  // x [tokens, in]
  at::Tensor hessian() const;     // 2/n Σ x xᵀ as float32
};

}  // namespace compress
