// gptq_test.cpp — GPTQ against RTN on a single layer, act-order's permutation, masks, determinism.
#include "quant/gptq.h"

#include <catch2/catch.hpp>

#include "compress/calibration.h"
#include "compress/importer.h"
#include "prune/magnitude_prune.h"
#include "test_util.h"

using namespace compress;

namespace {
// Output error ‖(W - Q) X‖² for inputs X [n, in].
double outErr(const at::Tensor& w, const at::Tensor& q, const at::Tensor& x) {
  return (x.matmul((w - q).t())).pow(2).sum().item<double>();
}
}  // namespace

TEST_CASE("GPTQ beats RTN on a layer with correlated inputs, for every format", "[gptq]") {
  at::manual_seed(0);
  int64_t in = 96, out = 40, n = 2048;
  // Correlated inputs: a random mixing of independent features gives a well-conditioned, non-diagonal H.
  at::Tensor x = at::randn({n, in}).matmul(at::eye(in) + 0.3 * at::randn({in, in}));
  at::Tensor w = at::randn({out, in});
  at::Tensor h = 2.0 * x.t().matmul(x) / n;
  for (const auto& f : formatTable()) {
    if (f.bits == 8) continue;  // at 8 bits both are near exact
    INFO(f.name());
    at::Tensor q_gptq = dequantize(gptqQuantize(w, h, f, 0.01, 32, false));
    at::Tensor q_rtn = dequantize(quantizeRtn(w, f));
    CHECK(outErr(w, q_gptq, x) < outErr(w, q_rtn, x));
    at::Tensor q_ao = dequantize(gptqQuantize(w, h, f, 0.01, 32, true));
    CHECK(outErr(w, q_ao, x) < outErr(w, q_rtn, x));
  }
}

TEST_CASE("GPTQ with H = I equals RTN, with and without act-order (the permutation round-trips)", "[gptq]") {
  at::manual_seed(1);
  at::Tensor w = at::randn({16, 64});
  for (const auto& f : formatTable()) {
    INFO(f.name());
    QuantizedTensor r = quantizeRtn(w, f);
    QuantizedTensor g = gptqQuantize(w, at::eye(64), f, 0.01, 16, false);
    CHECK(at::equal(g.qdata, r.qdata));
    CHECK(at::allclose(g.scales, r.scales));
    // A diagonal H with distinct entries gives a non-trivial act-order permutation but no compensation.
    at::Tensor d = at::diag(at::linspace(0.5, 2.0, 64).flip(0).roll(7));
    QuantizedTensor a = gptqQuantize(w, d, f, 0.0, 16, true);
    CHECK(at::equal(a.qdata, r.qdata));
  }
}

TEST_CASE("GPTQ keeps pruned weights at zero and is deterministic", "[gptq]") {
  at::manual_seed(2);
  at::Tensor x = at::randn({512, 32});
  at::Tensor h = 2.0 * x.t().matmul(x) / 512;
  at::Tensor w = at::randn({8, 32});
  at::Tensor mask = at::rand({8, 32}) > 0.5;
  w = w * mask;
  QuantFormat f{4, 16, false};
  QuantizedTensor a = gptqQuantize(w, h, f, 0.01, 8, true, mask);
  QuantizedTensor b = gptqQuantize(w, h, f, 0.01, 8, true, mask);
  CHECK(at::equal(a.qdata, b.qdata));
  CHECK(at::equal(a.scales, b.scales));
  CHECK(dequantize(a).masked_select(mask.logical_not()).abs().max().item<float>() == 0.0f);
}

TEST_CASE("block-sequential capture equals a plain forward's capture when weights do not change", "[gptq][calibration]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  at::Tensor tokens = at::randint(0, 64, {6, 12}, at::kLong);
  std::vector<std::string> ws = {"wq.weight", "wo.weight", "w1.weight", "w2.weight", "output.weight"};  // no siblings
  // Naive: one full forward with hooks on every MatMul.
  std::map<std::string, at::Tensor> naive;
  std::map<std::string, std::string> weight_of;
  for (const auto& l : findLinears(g)) weight_of[g.nodes[l.node].name] = l.weight;
  Executor ex(g);
  ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>& in, const std::vector<at::Tensor>&) {
    if (weight_of.count(n.name)) naive[weight_of[n.name]] = in[0].reshape({-1, in[0].size(-1)});
  });
  ex.run1(tokens);
  auto blocks = groupIntoBlocks(g, ws);
  // No "layers.N." prefix here: blocks come from the structure, one per residual segment.
  REQUIRE(blocks.size() == 3);
  CHECK(blocks[0].weights == std::vector<std::string>{"wq.weight", "wo.weight"});
  CHECK(blocks[1].weights == std::vector<std::string>{"w1.weight", "w2.weight"});
  CHECK(blocks[2].weights == std::vector<std::string>{"output.weight"});
  for (int64_t chunk : {6, 4}) {  // one chunk (bit-exact), and two chunks of 4 + 2 sequences
    BlockRunner runner(g, tokens, chunk, at::kCPU);
    runner.advanceTo(&blocks[0]);
    for (size_t b = 0; b < blocks.size(); ++b) {
      std::vector<at::Tensor> got;
      runner.capture({blocks[b].weights[0]}, [&](const std::string&, const at::Tensor& x) { got.push_back(x); });
      INFO(blocks[b].name << ", chunk " << chunk);
      at::Tensor want = naive.at(blocks[b].weights[0]);
      if (chunk == 6) CHECK(at::equal(at::cat(got), want));
      else CHECK(at::allclose(at::cat(got), want, 1e-5, 1e-6));  // BLAS blocking differs with the batch size
      runner.advanceTo(b + 1 < blocks.size() ? &blocks[b + 1] : nullptr);
    }
  }
}

TEST_CASE("layers group into transformer blocks and shared-input steps", "[gptq][calibration][shared]") {
  if (!testutil::haveShared()) return;
  Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  auto ws = selectWeights(g, {"Linear"}, {"output"});
  auto blocks = groupIntoBlocks(g, ws);
  REQUIRE(blocks.size() == 5);
  CHECK(blocks[3].name == "layers.3");
  auto steps = sharedInputGroups(g, blocks[0]);
  REQUIRE(steps.size() == 4);
  CHECK(steps[0] == std::vector<std::string>{"layers.0.wq.weight", "layers.0.wk.weight", "layers.0.wv.weight"});
  CHECK(steps[1] == std::vector<std::string>{"layers.0.wo.weight"});
  CHECK(steps[2] == std::vector<std::string>{"layers.0.w1.weight", "layers.0.w3.weight"});
  CHECK(steps[3] == std::vector<std::string>{"layers.0.w2.weight"});
}
