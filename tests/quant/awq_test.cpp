// awq_test.cpp — scale folding is exact in float; the AWQ pass lowers the module error vs RTN.
#include "quant/awq.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

TEST_CASE("AWQ scale folding leaves the float model's outputs unchanged", "[awq]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  Graph ref = g.clone();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(42);  // not the global RNG: other tests must not change this one
  at::Tensor tokens = at::randint(0, 64, {8, 16}, gen, at::TensorOptions().dtype(at::kLong));
  AwqOptions o;
  o.format = QuantFormat{3, 16, false};
  o.clip = false;
  o.quantize = false;
  o.ignore = {"output"};
  auto s = awqQuantizeModel(g, tokens, o, at::kCPU, false);
  verify(g);
  // Scales were really applied (weights and norms changed) ...
  CHECK_FALSE(at::equal(g.initializers.at("w1.weight"), ref.initializers.at("w1.weight")));
  CHECK_FALSE(at::equal(g.initializers.at("ffn_norm.weight"), ref.initializers.at("ffn_norm.weight")));
  int folded = 0;
  for (const auto& gr : s["groups"]) folded += gr["fold"] != "none";
  CHECK(folded == 3);  // q/k/v into attention_norm, w1/w3 into ffn_norm, w2 into w3; wo has no fold (GQA)
  CHECK(s["groups"].size() == 4);
  // ... and the float function is the same.
  at::Tensor a = Executor(ref).run1(tokens), b = Executor(g).run1(tokens);
  CHECK((a - b).abs().max().item<double>() < 1e-5);
}

TEST_CASE("findScaleFold finds norm weights and previous linear rows, and nothing for wo", "[awq]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  ScaleFold qkv = findScaleFold(g, {"wq.weight", "wk.weight", "wv.weight"});
  CHECK(qkv.kind == ScaleFold::VectorMul);
  CHECK(qkv.tensor == "attention_norm.weight");
  CHECK(findScaleFold(g, {"wq.weight"}).kind == ScaleFold::None);  // wk/wv also read that input
  ScaleFold down = findScaleFold(g, {"w2.weight"});
  CHECK(down.kind == ScaleFold::PrevRows);
  CHECK(down.tensor == "w3.weight");
  CHECK(findScaleFold(g, {"wo.weight"}).kind == ScaleFold::None);
  ImportOptions io;
  io.inputs = {{"idx", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}};
  Graph gpt = importTorchScript(testutil::fixture("gpt2_block.pt"), io);
  ScaleFold ln = findScaleFold(gpt, {"fc.weight"});
  CHECK(ln.kind == ScaleFold::Affine);
  CHECK(ln.tensor == "ln2.weight");
  CHECK(ln.bias == "ln2.bias");
}

TEST_CASE("AWQ at 3 bits beats RTN on the fixture and is deterministic", "[awq]") {
  Graph base = importTorchScript(testutil::fixture("llama_block.pt"));
  at::manual_seed(4);
  at::Tensor tokens = at::randint(0, 64, {16, 16}, at::kLong);
  at::Tensor test = at::randint(0, 64, {8, 16}, at::kLong);
  at::Tensor ref = Executor(base).run1(test);
  AwqOptions o;
  o.format = QuantFormat{3, 16, false};
  o.ignore = {"output"};
  Graph a = base.clone(), b = base.clone(), r = base.clone();
  awqQuantizeModel(a, tokens, o, at::kCPU, false);
  awqQuantizeModel(b, tokens, o, at::kCPU, false);
  for (const auto& [w, q] : a.quant) CHECK(at::equal(a.initializers.at(w + ".qdata"), b.initializers.at(w + ".qdata")));
  for (const auto& w : selectWeights(r, {"Linear"}, {"output"}))
    installQuantized(r, w, quantizeRtn(r.initializers.at(w), o.format), "rtn");
  double e_awq = (Executor(a).run1(test) - ref).pow(2).mean().item<double>();
  double e_rtn = (Executor(r).run1(test) - ref).pow(2).mean().item<double>();
  CHECK(e_awq < e_rtn);
}

TEST_CASE("calibration passes without calibration data are refused before anything runs", "[awq][errors]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  CHECK_THROWS_WITH(awqQuantizeModel(g, at::Tensor(), AwqOptions{}, at::kCPU, false), Contains("needs calibration data"));
}
