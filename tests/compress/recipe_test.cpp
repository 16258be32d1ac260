// recipe_test.cpp — shipped recipes parse; every mistake is reported together with file:line and key.
#include "compress/recipe.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
std::string errorOf(const std::string& text) {
  try {
    parseRecipe(text, testutil::source("configs/test.yaml"));
  } catch (const Error& e) {
    CHECK(e.category() == ErrorCategory::Config);
    return e.what();
  }
  FAIL("recipe should have been rejected");
  return "";
}
}  // namespace

TEST_CASE("shipped recipes parse with their passes and gates", "[recipe][shared]") {
  if (!testutil::haveShared()) return;
  Recipe r = loadRecipe(testutil::source("configs/prune50_int8.yaml"));
  REQUIRE(r.passes.size() == 2);
  CHECK(std::string(r.passes[0].pass->name()) == "magnitude-prune");
  CHECK(std::string(r.passes[1].pass->name()) == "rtn");
  CHECK(r.metric == "perplexity");
  CHECK(r.max_degradation > 0);
  CHECK(r.eval.max_tokens == 32768);
  for (auto name : {"baseline.yaml", "int4_g32.yaml"}) CHECK_NOTHROW(loadRecipe(testutil::source(std::string("configs/") + name)));
}

TEST_CASE("all recipe problems are reported at once with line numbers", "[recipe][errors]") {
  std::string msg = errorOf(
      "model: missing.pt\n"
      "outptu: out/x\n"
      "passes:\n"
      "  - rtn: {bits: eight, group_sise: 32}\n"
      "  - magnitude-prun: {sparsity: 0.5}\n"
      "  - magnitude-prune: {sparsity: 1.5, scope: everywhere}\n");
  CHECK_THAT(msg, Contains("test.yaml:1:8: model: file '"));
  CHECK_THAT(msg, Contains("test.yaml:2:1: outptu: unknown key (did you mean 'output'?)"));
  CHECK_THAT(msg, Contains("test.yaml:4:17: passes[0].rtn.bits: expected an integer, got 'eight'"));
  CHECK_THAT(msg, Contains("passes[0].rtn.group_sise: unknown option (did you mean 'group_size'?)"));
  CHECK_THAT(msg, Contains("test.yaml:5:5: passes[1]: unknown pass 'magnitude-prun' (did you mean 'magnitude-prune'?)"));
  CHECK_THAT(msg, Contains("passes[2].magnitude-prune.sparsity: must be between 0 and 1, got 1.5"));
  CHECK_THAT(msg, Contains("passes[2].magnitude-prune.scope: must be one of layer | row | global"));
  CHECK_THAT(msg, Contains("output: missing"));
  CHECK_THAT(msg, Contains("problems (nothing was run)"));
}

TEST_CASE("malformed YAML, wrong shapes of sections and data mistakes are config errors", "[recipe][errors]") {
  CHECK_THAT(errorOf("model: [unclosed\n"), Contains("invalid YAML"));
  CHECK_THAT(errorOf("- just\n- a list\n"), Contains("a recipe must be a YAML map"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\npasses: {rtn: 1}\n"), Contains("passes: expected a list"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ndata: {eval: {seq_len: 0}}\n"), Contains("data.eval.seq_len: must be between 1"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ndata: {eval: {seq_len: 8}}\n"), Contains("give `tokens: file.npy` or `text:"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\naccuracy: {max_degradation: 5%}\n"), Contains("needs data.eval"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\naccuracy: {max_degradation: lots}\n"), Contains("expected a number, got 'lots'"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ntask: classifier\naccuracy: {metric: perplexity}\n"),
             Contains("does not fit task 'classifier'"));
}

TEST_CASE("percentages and defaults are read as documented", "[recipe]") {
  Recipe r = parseRecipe("model: " + testutil::fixture("llama_block.pt") + "\noutput: /tmp/x\n"
                         "passes: [rtn]\n", "/tmp/r.yaml");
  CHECK(r.passes.size() == 1);
  CHECK(r.max_degradation < 0);
  CHECK(r.task == "causal-lm");
}
