// eval.h — accuracy metrics: perplexity (causal LM), top-1 (classifier), cosine similarity to the
// uncompressed model's outputs (embedding / generic).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "compress/executor.h"
#include "compress/npy.h"
#include "compress/task.h"  // degradation(): by the metric's direction

namespace compress {

/// Non-overlapping scoring windows: window i feeds tokens [T*i, T*i+T) and is scored on the next token
/// at every position. `max_tokens` scored tokens (0: as many whole windows as the stream allows).
struct LmWindows {
  at::Tensor inputs, targets;  // [N, T] int64
};
LmWindows makeWindows(const std::vector<int64_t>& stream, int64_t seq_len, int64_t max_tokens);

/// `samples` sequences of `seq_len` tokens at seeded random offsets (sequences may span paragraphs).
at::Tensor sampleSequences(const std::vector<int64_t>& stream, int64_t samples, int64_t seq_len, int64_t seed);
/// The first samples * seq_len tokens of the stream as [samples, seq_len] (the GPTQ/AWQ reference setup).
at::Tensor consecutiveSequences(const std::vector<int64_t>& stream, int64_t samples, int64_t seq_len);

struct MetricResult {
  std::string metric;
  double value = 0;
  int64_t count = 0;      // scored tokens / examples
  double mean_nll = 0;    // perplexity only: mean negative log-likelihood in nats
  double seconds = 0;
};

/// exp(mean NLL) over every scored token, accumulated in float64. Error(Numeric) on NaN/Inf logits.
MetricResult perplexity(Executor& ex, const LmWindows& w, int64_t batch, bool progress = true);
MetricResult top1(Executor& ex, const at::Tensor& inputs, const at::Tensor& labels, int64_t batch, bool progress = true);
/// Share of examples whose top class (argmax of the flattened output) is the reference model's: a classifier's
/// accuracy proxy when no labels are given.
MetricResult agreement(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool progress = true);
/// Mean over examples of cos(output, reference output), outputs flattened per example.
MetricResult cosine(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool progress = true);
/// The same on the sequence-mean-pooled outputs ([B, S, D] -> [B, D]): how encoders' sentence embeddings
/// are compared; outputs of rank 2 are used as they are.
MetricResult pooledCosine(Executor& ex, Executor& reference, const at::Tensor& inputs, int64_t batch, bool progress = true);

/// A tensor holding a copy of an .npy array.
at::Tensor tensorFromNpy(const NpyArray& a, const std::string& path);

}  // namespace compress
