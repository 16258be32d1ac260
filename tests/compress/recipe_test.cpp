// recipe_test.cpp — shipped recipes parse; every mistake is reported together with file:line and key.
#include "compress/recipe.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "compress/error.h"
#include "compress/task.h"
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
  // The default job: SparseGPT 50%, a short distillation from the dense model, int8 — gated at 25%.
  Recipe r = loadRecipe(testutil::source("configs/prune50_int8.yaml"));
  REQUIRE(r.passes.size() == 3);
  CHECK(std::string(r.passes[0].pass->name()) == "sparsegpt");
  CHECK(std::string(r.passes[1].pass->name()) == "distill");
  CHECK(std::string(r.passes[2].pass->name()) == "rtn");
  CHECK(r.metric == "perplexity");
  CHECK(r.max_degradation == Approx(0.25));
  CHECK(r.eval.max_tokens == 32768);
  CHECK(r.threads == 2);  // two cores: distillation runs its micro-batches on both (the bits of one core)
  // Every shipped recipe parses (paths, options, calibration where a pass needs it).
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator(testutil::source("configs"))) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path().string());
    CHECK_NOTHROW(loadRecipe(e.path().string()));
    ++count;
  }
  CHECK(count >= 17);
}

TEST_CASE("pruning options are checked before anything runs", "[recipe][errors][prune]") {
  std::string msg = errorOf(
      "model: missing.pt\n"
      "output: out/x\n"
      "passes:\n"
      "  - magnitude-prune: {pattern: '4:2'}\n"
      "  - wanda: {pattern: 2of4}\n"
      "  - sparsegpt: {bits: 1, group_size: 1, blocksize: 0}\n"
      "  - structured-prune: {ffn_ratio: 1.5, score: taylor}\n"
      "  - structured-prune: {score: magnitude}\n");
  CHECK_THAT(msg, Contains("passes[0].magnitude-prune.pattern: pattern '4:2': N:M needs 0 < N < M"));
  CHECK_THAT(msg, Contains("passes[1].wanda.pattern: pattern '2of4' is not 'unstructured' or 'N:M'"));
  CHECK_THAT(msg, Contains("passes[1].wanda: this pass needs calibration data"));
  CHECK_THAT(msg, Contains("passes[2].sparsegpt.bits: must be 0 (no quantization) or 2-8"));
  CHECK_THAT(msg, Contains("passes[2].sparsegpt.group_size: must be -1 (per channel) or at least 2"));
  CHECK_THAT(msg, Contains("passes[2].sparsegpt.blocksize: must be between 1 and"));
  CHECK_THAT(msg, Contains("passes[3].structured-prune.ffn_ratio: must be between 0 and 0.99, got 1.5"));
  CHECK_THAT(msg, Contains("passes[3].structured-prune.score: must be one of activation | magnitude"));
  CHECK_THAT(msg, !Contains("passes[4].structured-prune: this pass needs calibration"));  // magnitude needs no data
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
  CHECK_THAT(msg, Contains("passes[2].magnitude-prune.scope: must be one of matrix | layer | row | global"));
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
  CHECK_THAT(errorOf("model: m.pt\noutput: o\nexport: {onnx: {sparse_weights: coo}}\n"), Contains("compact"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\nexport: {onnx: {accuracy_level: 5}}\n"),
             Contains("export.onnx.accuracy_level: must be between 0 and 4"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ntask: classifier\naccuracy: {metric: perplexity}\n"),
             Contains("does not fit task 'classifier'"));
  // Input dims: the four names or a number that fits (a 20-digit one used to escape as std::out_of_range).
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ninputs: {x: {dtype: float32, shape: [batch, 3, depth, width]}}\n"),
             Contains("dim 'depth' must be batch, seq, height, width or a number"));
  CHECK_THAT(errorOf("model: m.pt\noutput: o\ninputs: {x: {dtype: float32, shape: [batch, 99999999999999999999]}}\n"),
             Contains("dim '99999999999999999999' must be"));
  Recipe r = parseRecipe("model: " + testutil::fixture("mlp.pt") + "\noutput: o\ninputs: {x: {dtype: float32, shape: [batch, 3, height, width]}}\n",
                         testutil::source("configs/test.yaml"));
  CHECK(r.inputs[0].shape == std::vector<std::string>{"batch", "3", "height", "width"});
}

TEST_CASE("percentages and defaults are read as documented", "[recipe]") {
  Recipe r = parseRecipe("model: " + testutil::fixture("llama_block.pt") + "\noutput: /tmp/x\n"
                         "passes: [rtn]\n", "/tmp/r.yaml");
  CHECK(r.passes.size() == 1);
  CHECK(r.max_degradation < 0);
  CHECK(r.task == "causal-lm");
}

TEST_CASE("tasks and metrics are declared once: data, default metric, fitting metrics, direction", "[recipe]") {
  using namespace compress;
  CHECK(taskNames() == std::vector<std::string>{"causal-lm", "classifier", "embedding", "generic"});
  CHECK(taskFor("causal-lm").token_stream);
  CHECK(taskFor("causal-lm").default_metric == "perplexity");
  CHECK(taskFor("causal-lm").trains);
  CHECK(taskFor("classifier").unlabeled_metric == "agreement");
  CHECK(metricFor("top1").needs_labels);
  CHECK(metricFor("agreement").against_model);
  CHECK(!taskFor("embedding").token_stream);
  CHECK(taskFor("embedding").default_metric == "pooled_cosine");
  for (const Task& t : tasks()) {  // every default metric exists and fits its task
    CHECK(std::find(t.metrics.begin(), t.metrics.end(), t.default_metric) != t.metrics.end());
    CHECK(metricFor(t.default_metric).name == t.default_metric);
  }
  CHECK_THROWS_WITH(taskFor("translation"), Catch::Contains("causal-lm, classifier, embedding, generic"));
  CHECK_THROWS_WITH(metricFor("bleu"), Catch::Contains("perplexity, top1, agreement, cosine, pooled_cosine"));
  // degradation follows the metric's direction: positive is worse
  CHECK(degradation("perplexity", 4.0, 5.0) == Approx(0.25));
  CHECK(degradation("top1", 0.8, 0.6) == Approx(0.25));
  CHECK(degradation("cosine", 1.0, 0.99) == Approx(0.01));
  CHECK(degradation("agreement", 1.0, 0.9) == Approx(0.1));
  CHECK(degradation("perplexity", 4.0, 3.0) < 0);
  // a recipe whose metric does not fit its task names the ones that do
  const std::string dir = testutil::tempDir("tasks");
  std::ofstream(dir + "/x.npy") << "";
  try {
    parseRecipe("model: m.pt\ntask: embedding\naccuracy: {metric: top1}\n", dir + "/r.yaml");
    FAIL("accepted top1 for an embedding model");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("metric 'top1' does not fit task 'embedding' (use pooled_cosine or cosine)"));
  }
}

namespace {

/// The smallest round gate a degradation (a fraction) meets: steps of 0.5% below 10%, 5% up to 100%, 50% above.
double roundGate(double d) {
  const double pct = std::max(d * 100.0, 1e-9);
  const double step = pct < 10 ? 0.5 : pct < 100 ? 5 : 50;
  return std::ceil(pct / step - 1e-9) * step / 100.0;
}

}  // namespace

TEST_CASE("every shipped recipe's gate is the smallest round number its README result meets", "[recipe]") {
  std::ifstream f(testutil::source("README.md"));
  REQUIRE(f.good());
  std::string line;
  double baseline = 0;
  int checked = 0;
  while (std::getline(f, line)) {
    const auto at = line.find("| `configs/");
    if (at != 0) continue;
    const std::string name = line.substr(3, line.find('`', 3) - 3);
    std::vector<std::string> cells;
    for (size_t p = 1, q; (q = line.find('|', p)) != std::string::npos; p = q + 1) cells.push_back(line.substr(p, q - p));
    REQUIRE(cells.size() >= 4);
    const double ppl = std::atof(cells[2].c_str());
    REQUIRE(ppl > 0);
    if (name == "configs/baseline.yaml") baseline = ppl;
    REQUIRE(baseline > 0);  // the baseline row comes first
    std::ifstream rf(testutil::source(name));
    REQUIRE(rf.good());
    const std::string text((std::istreambuf_iterator<char>(rf)), std::istreambuf_iterator<char>());
    const auto g = text.find("max_degradation: ");
    if (name == "configs/baseline.yaml" || name == "configs/fp32.yaml") continue;  // nothing to gate
    INFO(name << ": perplexity " << ppl << " against " << baseline);
    REQUIRE(g != std::string::npos);
    const double gate = std::atof(text.c_str() + g + 17) / 100.0;
    CHECK(gate == Approx(roundGate(ppl / baseline - 1)));
    ++checked;
  }
  CHECK(checked >= 19);
}
