// crun_latency.h — latency of an exported file in our runtime (crt::Session, what `crun bench` measures), for
// the report's latency table.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace compress {

struct CrunLatency {
  double median_ms = 0, p90_ms = 0;
  int sparse_matmuls = 0;    // weights crun kept in its sparse form (SessionOptions::sparse auto)
  int64_t weight_bytes = 0;  // packed weight bytes a run streams
  std::string isa;           // kernel set
};

/// `runs` timed runs (after one warm-up) of `model` in crun with `threads` threads. inputs must name every graph
/// input (int64 or float32 tensors). Throws Error(Data) when the file does not load or run in crun.
CrunLatency crunLatency(const std::string& model, const std::map<std::string, at::Tensor>& inputs, int runs, int threads);

}  // namespace compress
