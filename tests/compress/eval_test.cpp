// eval_test.cpp — the reference perplexity, windowing, sampling and metric edge cases.
#include "compress/eval.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/npy.h"
#include "test_util.h"
#include "tests/error_util.h"

using namespace compress;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinAbs;
using testutil::categoryOf;

TEST_CASE("stories260K perplexity on val.tok512.npy is 4.0780", "[eval][shared][slow]") {
  if (!testutil::haveShared()) return;
  Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  LmWindows w = makeWindows(readTokenStream(testutil::shared("data/tinystories/val.tok512.npy")), 512, 32768);
  REQUIRE(w.inputs.sizes() == at::IntArrayRef({64, 512}));
  Executor ex(g);
  MetricResult r = perplexity(ex, w, 1, false);
  CHECK(r.count == 32768);
  CHECK_THAT(r.value, WithinAbs(4.0780, 0.0005));
  CHECK_THAT(r.mean_nll, WithinAbs(1.40559, 0.00005));
}

TEST_CASE("windows follow the shared definition and reject short streams", "[eval]") {
  std::vector<int64_t> s(21);
  for (int i = 0; i < 21; ++i) s[i] = i;
  LmWindows w = makeWindows(s, 4, 16);
  REQUIRE(w.inputs.sizes() == at::IntArrayRef({4, 4}));
  CHECK(w.inputs[1][0].item<int64_t>() == 4);
  CHECK(w.targets[1][0].item<int64_t>() == 5);
  CHECK(w.targets[3][3].item<int64_t>() == 16);
  CHECK(makeWindows(s, 4, 0).inputs.size(0) == 5);  // (21 - 1) / 4 whole windows
  CHECK_THROWS_WITH(makeWindows(s, 4, 24), Contains("needs 25"));
  CHECK_THROWS_WITH(makeWindows(s, 4, 10), Contains("must be a multiple of seq_len"));
}

TEST_CASE("calibration sampling is deterministic given the seed", "[eval]") {
  std::vector<int64_t> s(1000);
  for (int i = 0; i < 1000; ++i) s[i] = i;
  at::Tensor a = sampleSequences(s, 8, 16, 3), b = sampleSequences(s, 8, 16, 3), c = sampleSequences(s, 8, 16, 4);
  CHECK(at::equal(a, b));
  CHECK_FALSE(at::equal(a, c));
  CHECK((a.select(1, 1) - a.select(1, 0)).eq(1).all().item<bool>());  // contiguous spans of the stream
  CHECK_THROWS_AS(sampleSequences(s, 1, 2000, 0), Error);
}

TEST_CASE("NaN logits are a numeric error, metrics compute the right relative change", "[eval][errors]") {
  Graph g;
  g.inputs = {"tokens"};
  g.values["tokens"] = ValueInfo{DType::Int64, Shape{Dim::sym("batch"), Dim::sym("seq")}};
  g.initializers["emb"] = at::full({8, 8}, std::nan(""));
  g.values["emb"] = ValueInfo{DType::Float32, Shape{Dim::fixed(8), Dim::fixed(8)}};
  g.nodes.push_back(Node{"Gather", "", "g", {"emb", "tokens"}, {"logits"}, {{"axis", int64_t{0}}}, ""});
  g.values["logits"] = ValueInfo{DType::Float32, Shape{Dim::sym("batch"), Dim::sym("seq"), Dim::fixed(8)}};
  g.outputs = {"logits"};
  Executor ex(g);
  std::vector<int64_t> s(9, 1);
  CHECK_THROWS_WITH(perplexity(ex, makeWindows(s, 4, 8), 2, false), Contains("NaN or Inf"));
  CHECK_THAT(degradation("perplexity", 4.0, 4.2), WithinAbs(0.05, 1e-12));
  CHECK_THAT(degradation("top1", 0.8, 0.76), WithinAbs(0.05, 1e-12));
  CHECK_THAT(degradation("cosine", 1.0, 0.99), WithinAbs(0.01, 1e-12));
}

TEST_CASE("top1 and cosine metrics on a real classifier", "[eval]") {
  ImportOptions o;
  o.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}};
  Graph g = importTorchScript(testutil::fixture("mlp.pt"), o);
  Executor ex(g);
  at::manual_seed(3);
  at::Tensor x = at::randn({40, 12});
  at::Tensor pred = ex.run1(x).argmax(-1);
  // Labels equal to the model's own predictions except the first 10: top1 must be exactly 30/40.
  at::Tensor labels = pred.clone();
  labels.narrow(0, 0, 10).add_(1).remainder_(5);
  MetricResult t = top1(ex, x, labels, 7, false);
  CHECK(t.count == 40);
  CHECK_THAT(t.value, WithinAbs(0.75, 1e-12));
  CHECK_THROWS_WITH(top1(ex, x, labels.narrow(0, 0, 39), 8, false), Contains("labels have 39"));
  // Agreement without labels: with itself 1; with the negated head it is the share of equal argmaxes.
  {
    Executor self(g);
    CHECK(agreement(ex, self, x, 7, false).value == 1.0);
    Graph moved = g;
    moved.initializers.at("out.weight") = moved.initializers.at("out.weight") * -1.0;
    Executor neg(moved);
    const double want = (neg.run1(x).argmax(-1) == pred).to(at::kDouble).mean().item<double>();
    MetricResult a = agreement(neg, ex, x, 7, false);
    CHECK(a.count == 40);
    CHECK(a.metric == "agreement");
    CHECK_THAT(a.value, WithinAbs(want, 1e-12));
    CHECK(a.value < 1.0);
  }
  // Cosine of a model against itself is 1; against a perturbed copy it is below 1 and matches a direct computation.
  Executor same(g);
  CHECK_THAT(cosine(ex, same, x, 16, false).value, WithinAbs(1.0, 1e-12));
  Graph h = g;
  h.initializers.at("out.weight") = h.initializers.at("out.weight") * -1.0;
  Executor flipped(h);
  at::Tensor a = ex.run1(x).to(at::kDouble), b = flipped.run1(x).to(at::kDouble);
  double ref = at::cosine_similarity(b, a, 1, 1e-12).mean().item<double>();
  CHECK_THAT(cosine(flipped, ex, x, 16, false).value, WithinAbs(ref, 1e-6));  // batches of 16 vs all 40: float32 rounding
  // Pooled cosine on [B, S, D] outputs: the cosine of the sequence means, per example.
  ImportOptions o3;
  o3.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::sym("seq"), Dim::fixed(12)}}};
  Graph g3 = importTorchScript(testutil::fixture("mlp.pt"), o3);
  Graph h3 = g3;
  h3.initializers.at("out.weight") = h3.initializers.at("out.weight") * -1.0;
  Executor e3(g3), f3(h3);
  at::Tensor xs = at::randn({10, 6, 12});
  at::Tensor pa = e3.run1(xs).to(at::kDouble).mean(1), pb = f3.run1(xs).to(at::kDouble).mean(1);
  MetricResult pc = pooledCosine(f3, e3, xs, 4, false);
  CHECK(pc.metric == "pooled_cosine");
  CHECK(pc.count == 10);
  CHECK_THAT(pc.value, WithinAbs(at::cosine_similarity(pb, pa, 1, 1e-12).mean().item<double>(), 1e-6));
  Executor e3b(g3);
  CHECK_THAT(pooledCosine(e3, e3b, xs, 4, false).value, WithinAbs(1.0, 1e-12));
}

TEST_CASE("perplexity on tokens the model's vocabulary lacks is a data error before any forward pass", "[hostile][eval]") {
  const Graph g = importTorchScript(testutil::fixture("zoo") + "/hf_llama.pt", {});  // vocabulary of 64
  Executor ex(g);
  std::vector<int64_t> stream(33);
  for (int64_t i = 0; i < 33; ++i) stream[i] = i % 60;
  CHECK_NOTHROW(perplexity(ex, makeWindows(stream, 8, 32), 1, false));
  for (int64_t bad : {64, 300, -1}) {
    INFO(bad);
    stream[11] = bad;
    std::string msg;
    CHECK(categoryOf([&] { perplexity(ex, makeWindows(stream, 8, 32), 1, false); }, &msg) == ErrorCategory::Data);
    CHECK_THAT(msg, Contains("hold id " + std::to_string(bad) + ", but the model's vocabulary has 64 tokens"));
  }
}
