// crun_latency.h — latency of an exported file in our runtime (crt::Session, what `crun bench` measures), for
// the report's latency table.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace compress {

struct CrunLatency {
  double median_ms = 0, p90_ms = 0;
  int sparse_matmuls = 0;    // weights crun kept in its sparse form (SessionOptions::sparse auto)
  int64_t weight_bytes = 0;  // packed weight bytes a run streams
  std::string isa;           // kernel set
};

/// `runs` timed runs (after one warm-up each) of every file in `models` in crun with `threads` threads, interleaved:
/// run i of each file in turn, so that a noisy moment of a shared machine slows them alike and their ratio holds.
/// One result per file, in order. inputs must name every graph input (int64 or float32 tensors) of each file.
/// Throws Error(Data) when a file does not load or run in crun.
std::vector<CrunLatency> crunLatencies(const std::vector<std::string>& models, const std::map<std::string, at::Tensor>& inputs,
                                       int runs, int threads);

}  // namespace compress
