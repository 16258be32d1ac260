// smoothquant_test.cpp — SmoothQuant W8A8: smoothing is exact in float, W8A8 with smoothing beats it without,
// the activation QDQ the pass writes runs the same in the executor, ONNX Runtime and crun, and the stories model
// keeps its perplexity.
#include "quant/smoothquant.h"

#include <cstring>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "runtime/crt.h"
#include "test_util.h"

#include <catch2/catch.hpp>  // after the LibTorch headers (glog defines CHECK)

using namespace compress;

namespace {

at::Tensor randomTokens(int64_t n, int64_t len, int seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, 64, {n, len}, gen, at::TensorOptions().dtype(at::kLong));
}

/// The llama block fixture with outlier channels in both norms' outputs (as trained LLMs have them).
Graph outlierBlock() {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  for (const char* norm : {"attention_norm.weight", "ffn_norm.weight"}) {
    at::Tensor w = g.initializers.at(norm).clone();
    w.index_put_({at::indexing::Slice(0, 3)}, w.index({at::indexing::Slice(0, 3)}) * 30);
    g.initializers[norm] = w;
  }
  return g;
}

/// The pass on the outlier fixture, exported; the executor's logits for `tokens` in `want`.
std::string exportW8A8(ActQuant mode, const at::Tensor& tokens, at::Tensor* want, Graph* out = nullptr) {
  Graph g = outlierBlock();
  SmoothQuantOptions o;
  o.activations = mode;
  o.ignore = {"output"};
  smoothQuantModel(g, randomTokens(8, 16, 7), o, at::kCPU, false);
  verify(g);
  *want = Executor(g).run1(tokens);
  const std::string path = testutil::tempDir("") + "/w8a8.onnx";
  exportOnnx(g, path, {});
  if (out) *out = std::move(g);
  return path;
}

double relDiff(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kFloat) - b.to(at::kFloat)).abs().max() / b.abs().max().clamp_min(1e-12)).item<double>();
}

}  // namespace

TEST_CASE("SmoothQuant smoothing leaves the float model's outputs unchanged", "[smoothquant]") {
  Graph g = outlierBlock();
  Graph ref = g.clone();
  const at::Tensor tokens = randomTokens(8, 16, 42);
  SmoothQuantOptions o;
  o.quantize = false;
  o.ignore = {"output"};
  auto s = smoothQuantModel(g, tokens, o, at::kCPU, false);
  verify(g);
  CHECK_FALSE(at::equal(g.initializers.at("attention_norm.weight"), ref.initializers.at("attention_norm.weight")));
  CHECK_FALSE(at::equal(g.initializers.at("wq.weight"), ref.initializers.at("wq.weight")));
  int folded = 0;
  for (const auto& gr : s["groups"]) {
    folded += gr["fold"] != "none";
    if (gr["fold"] != "none") CHECK(gr["act_spread_after"].get<double>() < gr["act_spread_before"].get<double>());
  }
  CHECK(folded == 3);  // q/k/v, w1/w3 into the norms, w2 into w3's rows; wo has no exact fold
  const at::Tensor a = Executor(ref).run1(tokens), b = Executor(g).run1(tokens);
  CHECK(((a - b).abs().max() / a.abs().max()).item<double>() < 1e-5);
}

TEST_CASE("smoothing scales follow the paper's formula", "[smoothquant]") {
  const at::Tensor act = at::tensor({4.0f, 0.0f, 100.0f}), wt = at::tensor({1.0f, 2.0f, 0.25f});
  const at::Tensor s = smoothingScales(act, wt, 0.5);
  CHECK(s[0].item<float>() == Approx(2.0f));
  CHECK(s[1].item<float>() == Approx(std::sqrt(1e-5f) / std::sqrt(2.0f)));  // a silent channel: clamped, not 0
  CHECK(s[2].item<float>() == Approx(20.0f));
  CHECK(smoothingScales(act, wt, 1.0)[2].item<float>() == Approx(100.0f));
  CHECK(smoothingScales(act, wt, 0.0)[2].item<float>() == Approx(4.0f));
}

TEST_CASE("W8A8 activation QDQ runs the same in ONNX Runtime as in the executor", "[smoothquant][ort]") {
  std::string why;
  if (!testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")")) return;
  const at::Tensor tokens = randomTokens(2, 16, 3);
  for (ActQuant mode : {ActQuant::Dynamic, ActQuant::Static}) {
    INFO((mode == ActQuant::Dynamic ? "dynamic" : "static"));
    at::Tensor want;
    const std::string path = exportW8A8(mode, tokens, &want);
    for (const char* opt : {"disabled", "all"}) {
      INFO(opt);
      const at::Tensor got = ortRun(path, {{"tokens", tokens}}, opt).begin()->second;
      CHECK(relDiff(got, want) < 1e-4);
    }
  }
}
