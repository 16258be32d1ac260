// magnitude_prune_test.cpp — exact sparsity per layer / row / global, masks recorded and respected.
#include "prune/magnitude_prune.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/importer.h"
#include "quant/rtn.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
Graph block() { return importTorchScript(testutil::fixture("llama_block.pt")); }
int64_t zeros(const at::Tensor& t) { return (t == 0).sum().item<int64_t>(); }
}  // namespace

TEST_CASE("per-layer magnitude pruning hits the exact sparsity and removes the smallest weights", "[prune]") {
  Graph g = block();
  Graph before = g;
  auto s = magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}});
  verify(g);
  CHECK(s["layers"].size() == 7);
  for (const auto& l : s["layers"]) {
    std::string w = l["weight"];
    const at::Tensor& t = g.initializers.at(w);
    CHECK(zeros(t) == std::llround(0.5 * t.numel()));
    CHECK(g.sparsity.at(w).mask.sum().item<int64_t>() == t.numel() - zeros(t));
    // Every kept weight is at least as large as every removed one.
    at::Tensor a = before.initializers.at(w).abs();
    at::Tensor m = g.sparsity.at(w).mask;
    CHECK(a.masked_select(m).min().item<float>() >= a.masked_select(m.logical_not()).max().item<float>());
  }
  CHECK(zeros(g.initializers.at("output.weight")) == 0);
  CHECK(s["sparsity"].get<double>() == Approx(0.5).margin(1e-3));
}

TEST_CASE("row and global scopes", "[prune]") {
  Graph g = block();
  magnitudePrune(g, {0.25, "row", {"w1", "w2"}, {}});
  at::Tensor w1 = g.initializers.at("w1.weight");
  int64_t per_row = std::llround(0.25 * w1.size(1));
  CHECK((w1 == 0).sum(1).eq(per_row).all().item<bool>());
  CHECK(zeros(g.initializers.at("wq.weight")) == 0);

  Graph h = block();
  auto s = magnitudePrune(h, {0.6, "global", {"Linear"}, {"output"}});
  CHECK(s["zeros"].get<int64_t>() == std::llround(0.6 * s["numel"].get<int64_t>()));
  // Global: per-layer sparsities differ, the total is exact.
  std::set<double> per_layer;
  for (const auto& l : s["layers"]) per_layer.insert(std::round(1000 * l["sparsity"].get<double>()));
  CHECK(per_layer.size() > 1);
}

TEST_CASE("masks survive a following rtn and pruning after quantization is refused", "[prune]") {
  Graph g = block();
  magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}});
  at::Tensor mask = g.sparsity.at("w2.weight").mask;
  RtnOptions o;
  o.format = {4, 16, false};
  o.ignore = {"output"};
  rtnQuantize(g, o);
  g.pruneUnused();
  verify(g);
  QuantizedTensor q = quantizedOf(g, "w2.weight");
  at::Tensor deq = dequantize(q);
  CHECK(deq.masked_select(mask.logical_not()).abs().max().item<float>() == 0.0f);
  CHECK_THROWS_WITH(magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}}), Contains("already quantized"));
}
