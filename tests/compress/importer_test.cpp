// importer_test.cpp — TorchScript import: parity with torch::jit on every fixture at several shapes,
// names and ties kept, dynamic dims symbolic, and every error path.
#include "compress/importer.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "compress/error.h"
#include "compress/executor.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {

double maxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// The reference is TorchScript's plain interpreter: with its optimizer on, the profiling executor fuses
// elementwise ops from the second call on (different rounding), which is not the model's definition.
at::Tensor jitForward(const std::string& path, const at::Tensor& x) {
  torch::jit::GraphOptimizerEnabledGuard no_opt(false);
  auto m = torch::jit::load(path);
  m.eval();
  torch::NoGradGuard ng;
  return m.forward({x}).toTensor();
}

struct Case {
  std::string file;
  InputSpec spec;
  std::vector<std::vector<int64_t>> shapes;
  bool tokens;
};

}  // namespace

TEST_CASE("importer matches torch::jit on every fixture at several shapes", "[importer]") {
  std::vector<Case> cases = {
      {"mlp.pt", {"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}, {{1, 12}, {5, 12}}, false},
      {"gpt2_block.pt", {"idx", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}, {{1, 1}, {2, 7}, {3, 16}}, true},
      {"llama_block.pt", {"tokens", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}, {{1, 1}, {2, 9}, {4, 16}}, true},
      {"cnn.pt", {"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(3), Dim::fixed(16), Dim::fixed(16)}},
       {{1, 3, 16, 16}, {3, 3, 16, 16}}, false},
  };
  for (const auto& c : cases) {
    ImportOptions o;
    o.inputs = {c.spec};
    Graph g = importTorchScript(testutil::fixture(c.file), o);
    verify(g);
    Executor ex(g);
    for (const auto& shape : c.shapes) {
      at::manual_seed(7);
      at::Tensor x = c.tokens ? at::randint(0, 64, shape, at::kLong) : at::randn(shape);
      at::Tensor ref = jitForward(testutil::fixture(c.file), x);
      at::Tensor got = ex.run1(x);
      INFO(c.file << " at " << c10::str(at::IntArrayRef(shape)));
      REQUIRE(got.sizes() == ref.sizes());
      CHECK(maxDiff(got, ref) < 1e-5);
    }
  }
}

TEST_CASE("stories260K imports with names, tied weights and symbolic batch/seq", "[importer][shared]") {
  if (!testutil::haveShared()) return;
  std::string path = testutil::shared("models/stories260K/stories260K.pt");
  Graph g = importTorchScript(path);
  REQUIRE(g.inputs == std::vector<std::string>{"tokens"});
  REQUIRE(g.outputs == std::vector<std::string>{"logits"});
  CHECK(g.initializers.count("layers.3.w1.weight") == 1);
  CHECK(g.initializers.at("layers.3.w1.weight").sizes() == at::IntArrayRef({172, 64}));
  REQUIRE(g.aliases.count("output.weight") == 1);
  CHECK(g.aliases.at("output.weight") == "tok_embeddings.weight");
  CHECK(g.parameterCount() == 260032);  // tied embedding counted once
  CHECK(dumpGraph(g).find("output logits: float32[batch,seq,512]") != std::string::npos);
  CHECK(findLinears(g).size() == 36);  // 5 layers x 7 + the tied output head

  torch::jit::GraphOptimizerEnabledGuard no_opt(false);
  auto m = torch::jit::load(path);
  m.eval();
  torch::NoGradGuard ng;
  Executor ex(g);
  for (auto shape : std::vector<std::vector<int64_t>>{{1, 1}, {2, 33}, {1, 512}}) {
    at::Tensor x = at::randint(0, 512, shape, at::kLong);
    CHECK(maxDiff(ex.run1(x), m.forward({x}).toTensor()) < 1e-5);
  }
}

TEST_CASE("unsupported ops are all reported at once with counts and locations", "[importer][errors]") {
  ImportOptions o;
  o.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(8)}}};
  try {
    importTorchScript(testutil::fixture("unsupported.pt"), o);
    FAIL("import should have failed");
  } catch (const Error& e) {
    CHECK(e.category() == ErrorCategory::Model);
    std::string msg = e.what();
    CHECK_THAT(msg, Contains("2 ops the importer does not support"));
    CHECK_THAT(msg, Contains("aten::cummax (2x"));
    CHECK_THAT(msg, Contains("aten::flip (1x"));
    CHECK_THAT(msg, Contains("make_fixtures.py:"));
  }
}

TEST_CASE("corrupt and missing model files give clear errors", "[importer][errors]") {
  CHECK_THROWS_WITH(importTorchScript("/nonexistent/model.pt"), Contains("cannot open '/nonexistent/model.pt'"));
  // Corrupt two bytes at the start of a valid file: the zip magic breaks.
  std::string tmp = testutil::tempDir("") + "/bad.pt";
  {
    std::ifstream in(testutil::fixture("mlp.pt"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes[0] = 'X';
    bytes[1] = 'Y';
    std::ofstream(tmp, std::ios::binary) << bytes;
  }
  try {
    importTorchScript(tmp);
    FAIL("import should have failed");
  } catch (const Error& e) {
    CHECK(e.category() == ErrorCategory::Model);
    CHECK_THAT(std::string(e.what()), Contains("not a loadable TorchScript file"));
  }
  // A truncated file.
  {
    std::ifstream in(testutil::fixture("mlp.pt"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(tmp, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  CHECK_THROWS_AS(importTorchScript(tmp), Error);
  // Restored: the same bytes load.
  ImportOptions o;
  o.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}};
  CHECK(importTorchScript(testutil::fixture("mlp.pt"), o).nodes.size() > 0);
}

TEST_CASE("a wrong input description is a model error that says what was assumed", "[importer][errors]") {
  // The MLP takes floats [batch, 12]; the default assumption is int64 tokens [batch, seq].
  CHECK_THROWS_WITH(importTorchScript(testutil::fixture("mlp.pt")), Contains("assumed to be int64 token ids"));
}
