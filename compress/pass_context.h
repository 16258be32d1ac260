// pass_context.h — what a pass gets besides the graph: calibration inputs, device, seed, progress.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

namespace compress {

struct PassContext {
  at::Device device = at::kCPU;
  int64_t seed = 0;
  /// Calibration inputs for the model's first input ([samples, seq_len] token ids for causal LMs);
  /// undefined when the recipe has no data.calibration.
  at::Tensor calibration;
  /// The training token stream (1-D int64) from data.train; undefined without it.
  at::Tensor train_tokens;
  /// The model as imported, before the recipe's first pass (the default teacher for distillation).
  const struct Graph* original = nullptr;
  bool show_progress = true;
  /// The recipe's accuracy check on its evaluation data: the relative degradation (positive = worse) of a
  /// candidate graph against the uncompressed model's baseline. Empty without data.eval. Passes that search
  /// (auto) verify their choices with it.
  std::function<double(const struct Graph&)> degradation;
};

}  // namespace compress
