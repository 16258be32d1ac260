// distill.h — knowledge distillation: the uncompressed model (teacher) trains the compressed one (student)
// with LibTorch autograd through the executor, keeping its compression (masks, shapes, quantized weights).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

struct DistillOptions {
  int64_t steps = 500;          // optimizer steps (upper bound: early stopping and max_minutes may end sooner)
  int64_t batch = 16;           // sequences per step
  int64_t seq_len = 256;        // tokens per sequence
  int64_t micro_batch = 8;      // sequences per forward/backward; gradients accumulate over the batch
  double lr = 3e-3;             // peak learning rate (AdamW)
  double min_lr_ratio = 0.0;    // the cosine decays to lr * this
  int64_t warmup = 50;          // linear warm-up steps
  double weight_decay = 0.01;   // AdamW's decoupled decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double clip = 1.0;            // global gradient-norm clip (0 = off)
  double temperature = 2.0;     // softening of both distributions; the KD term is scaled by T²
  double alpha = 0.0;           // weight of cross-entropy on the data; (1 - alpha) on KL(teacher ‖ student)
  std::vector<std::string> hidden;  // linear layers (globs) whose outputs are matched by MSE
  double hidden_weight = 1.0;
  double holdout = 0.05;        // fraction of the training tokens held out for early stopping
  int64_t eval_every = 50;      // steps between held-out evaluations
  int64_t patience = 4;         // stop after this many evaluations without improvement (0 = never)
  double max_minutes = 0;       // wall-time budget for training (0 = none)
  bool teacher_cache = false;   // fixed windows, teacher logits computed once per window
  std::string teacher;          // a model path; empty = the model before the recipe's first pass
  int64_t seed = 0;
};

/// T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over positions (logits [..., vocab]).
at::Tensor kdLoss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, double temperature);

/// Trains `student` in place on random windows of `train_tokens` (1-D int64) against `teacher`.
/// Trainable: every float parameter (weights, norms, embeddings, biases); quantized weights stay frozen.
/// Pruned weights stay zero (gradients masked, masks re-applied after each step); shapes never change.
/// The weights of the best held-out evaluation are kept. Returns losses, tokens/s and what was trained.
nlohmann::json distill(Graph& student, const Graph& teacher, const at::Tensor& train_tokens, const DistillOptions& opts,
                       at::Device device, bool progress);

}  // namespace compress
