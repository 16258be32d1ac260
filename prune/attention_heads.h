// attention_heads.h — find attention units in the IR and remove whole heads (query groups under GQA).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

/// An attention unit: projections whose output rows split into `groups` contiguous slices (q, k, v: one
/// slice per key/value head; a query slice holds the heads of that kv head's group), and the output
/// projection `o` whose input columns split the same way. Found by following the head axis from the
/// projections' outputs through reshapes, transposes, RoPE, the GQA repeat, the two attention MatMuls and
/// softmax to `o`; everything it meets that fixes the axis size (shape constants, biases) is recorded so
/// removing heads can update it.
struct AttentionUnit {
  std::vector<std::string> projections;  // q, k, v weights (output rows split into `groups`)
  std::string o;                         // output projection weight (input columns split into `groups`)
  int64_t groups = 0;                    // key/value heads (= heads without GQA)
  int64_t heads = 0;                     // query heads
  /// A fused projection (GPT-2's c_attn, [q; k; v] rows) is split into `parts` equal parts along the head
  /// axis after it; every value before that Split holds `parts` copies of the head layout, one after the other.
  int64_t parts = 1;
  struct Slice {                         // an initializer input sliced with the heads (a bias)
    int node, input, dim;
    int64_t parts = 1;                   // copies of the head layout along `dim` (a fused bias: 3)
  };
  struct Resize {                        // a shape constant whose element follows the number of heads
    int node, input;
    int64_t element;
    int64_t size = 0;                    // > 0: input `input` is a computed 1-element size of `size` (the
  };                                     // width of a tensor without heads): replaced by the new constant
  std::vector<Slice> slices;
  std::vector<Resize> resizes;
};

/// Every attention unit whose output projection is among `o_weights`: separate q/k/v projections sharing an
/// input, or one fused projection whose output a Split cuts into equal parts along the head axis. Units the
/// analysis cannot follow (heads merged with the batch axis, ops that mix heads) are left out; `why`
/// collects the reasons when given.
std::vector<AttentionUnit> findAttentionUnits(const Graph& g, const std::vector<std::string>& o_weights,
                                              std::vector<std::string>* why = nullptr);

/// Keeps the key/value groups `keep` (sorted indices in [0, groups)) of a unit: slices q/k/v rows, o columns,
/// biases and masks, and rewrites the shape constants. Value shapes must be re-inferred afterwards.
void keepHeadGroups(Graph& g, const AttentionUnit& u, const at::Tensor& keep);

}  // namespace compress
