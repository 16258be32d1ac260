// channel_prune.h — channel pruning with dependency groups (the DepGraph idea, Fang et al. 2023): the
// output channels of a conv or linear layer are followed through the graph to every tensor that must
// shrink with them — BatchNorm/LayerNorm parameters, depthwise convs, the input columns of the layers
// that read them, biases and per-channel constants — and channels tied by residual adds, multiplications
// (squeeze-excitation) and concatenations are removed together. Removing a channel removes it everywhere,
// so the result is a smaller dense model: fewer parameters and MACs, and it exports and runs as any other.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

/// What a sliced tensor is to its channels: a weight whose norm says how much a channel matters (conv and
/// linear weights, normalization scales), or other per-channel data (biases, running statistics, constants).
enum class ChannelRole { Weight, Other };

/// One tensor sliced along `axis` with the channels: index i of that axis belongs to channel `cls[i]`
/// (the channel ids of ChannelAnalysis; a flattened [C·H·W] axis repeats each channel H·W times).
struct ChannelSlice {
  std::string tensor;
  int64_t axis = 0;
  std::vector<int> cls;
  ChannelRole role = ChannelRole::Other;
  /// For the input columns of a layer: the node that reads the channels and the channel axis of its
  /// input 0 (activation importance is measured there); -1 otherwise.
  int reader = -1;
  int64_t reader_axis = -1;
};

/// A set of channels that is pruned with one ratio: the output channels of one layer, or of several
/// layers whose outputs are added or multiplied together (a residual stage).
struct ChannelGroup {
  std::vector<std::string> producers;  // weights whose output channels these are
  std::vector<int> channels;           // channel ids
};

/// A shape constant whose element is a channel count (GPT-2's `view(*size_out)` with `nf`): element `index`
/// of input `input` of node `node` becomes the number of kept channels among `cls`.
struct ShapeConst {
  int node = -1;
  size_t input = 0;
  int64_t index = 0;
  std::vector<int> cls;
};

struct ChannelAnalysis {
  std::vector<ChannelSlice> slices;
  std::vector<std::pair<int, std::vector<int>>> depthwise;  // conv node -> channel id per group
  std::vector<ShapeConst> shape_consts;
  std::vector<ChannelGroup> groups;                         // prunable groups
  std::vector<std::string> frozen;  // one line per group that must stay whole, saying why
  int channels = 0;                 // number of channel ids
};

/// Traces the channels of every layer selected by `targets`/`ignore` (Linear, Conv, or globs; a group is
/// prunable when all its producers are selected). Channels that reach a graph output, an op that mixes
/// channels (reshapes into heads, transposes into matmuls, grouped convs, GroupNorm, slicing the channel
/// axis) or a tensor whose channels are not traced are frozen, with the reason in `frozen`.
ChannelAnalysis findChannelGroups(const Graph& g, const std::vector<std::string>& targets, const std::vector<std::string>& ignore);

/// Removes the channels `removed` (channel ids of `a`, found on this graph) from every tensor that holds
/// them and updates depthwise convs' `group`. Value shapes are not re-inferred (channelPrune does that).
void removeChannels(Graph& g, const ChannelAnalysis& a, const std::set<int>& removed);

/// Multiply-accumulates of one run of the graph on `input` (its first input; further inputs get their
/// defaults), divided by the batch size: convs, transposed convs, matmuls and Gemm.
int64_t macsPerSample(const Graph& g, const at::Tensor& input);

struct ChannelPruneOptions {
  double ratio = 0.3;               // fraction of each group's channels to remove
  double target_macs = 0;           // > 0: smallest uniform ratio reaching this many MACs per sample (<= 1: fraction of the model's)
  double target_params = 0;         // > 0: the same for parameters
  std::string score = "activation"; // activation: ‖x_c‖·‖W[:, c]‖ at the readers; magnitude: weight norms (no data)
  int64_t multiple_of = 1;          // kept channels per group rounded up to a multiple of this
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
  int64_t chunk = 8;                // calibration samples per forward pass
};

/// Scores channels (activation scores from `calibration`, which may be undefined for magnitude), removes
/// the lowest-scored `ratio` of every group (or the ratio that meets a target), re-infers value shapes and
/// verifies the graph. Returns per-group counts, parameters and MACs before/after, and the frozen groups.
nlohmann::json channelPrune(Graph& g, const at::Tensor& calibration, const ChannelPruneOptions& opts, at::Device device);

}  // namespace compress
