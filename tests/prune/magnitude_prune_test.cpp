// magnitude_prune_test.cpp — exact sparsity per layer / row / global, masks recorded and respected.
#include "prune/magnitude_prune.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/importer.h"
#include "prune/sparsity.h"
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
  auto s = magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}});
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
  magnitudePrune(g, {0.25, "row", {"w1", "w2"}, {}, {}});
  at::Tensor w1 = g.initializers.at("w1.weight");
  int64_t per_row = std::llround(0.25 * w1.size(1));
  CHECK((w1 == 0).sum(1).eq(per_row).all().item<bool>());
  CHECK(zeros(g.initializers.at("wq.weight")) == 0);

  Graph h = block();
  auto s = magnitudePrune(h, {0.6, "global", {"Linear"}, {"output"}, {}});
  CHECK(s["zeros"].get<int64_t>() == std::llround(0.6 * s["numel"].get<int64_t>()));
  // Global: per-layer sparsities differ, the total is exact.
  std::set<double> per_layer;
  for (const auto& l : s["layers"]) per_layer.insert(std::round(1000 * l["sparsity"].get<double>()));
  CHECK(per_layer.size() > 1);
}

TEST_CASE("masks survive a following rtn and pruning after quantization is refused", "[prune]") {
  Graph g = block();
  magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}});
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
  CHECK_THROWS_WITH(magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}}), Contains("already quantized"));
}

TEST_CASE("N:M magnitude pruning: every group of M has at least N zeros, the N smallest", "[prune][nm]") {
  for (auto [n, m] : {std::pair{2, 4}, {4, 8}, {1, 4}, {3, 8}}) {
    Graph g = block();
    Graph before = g.clone();
    MagnitudePruneOptions o;
    o.pattern = parsePattern(std::to_string(n) + ":" + std::to_string(m));
    o.ignore = {"output"};
    auto s = magnitudePrune(g, o);
    verify(g);
    INFO(n << ":" << m);
    CHECK(s["pattern"] == std::to_string(n) + ":" + std::to_string(m));
    for (const auto& l : s["layers"]) {
      std::string w = l["weight"];
      at::Tensor t = g.initializers.at(w);
      CHECK(g.sparsity.at(w).pattern == SparsityPattern::NofM);
      CHECK(g.sparsity.at(w).n == n);
      int64_t cols = t.size(1), full = cols / m * m;
      REQUIRE(full == cols);  // the fixture's widths (32, 48) are multiples of 4 and 8
      at::Tensor groups = (t == 0).reshape({t.size(0), cols / m, m}).sum(2);
      CHECK(groups.eq(n).all().item<bool>());  // exactly N (the fixture has no zero weights of its own)
      // Within each group the pruned weights are the N smallest.
      at::Tensor a = before.initializers.at(w).abs().reshape({t.size(0), cols / m, m});
      at::Tensor keep = g.sparsity.at(w).mask.reshape({t.size(0), cols / m, m});
      at::Tensor kept_min = at::where(keep, a, at::full_like(a, 1e30)).amin(2);
      at::Tensor pruned_max = at::where(keep, at::full_like(a, -1.0), a).amax(2);
      CHECK((kept_min >= pruned_max).all().item<bool>());
    }
  }
}

TEST_CASE("N:M on widths that are not a multiple of M prunes floor(N*r/M) of the last r", "[prune][nm]") {
  at::manual_seed(3);
  at::Tensor s = at::rand({5, 14});
  at::Tensor k = keepNofM(s, 2, 4);  // groups 4+4+4 and a tail of 2: 2+2+2+1 zeros per row
  CHECK((k.logical_not().sum(1) == 7).all().item<bool>());
  CHECK(k.narrow(1, 12, 2).logical_not().sum(1).eq(1).all().item<bool>());
  at::Tensor k8 = keepNofM(s, 4, 8);  // one group of 8 (4 zeros) and a tail of 6 (3 zeros)
  CHECK((k8.logical_not().sum(1) == 7).all().item<bool>());
}

TEST_CASE("bad patterns are clear configuration errors", "[prune][nm]") {
  CHECK(parsePattern("unstructured").pattern == SparsityPattern::Unstructured);
  CHECK(parsePattern(" 2 : 4 ").m == 4);
  CHECK_THROWS_WITH(parsePattern("4:2"), Contains("0 < N < M"));
  CHECK_THROWS_WITH(parsePattern("0:4"), Contains("0 < N < M"));
  CHECK_THROWS_WITH(parsePattern("2of4"), Contains("'unstructured' or 'N:M'"));
}

TEST_CASE("scope matrix and its synonym layer agree, pruning twice never revives weights", "[prune]") {
  Graph a = block(), b = block();
  magnitudePrune(a, {0.5, "matrix", {"Linear"}, {"output"}, {}});
  magnitudePrune(b, {0.5, "layer", {"Linear"}, {"output"}, {}});
  CHECK(at::equal(a.initializers.at("w1.weight"), b.initializers.at("w1.weight")));
  at::Tensor first = a.sparsity.at("w1.weight").mask.clone();
  MagnitudePruneOptions o;
  o.pattern = parsePattern("2:4");
  o.ignore = {"output"};
  magnitudePrune(a, o);  // 2:4 on top of 50%: the earlier zeros stay
  at::Tensor now = a.sparsity.at("w1.weight").mask;
  CHECK((now & first.logical_not()).sum().item<int64_t>() == 0);
  verify(a);
}
