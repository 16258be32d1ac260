// rtn_test.cpp — every row of the format table: round-trip error bounds, integer ranges, packing, and the
// rtn pass on a real block (quantized form in the IR, outputs close, verify holds).
#include "quant/rtn.h"

#include <catch2/catch.hpp>
#include <yaml-cpp/yaml.h>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/options.h"
#include "prune/magnitude_prune.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

TEST_CASE("RTN round trip stays within half a step for every format", "[rtn]") {
  at::manual_seed(0);
  at::Tensor w = at::randn({24, 96}) * at::linspace(0.1, 3.0, 24).unsqueeze(1);
  for (const auto& f : formatTable()) {
    INFO(f.name());
    QuantizedTensor q = quantizeRtn(w, f);
    at::Tensor deq = dequantize(q);
    int64_t g = f.group_size > 0 ? f.group_size : w.size(1);
    at::Tensor s = f.group_size > 0 ? q.scales.repeat_interleave(g, 1).narrow(1, 0, 96) : q.scales.unsqueeze(1).expand({24, 96});
    // Every element is within half a quantization step (the max element maps exactly onto the grid edge).
    CHECK(((deq - w).abs() - s * 0.5001).max().item<double>() <= 0);
    int64_t lo = f.symmetric ? -(1 << (f.bits - 1)) : 0, hi = f.symmetric ? (1 << (f.bits - 1)) - 1 : (1 << f.bits) - 1;
    CHECK(q.qdata.min().item<int64_t>() >= lo);
    CHECK(q.qdata.max().item<int64_t>() <= hi);
    CHECK(q.scales.dim() == (f.group_size > 0 ? 2 : 1));
  }
  // More bits, less error.
  double e8 = (dequantize(quantizeRtn(w, {8, 32, true})) - w).pow(2).mean().item<double>();
  double e4 = (dequantize(quantizeRtn(w, {4, 32, true})) - w).pow(2).mean().item<double>();
  double e2 = (dequantize(quantizeRtn(w, {2, 32, false})) - w).pow(2).mean().item<double>();
  CHECK(e8 < e4 / 100);
  CHECK(e4 < e2);
}

TEST_CASE("zeros quantize to exactly zero and packing is low bits first", "[rtn]") {
  at::Tensor w = at::tensor({0.0f, 1.0f, -1.0f, 0.0f, 0.5f, 0.0f, 0.25f, -0.75f}).reshape({2, 4});
  for (const auto& f : formatTable()) {
    at::Tensor deq = dequantize(quantizeRtn(w, f));
    CHECK(deq[0][0].item<float>() == 0.0f);
    CHECK(deq[1][1].item<float>() == 0.0f);
  }
  at::Tensor q = at::tensor({1, 2, 3, 15, 0, 7}, at::kByte).reshape({2, 3});
  auto packed = packBits(q, 4, false);
  REQUIRE(packed.size() == 4);  // 2 rows x ceil(3*4/8) bytes
  CHECK(packed[0] == 0x21);
  CHECK(packed[1] == 0x03);
  CHECK(packed[2] == 0x0f);
  CHECK(packed[3] == 0x07);
}

TEST_CASE("rtn pass installs DequantizeLinear weights and keeps outputs close", "[rtn]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  Graph ref = g;
  RtnOptions o;
  o.format = {8, -1, true};
  o.ignore = {"output"};
  auto s = rtnQuantize(g, o);
  g.pruneUnused();
  verify(g);
  CHECK(s["layers_quantized"] == 7);
  CHECK(g.quant.count("layers.0.wq.weight") == 0);
  CHECK(g.quant.count("wq.weight") == 1);
  CHECK(g.initializers.count("wq.weight") == 0);
  CHECK(g.initializers.at("wq.weight.qdata").scalar_type() == at::kChar);
  CHECK(g.producer("wq.weight") >= 0);
  CHECK(g.nodes[g.producer("wq.weight")].op == "DequantizeLinear");
  CHECK(s["bytes_after"].get<int64_t>() < s["bytes_before"].get<int64_t>() / 3);
  at::Tensor x = at::randint(0, 64, {2, 10}, at::kLong);
  at::Tensor a = Executor(ref).run1(x), b = Executor(g).run1(x);
  double rel = ((a - b).norm() / a.norm()).item<double>();
  CHECK(rel < 0.02);
  CHECK(rel > 0);
  // Running it again over only quantized layers is a mistake it names (a second rounding error)...
  CHECK_THROWS_WITH(rtnQuantize(g, o), Catch::Contains("every targeted weight is already quantized") && Catch::Contains("by rtn"));
  // ... while layers an earlier pass quantized are left alone among float ones.
  Graph h = importTorchScript(testutil::fixture("llama_block.pt"));
  RtnOptions first = o;
  first.targets = {"wq"};
  CHECK(rtnQuantize(h, first)["layers_quantized"] == 1);
  auto rest = rtnQuantize(h, o);
  CHECK(rest["layers_quantized"] == 6);
  CHECK(rest["layers_skipped"] == 1);
}

TEST_CASE("rtn rejects NaN weights and unmatched targets", "[rtn][errors]") {
  at::Tensor w = at::ones({2, 4});
  w[0][1] = std::nan("");
  CHECK_THROWS_WITH(quantizeRtn(w, {8, -1, true}), Contains("NaN or Inf"));
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  RtnOptions o;
  o.targets = {"layers.*.nothing"};
  CHECK_THROWS_WITH(rtnQuantize(g, o), Contains("matched no linear or conv weight"));
}

TEST_CASE("scale_dtype float16: scales fp16 holds exactly, the same error as float32 scales, huge scales refused", "[rtn]") {
  at::manual_seed(3);
  at::Tensor w = at::randn({16, 64}) * 0.05;
  w.narrow(0, 0, 1).mul_(1e-4);  // a row of near-zero weights: its scale is below fp16's normal range
  for (QuantFormat f : {QuantFormat{4, 32, false}, QuantFormat{8, -1, true}, QuantFormat{4, 16, true}}) {
    INFO(f.name());
    QuantFormat h = f;
    h.fp16_scales = true;
    CHECK(h.name() == f.name() + "-s16");
    const QuantizedTensor q32 = quantizeRtn(w, f), q16 = quantizeRtn(w, h);
    CHECK(at::equal(q16.scales, q16.scales.to(at::kHalf).to(at::kFloat)));  // exact in fp16
    CHECK(q16.scales.min().item<double>() >= 6.103515625e-05);                // normals only
    const double e32 = (dequantize(q32) - w).pow(2).mean().item<double>();
    const double e16 = (dequantize(q16) - w).pow(2).mean().item<double>();
    CHECK(e16 < e32 * 1.02);  // rounding a scale by 2^-11 moves the grid, not the error
  }
  CHECK_THROWS_WITH(quantizeRtn(at::full({2, 32}, 1e7), QuantFormat{8, -1, true, true}), Contains("beyond fp16's range"));
}

TEST_CASE("scale_dtype is read with the other format options and a wrong value is a recipe error", "[rtn][errors]") {
  Diagnostics d("recipe.yaml");
  OptionReader ok(YAML::Load("{bits: 4, group_size: 32, scale_dtype: float16}"), &d, "passes[0].rtn");
  const QuantFormat f = readFormatOptions(ok, QuantFormat{8, -1, true});
  ok.finish();
  CHECK(d.empty());
  CHECK(f.fp16_scales);
  OptionReader bad(YAML::Load("{scale_dtype: bfloat16}"), &d, "passes[0].rtn");
  readFormatOptions(bad, QuantFormat{8, -1, true});
  bad.finish();
  REQUIRE_FALSE(d.empty());
  CHECK_THAT(d.errors()[0], Contains("scale_dtype"));
}
