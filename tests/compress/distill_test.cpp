// distill_test.cpp — the KD loss against a hand computation, zero loss for a student equal to its teacher,
// one step lowering the loss, masks and quantized weights kept, determinism, bad options and data.
#include "compress/distill.h"

#include <ATen/Parallel.h>
#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/host_setup.h"
#include "compress/importer.h"
#include "compress/recipe.h"
#include "prune/magnitude_prune.h"
#include "quant/format.h"
#include "quant/rtn.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
Graph block() { return importTorchScript(testutil::fixture("llama_block.pt")); }
at::Tensor stream(int64_t n) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(42);
  return at::randint(0, 64, {n}, gen, at::kLong);
}
DistillOptions small(int64_t steps) {
  DistillOptions o;
  o.steps = steps;
  o.batch = 4;
  o.micro_batch = 2;
  o.seq_len = 12;
  o.warmup = 0;
  o.lr = 1e-3;
  o.holdout = 0.2;
  o.eval_every = 1;
  o.patience = 0;
  return o;
}
}  // namespace

TEST_CASE("KD loss: T^2 KL(teacher || student) by hand, zero for equal logits", "[distill]") {
  at::Tensor s = at::tensor({1.0f, 2.0f, 0.5f, -1.0f, 0.0f, 3.0f}).reshape({2, 3});
  at::Tensor t = at::tensor({0.0f, 2.5f, 1.0f, 1.0f, -2.0f, 2.0f}).reshape({2, 3});
  double T = 2.0, want = 0;
  for (int r = 0; r < 2; ++r) {
    double zs = 0, zt = 0;
    for (int c = 0; c < 3; ++c) zs += std::exp(s[r][c].item<double>() / T), zt += std::exp(t[r][c].item<double>() / T);
    for (int c = 0; c < 3; ++c) {
      double pt = std::exp(t[r][c].item<double>() / T) / zt, ps = std::exp(s[r][c].item<double>() / T) / zs;
      want += pt * std::log(pt / ps);
    }
  }
  want = want / 2 * T * T;
  CHECK(kdLoss(s, t, T).item<double>() == Approx(want).epsilon(1e-5));
  CHECK(kdLoss(t, t, T).item<double>() == 0.0);
}

TEST_CASE("a student equal to its teacher has zero KD loss", "[distill]") {
  Graph teacher = block(), student = teacher.clone();
  auto s = distill(student, teacher, stream(600), small(1), at::kCPU, false);
  CHECK(s["first_loss"].get<double>() == Approx(0.0).margin(1e-7));
  CHECK(s["held_out_kd_before"].get<double>() == Approx(0.0).margin(1e-7));
}

TEST_CASE("one step lowers the KD loss of a pruned student, masks hold, deterministic", "[distill]") {
  Graph teacher = block();
  auto run = [&](int64_t steps) {
    Graph student = teacher.clone();
    magnitudePrune(student, {0.5, "matrix", {"Linear"}, {"output"}, {}});
    auto s = distill(student, teacher, stream(600), small(steps), at::kCPU, false);
    return std::make_pair(std::move(student), s);
  };
  auto [g1, s1] = run(1);
  CHECK(s1["steps"] == 1);
  CHECK(s1["held_out_kd_best"].get<double>() < s1["held_out_kd_before"].get<double>());
  // Masks hold and the weights moved.
  verify(g1);
  for (const auto& [w, sp] : g1.sparsity) {
    const at::Tensor& t = g1.initializers.at(w);
    CHECK(t.masked_select(sp.mask.logical_not()).abs().max().item<float>() == 0.0f);
    CHECK_FALSE(t.requires_grad());
  }
  CHECK_FALSE(at::equal(g1.initializers.at("w1.weight"), teacher.initializers.at("w1.weight") * g1.sparsity.at("w1.weight").mask));
  // Deterministic given the seed.
  auto [a, sa] = run(3);
  auto [b, sb] = run(3);
  for (const auto& [name, t] : a.initializers) CHECK(at::equal(t, b.initializers.at(name)));
  CHECK(sa["last_loss"] == sb["last_loss"]);
}

TEST_CASE("micro-batches on several threads give one thread's bits", "[distill]") {
  // batch 5 of single sequences: with 3 threads a round of 3 micro-batches, then one of 2
  Graph teacher = block();
  const int before = at::get_num_threads();
  auto run = [&](int threads) {
    setComputeThreads(threads);
    Graph student = teacher.clone();
    magnitudePrune(student, {0.5, "matrix", {"Linear"}, {"output"}, {}});
    DistillOptions o = small(3);
    o.batch = 5;
    o.micro_batch = 1;
    auto s = distill(student, teacher, stream(600), o, at::kCPU, false);
    CHECK(at::get_num_threads() == threads);  // (restored after the run)
    return std::make_pair(std::move(student), s);
  };
  auto [one, s1] = run(1);
  auto [three, s3] = run(3);
  setComputeThreads(before);
  for (const auto& [name, t] : one.initializers) CHECK(at::equal(t, three.initializers.at(name)));
  CHECK(s1["last_loss"] == s3["last_loss"]);
  CHECK(s1["held_out_kd_best"] == s3["held_out_kd_best"]);
  CHECK_FALSE(at::equal(one.initializers.at("w1.weight"), teacher.initializers.at("w1.weight") * one.sparsity.at("w1.weight").mask));
}

TEST_CASE("quantized weights stay frozen, the teacher cache trains on fixed windows", "[distill]") {
  Graph teacher = block(), student = teacher.clone();
  RtnOptions r;
  r.format = {8, -1, true};
  r.ignore = {"output"};
  rtnQuantize(student, r);
  student.pruneUnused();
  at::Tensor q = student.initializers.at("w2.weight.qdata").clone();
  at::Tensor norm = student.initializers.at("ffn_norm.weight").clone();
  DistillOptions o = small(2);
  o.teacher_cache = true;
  auto s = distill(student, teacher, stream(600), o, at::kCPU, false);
  CHECK(at::equal(student.initializers.at("w2.weight.qdata"), q));
  CHECK_FALSE(at::equal(student.initializers.at("ffn_norm.weight"), norm));
  CHECK(s["frozen_quantized_weights"].get<int64_t>() > 0);
  verify(student);
}

TEST_CASE("distillation rejects too little data and asks for training text", "[distill][errors]") {
  Graph teacher = block(), student = teacher.clone();
  CHECK_THROWS_WITH(distill(student, teacher, stream(20), small(1), at::kCPU, false), Contains("needs at least"));
  CHECK_THROWS_WITH(distill(student, teacher, at::Tensor(), small(1), at::kCPU, false), Contains("add data.train"));
}

TEST_CASE("distill options and data are checked before anything runs", "[distill][errors][recipe]") {
  auto errorOf = [](const std::string& text) -> std::string {
    try {
      parseRecipe(text, testutil::source("configs/test.yaml"));
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string msg = errorOf(
      "model: missing.pt\noutput: out/x\npasses:\n"
      "  - distill: {temperature: -1, steps: 0, warmup: 10}\n");
  CHECK_THAT(msg, Contains("passes[0].distill.temperature: must be between 0.05 and 100, got -1"));
  CHECK_THAT(msg, Contains("passes[0].distill.steps: must be between 1 and"));
  CHECK_THAT(msg, Contains("passes[0].distill: this pass trains: add data.train"));
  if (!testutil::haveShared()) return;
  std::string val = testutil::shared("data/tinystories/val.tok512.npy");
  std::string same = errorOf("model: missing.pt\noutput: out/x\ndata:\n  train: {tokens: " + val + "}\n  eval: {tokens: " + val +
                             "}\npasses:\n  - distill: {}\n");
  CHECK_THAT(same, Contains("data.train: is the same file as data.eval"));
}

TEST_CASE("hidden-state matching and cross-entropy add to the loss, zero MSE for an equal student", "[distill]") {
  Graph teacher = block();
  DistillOptions o = small(1);
  o.hidden = {"w2"};
  Graph same = teacher.clone();
  auto s0 = distill(same, teacher, stream(600), o, at::kCPU, false);
  CHECK(s0["first_loss"].get<double>() == Approx(0.0).margin(1e-7));  // KD 0 and MSE 0
  auto pruned = [&]() {
    Graph g = teacher.clone();
    magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}});
    return g;
  };
  Graph a = pruned(), b = pruned(), c = pruned();
  double kd_only = distill(a, teacher, stream(600), small(1), at::kCPU, false)["first_loss"].get<double>();
  double with_hidden = distill(b, teacher, stream(600), o, at::kCPU, false)["first_loss"].get<double>();
  DistillOptions ce = small(1);
  ce.alpha = 0.5;
  double with_ce = distill(c, teacher, stream(600), ce, at::kCPU, false)["first_loss"].get<double>();
  CHECK(with_hidden > kd_only);
  CHECK(with_ce > 0.5 * kd_only + 1.0);  // cross-entropy of a 64-token vocabulary is about ln 64 = 4.2
  DistillOptions bad = small(1);
  bad.hidden = {"nothing_like_this"};
  Graph d = pruned();
  CHECK_THROWS_WITH(distill(d, teacher, stream(600), bad, at::kCPU, false), Contains("matched no"));
}
