// serialize.h — the compressed model on disk (model.cir): the whole IR with its tensors, quantized forms
// and masks, so a later `compress export` (or any tool) picks up exactly where a run stopped.
// Layout: "CMPIR001", uint64 header length, JSON header, then 64-byte-aligned raw tensor data. The header
// carries a hash of the data, so truncation and corruption are detected on load.
#pragma once

#include <string>

#include "compress/graph.h"

namespace compress {

/// Writes atomically (temp file + rename).
void saveGraph(const Graph& g, const std::string& path);
/// Error(Io) when unreadable, Error(Model) naming the problem when the file is not a valid model.cir.
Graph loadGraph(const std::string& path);

}  // namespace compress
