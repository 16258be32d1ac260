// fp16_test.cpp — the fp16 pass: block list, Casts at precision borders, clamping, retargeted Casts.
#include "quant/fp16.h"

#include <catch2/catch.hpp>

#include "compress/executor.h"
#include "compress/importer.h"
#include "ir_fixtures.h"
#include "test_util.h"

using namespace compress;

TEST_CASE("fp16 keeps the block list in float32 and the outputs close", "[fp16]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  Graph ref = g;
  auto s = convertToFp16(g);
  verify(g);
  CHECK(g.initializers.at("wq.weight").scalar_type() == at::kHalf);
  CHECK(g.values.at("logits").dtype == DType::Float32);  // keep_io_types
  for (const auto& n : g.nodes) {
    if (n.op == "Softmax" || n.op == "ReduceMean" || n.op == "Pow") {
      INFO(n.name);
      CHECK(g.values.at(n.outputs[0]).dtype == DType::Float32);
    }
    if (n.op == "MatMul") CHECK(g.values.at(n.outputs[0]).dtype == DType::Float16);
  }
  CHECK(s["casts_inserted"].get<int64_t>() > 0);
  at::Tensor x = at::randint(0, 64, {2, 12}, at::kLong);
  at::Tensor a = Executor(ref).run1(x), b = Executor(g).run1(x);
  CHECK(b.scalar_type() == at::kFloat);
  double rel = ((a - b).abs().max() / a.abs().max()).item<double>();
  CHECK(rel < 1e-2);
  CHECK(rel > 0);
}

TEST_CASE("fp16 clamps weights beyond the fp16 range and counts them, Casts to float32 are retargeted", "[fp16]") {
  at::Tensor w = at::ones({2, 4});
  w[0][0] = 1e6;
  w[1][3] = -7e4;
  Graph g = testutil::linearGraph(w, true);
  // An existing Cast to float32 inside the fp16 region.
  g.nodes.push_back(Node{"Cast", "", "c", {"out"}, {"out32"}, {{"to", int64_t{1}}}, ""});
  g.values["out32"] = g.values["out"];
  g.outputs = {"out32"};
  auto s = convertToFp16(g);
  verify(g);
  CHECK(s["clamped_values"] == 2);
  CHECK(s["casts_retargeted"] == 1);
  CHECK(g.initializers.at("w")[0][0].item<float>() == 65504.0f);
  CHECK(g.initializers.at("w")[1][3].item<float>() == -65504.0f);
  at::Tensor y = Executor(g).run1(at::ones({1, 4}));
  CHECK(y.scalar_type() == at::kFloat);  // the output boundary Cast brings it back to float32
  CHECK(y[0][0].item<float>() == Approx(65504.0f + 3.0f).epsilon(1e-3));
}
