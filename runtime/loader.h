// loader.h — reading and preparing an ONNX file (loader.cpp).
#pragma once

#include <string>

#include "runtime/internal.h"

namespace crt::detail {

class ThreadPool;
struct Kernels;

/// Parses, validates and prepares the graph (fold, pack, mark static nodes, liveness). Everything a
/// file says is checked before it is trusted; failures are ModelError / IoError / DataError.
Graph loadGraph(const std::string& path, const Limits& limits, ThreadPool& pool, const Kernels& k, SessionInfo& info);
/// The same from bytes in memory; `name` labels errors, external data is read from `model_dir` (resolved,
/// no trailing slash; empty: external data is refused).
Graph loadGraphBytes(const std::string& bytes, const std::string& name, const std::string& model_dir, const Limits& limits,
                     ThreadPool& pool, const Kernels& k, SessionInfo& info);

/// Drops nodes nothing needs (DequantizeLinear nodes packed into their MatMul, QuantizeLinear pairs fused into it)
/// and renumbers the producers.
void pruneUnused(Graph& g);
/// Common subexpressions: a node with the op, attributes and inputs of an earlier one (constants compared by
/// content) reads that node's outputs instead, so pruneUnused drops it; graph outputs keep their nodes. Per-layer
/// copies of the same position arithmetic (HF LLaMA's and NeoX's rotary tables, masks) run once. Returns the nodes
/// merged; run pruneUnused after a non-zero result.
int mergeDuplicates(Graph& g);
/// Marks the nodes that run once per memory plan and computes liveness (again after a graph rewrite).
void prepareRuns(Graph& g);

}  // namespace crt::detail
