// ort_check.h — ONNX Runtime as the independent checker of every export, through its node binding
// (scripts/ort/ort_run.js, npm onnxruntime-node 1.30.0 installed by scripts/setup.sh).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>

namespace compress {

/// True when node and the onnxruntime-node package are installed; otherwise `why` says what is missing.
bool ortAvailable(std::string* why = nullptr);

/// Runs an ONNX file once in ONNX Runtime (CPU, 2 threads). `opt` is ORT's graph optimization level:
/// disabled | basic | extended | all. Returns the outputs by name. Error(Model) with ORT's message on failure.
std::map<std::string, at::Tensor> ortRun(const std::string& model, const std::map<std::string, at::Tensor>& inputs,
                                         const std::string& opt = "disabled");

struct OrtPerplexity {
  double perplexity = 0, mean_nll = 0;
  int64_t count = 0;
};
/// Perplexity of an LM export through ONNX Runtime, with compress's definition (windows of seq_len).
OrtPerplexity ortPerplexity(const std::string& model, const std::string& tokens_npy, int64_t seq_len, int64_t max_tokens,
                            const std::string& opt = "disabled");

/// Median latency of session.run in ms.
double ortLatencyMs(const std::string& model, const std::map<std::string, at::Tensor>& inputs, int runs,
                    const std::string& opt = "all", int threads = 2);

/// Writes a tensor as .npy (float32/float16/int64/int32/uint8/bool).
void writeTensorNpy(const std::string& path, const at::Tensor& t);

}  // namespace compress
