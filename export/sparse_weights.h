// sparse_weights.h — the opt-in compact form of pruned weights on disk (`export: {onnx: {sparse_weights: compact}}`).
//
// ONNX's own sparse_initializer stores COO indices of at least 4 bytes per nonzero (int32; int64 by default), so a
// 50% pruned weight would be larger than dense (fp32: 4 + 4 bytes per kept value against 8 for two dense ones; int8:
// 1 + 4 against 2). The compact form stores a bitmask (1 bit per element) plus the nonzeros, and a subgraph of
// standard opset-13+ ops rebuilds the dense initializer: bits = Mod(Div(Cast(mask), [1..128]), 2),
// pos = CumSum(bits, exclusive), dense = Where(bits, Gather(values, pos), 0) (int8: Cast(Mul(...)) instead of Where,
// which ONNX Runtime does not have for int8). ONNX Runtime and crun fold that subgraph once at load, so the
// model runs as before; only the file is smaller.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

namespace compress {

/// Rewrites the float32 and int8 initializers named in `weights` whose zero fraction is at least min_zeros
/// (and whose element count is a multiple of 8, at least 1024, saving at least 2 KB) into mask + values + a
/// rebuilding subgraph placed first in the graph. Returns {"weights": n, "dense_bytes": b, "compact_bytes": c}.
nlohmann::json compactSparseWeights(onnx::GraphProto& g, const std::set<std::string>& weights, double min_zeros = 0.3);

}  // namespace compress
