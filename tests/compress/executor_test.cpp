// executor_test.cpp — op semantics on hand-built graphs, hooks, input validation.
#include "compress/executor.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "ir_fixtures.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
Graph linearGraph() {
  at::manual_seed(0);
  return testutil::linearGraph(at::randn({3, 4}), true);
}
}  // namespace

TEST_CASE("executor computes relu(x W^T) and calls hooks with real tensors", "[executor]") {
  Graph g = linearGraph();
  verify(g);
  Executor ex(g);
  at::Tensor x = at::randn({2, 4});
  std::vector<std::string> seen;
  at::Tensor mm_input;
  ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>& in, const std::vector<at::Tensor>&) {
    seen.push_back(n.op);
    if (n.op == "MatMul") mm_input = in[0];
  });
  at::Tensor y = ex.run1(x);
  at::Tensor ref = at::relu(at::matmul(x, g.initializers["w"].t()));
  CHECK((y - ref).abs().max().item<double>() < 1e-6);
  // Transpose(w) depends only on an initializer: it is folded at construction, so hooks see 2 nodes.
  CHECK(seen == std::vector<std::string>{"MatMul", "Relu"});
  CHECK((mm_input - x).abs().max().item<double>() == 0.0);
}

TEST_CASE("executor rejects wrong inputs with data errors", "[executor][errors]") {
  Graph g = linearGraph();
  Executor ex(g);
  CHECK_THROWS_WITH(ex.run({}), Contains("missing model input 'x'"));
  CHECK_THROWS_WITH(ex.run1(at::randn({2, 5})), Contains("must have shape [batch,4]"));
  CHECK_THROWS_WITH(ex.run1(at::zeros({2, 4}, at::kLong)), Contains("must be float32"));
  CHECK_THROWS_WITH(ex.run({{"x", at::randn({2, 4})}, {"z", at::randn({1})}}), Contains("'z' is not an input"));
}

TEST_CASE("ONNX op semantics: Gather with negative and out-of-range indices, Slice clamping, Reshape 0", "[executor]") {
  Node gather{"Gather", "", "g", {"d", "i"}, {"o"}, {{"axis", int64_t{1}}}, ""};
  at::Tensor d = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor o = runNode(gather, {d, at::tensor({-1, 0}, at::kLong)})[0];
  CHECK(o.sizes() == at::IntArrayRef({3, 2}));
  CHECK(o[0][0].item<float>() == 3.0f);
  CHECK_THROWS_WITH(runNode(gather, {d, at::tensor({4}, at::kLong)}), Contains("index out of range"));

  Node slice{"Slice", "", "s", {"d", "st", "en", "ax", "sp"}, {"o"}, {}, ""};
  at::Tensor s = runNode(slice, {d, at::tensor({1}, at::kLong), at::tensor({INT64_MAX}, at::kLong),
                                 at::tensor({1}, at::kLong), at::tensor({2}, at::kLong)})[0];
  CHECK(s.sizes() == at::IntArrayRef({3, 2}));
  CHECK(s[2][1].item<float>() == 11.0f);

  Node reshape{"Reshape", "", "r", {"d", "s"}, {"o"}, {}, ""};
  CHECK(runNode(reshape, {d, at::tensor({0, 2, -1}, at::kLong)})[0].sizes() == at::IntArrayRef({3, 2, 2}));
  CHECK_THROWS_WITH(runNode(reshape, {d, at::tensor({5, -1}, at::kLong)}), Contains("cannot reshape"));

  Node unknown{"FancyOp", "", "f", {"d"}, {"o"}, {}, ""};
  CHECK_THROWS_WITH(runNode(unknown, {d}), Contains("no implementation of op FancyOp"));
}

TEST_CASE("DequantizeLinear per-channel and blocked match the formula", "[executor]") {
  at::Tensor q = at::tensor({-2, 1, 3, 0, 5, -1, 2, 4}, at::kChar).reshape({2, 4});
  Node per{"DequantizeLinear", "", "dq", {"q", "s"}, {"w"}, {{"axis", int64_t{0}}}, ""};
  at::Tensor w = runNode(per, {q, at::tensor({0.5f, 2.0f})})[0];
  CHECK(w[0][2].item<float>() == 1.5f);
  CHECK(w[1][3].item<float>() == 8.0f);
  Node blk{"DequantizeLinear", "", "dq", {"q", "s", "z"}, {"w"}, {{"axis", int64_t{1}}, {"block_size", int64_t{2}}}, ""};
  at::Tensor u = at::tensor({0, 1, 2, 3, 4, 5, 6, 7}, at::kByte).reshape({2, 4});
  at::Tensor s = at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  at::Tensor z = at::tensor({1, 0, 2, 3}, at::kByte).reshape({2, 2});
  at::Tensor r = runNode(blk, {u, s, z})[0];
  CHECK(r[0][0].item<float>() == -1.0f);  // (0-1)*1
  CHECK(r[0][3].item<float>() == 6.0f);   // (3-0)*2
  CHECK(r[1][1].item<float>() == 9.0f);   // (5-2)*3
  CHECK(r[1][2].item<float>() == 12.0f);  // (6-3)*4
}
