// pipeline_test.cpp — a whole recipe run on a small causal LM: report content, the accuracy gate, and
// the output folder's all-or-nothing write.
#include "compress/pipeline.h"

#include <ATen/Parallel.h>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "compress/atomic_dir.h"
#include "compress/error.h"
#include "compress/npy.h"
#include "compress/progress.h"
#include "compress/host_setup.h"
#include "export/ort_check.h"
#include "test_util.h"

using namespace compress;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

std::string setup(const std::string& passes, const std::string& accuracy) {
  std::string dir = testutil::tempDir("");
  NpyArray a;
  a.descr = "<i8";
  a.shape = {4000};
  std::vector<int64_t> toks(4000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<int64_t>((i * 7 + i / 13) % 64);
  a.data.assign(reinterpret_cast<char*>(toks.data()), reinterpret_cast<char*>(toks.data()) + 8 * toks.size());
  writeNpy(dir + "/tokens.npy", a);
  std::ofstream(dir + "/recipe.yaml") << "model: " << testutil::fixture("llama_block.pt") << "\n"
                                      << "data:\n  calibration: {tokens: tokens.npy, samples: 4, seq_len: 16}\n"
                                      << "  eval: {tokens: tokens.npy, max_tokens: 256, seq_len: 16, batch: 4}\n"
                                      << "passes:\n" << passes << accuracy << "latency_runs: 3\noutput: out\n";
  return dir;
}

}  // namespace

TEST_CASE("a recipe run writes report.json, report.md, model.cir and the recipe", "[pipeline]") {
  Progress::setEnabled(false);
  std::string dir = setup("  - magnitude-prune: {sparsity: 0.5, ignore: [output]}\n  - rtn: {bits: 4, group_size: 16}\n",
                          "accuracy: {metric: perplexity, max_degradation: 1000%}\n");
  Recipe r = loadRecipe(dir + "/recipe.yaml");
  RunSummary s = runRecipe(r);
  CHECK(s.gate_passed);
  for (auto f : {"report.json", "report.md", "model.cir", "recipe.yaml"}) CHECK(fs::exists(dir + "/out/" + f));
  const auto& rep = s.report;
  CHECK(rep["schema_version"] == 1);
  CHECK(rep["accuracy"]["count"] == 256);
  CHECK(rep["accuracy"]["baseline"].get<double>() > 1.0);
  CHECK(rep["accuracy"]["final"].get<double>() != rep["accuracy"]["baseline"].get<double>());
  CHECK(rep["passes"].size() == 2);
  CHECK(rep["passes"][0]["stats"]["sparsity"].get<double>() == Approx(0.5).margin(1e-3));
  CHECK(rep["size_ratio"].get<double>() < 0.5);
  CHECK(rep["accuracy"]["gate"] == "pass");
  std::ifstream md(dir + "/out/report.md");
  std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Contains("Accuracy gate: **PASS**"));
  // The saved model is the compressed one.
  Graph g = loadModel(dir + "/out/model.cir");
  CHECK(g.quant.size() == 8);  // every linear, the tied head included (no ignore in this recipe)
  CHECK(g.parameterBytes() == rep["compressed"]["bytes"].get<int64_t>());
}

TEST_CASE("a recipe's threads sets LibTorch's pool and the BLAS library's pool, and the report says both", "[pipeline]") {
  Progress::setEnabled(false);
  const int torch_before = at::get_num_threads(), blas_before = blasThreads();
  // Debian's LibTorch links OpenBLAS; its own pool is the one that spins on the other cores when left alone.
  REQUIRE(blas_before > 0);
  setComputeThreads(2);  // whatever the environment said (the test script asks for 1), the recipe's value wins
  REQUIRE(blasThreads() == 2);
  std::string dir = setup("  - rtn: {bits: 8}\n", "accuracy: {metric: perplexity, max_degradation: 1%}\nthreads: 1\n");
  RunSummary s = runRecipe(loadRecipe(dir + "/recipe.yaml"));
  CHECK(at::get_num_threads() == 1);
  CHECK(blasThreads() == 1);
  CHECK(s.report["environment"]["threads"] == 1);
  CHECK(s.report["environment"]["blas_threads"] == 1);
  setComputeThreads(blas_before);
  at::set_num_threads(torch_before);
  CHECK(blasThreads() == blas_before);
}

TEST_CASE("a missed accuracy gate fails the run but still writes the results", "[pipeline]") {
  Progress::setEnabled(false);
  std::string dir = setup("  - rtn: {bits: 2, group_size: -1, symmetric: true}\n", "accuracy: {max_degradation: 0.1%}\n");
  RunSummary s = runRecipe(loadRecipe(dir + "/recipe.yaml"));
  CHECK_FALSE(s.gate_passed);
  CHECK(s.report["accuracy"]["gate"] == "fail");
  CHECK(s.report["accuracy"]["degradation"].get<double>() > 0.001);
  CHECK(fs::exists(dir + "/out/report.json"));
}

TEST_CASE("a failing run leaves an existing output folder untouched and no temp folders", "[pipeline][errors]") {
  Progress::setEnabled(false);
  std::string dir = setup("  - rtn: {targets: [no.such.layer]}\n", "");
  fs::create_directories(dir + "/out");
  std::ofstream(dir + "/out/keep.txt") << "previous results";
  std::ofstream(dir + "/out/" + kOutputMarker) << "";  // an earlier run's output
  CHECK_THROWS_WITH(runRecipe(loadRecipe(dir + "/recipe.yaml")), Contains("matched no linear or conv weight"));
  CHECK(fs::exists(dir + "/out/keep.txt"));
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.path().filename().string().rfind("out", 0) == 0;
  CHECK(entries == 1);
}

TEST_CASE("a classifier recipe is judged by top-1 accuracy on .npy inputs and labels", "[pipeline]") {
  Progress::setEnabled(false);
  std::string dir = testutil::tempDir("");
  at::manual_seed(5);
  at::Tensor x = at::randn({32, 12});
  NpyArray xa;
  xa.descr = "<f4";
  xa.shape = {32, 12};
  xa.data.assign(static_cast<char*>(x.data_ptr()), static_cast<char*>(x.data_ptr()) + x.nbytes());
  writeNpy(dir + "/x.npy", xa);
  NpyArray ya;
  ya.descr = "<i8";
  ya.shape = {32};
  std::vector<int64_t> y(32);
  for (int i = 0; i < 32; ++i) y[i] = i % 5;
  ya.data.assign(reinterpret_cast<char*>(y.data()), reinterpret_cast<char*>(y.data()) + 8 * y.size());
  writeNpy(dir + "/y.npy", ya);
  std::ofstream(dir + "/r.yaml") << "model: " << testutil::fixture("mlp.pt") << "\n"
                                 << "inputs: {x: {dtype: float32, shape: [batch, 12]}}\ntask: classifier\n"
                                 << "data: {eval: {inputs: x.npy, labels: y.npy, batch: 8}}\n"
                                 << "passes: [{rtn: {bits: 8}}]\naccuracy: {max_degradation: 50%}\noutput: out\n";
  RunSummary s = runRecipe(loadRecipe(dir + "/r.yaml"));
  CHECK(s.report["accuracy"]["metric"] == "top1");
  CHECK(s.report["accuracy"]["count"] == 32);
  double base = s.report["accuracy"]["baseline"].get<double>();
  CHECK(base >= 0.0);
  CHECK(base <= 1.0);
  CHECK(std::fmod(base * 32, 1.0) == Approx(0.0).margin(1e-9));  // a whole number of the 32 examples
  CHECK(s.report["accuracy"]["metric_reason"] == "the default for task 'classifier'");

  // Without labels the classifier is judged by agreement with the uncompressed model's top class.
  std::ofstream(dir + "/r2.yaml") << "model: " << testutil::fixture("mlp.pt") << "\n"
                                  << "inputs: {x: {dtype: float32, shape: [batch, 12]}}\ntask: classifier\n"
                                  << "data: {eval: {inputs: x.npy, batch: 8}}\n"
                                  << "passes: [{rtn: {bits: 4, group_size: 4}}]\naccuracy: {max_degradation: 50%}\noutput: out2\n";
  RunSummary u = runRecipe(loadRecipe(dir + "/r2.yaml"));
  CHECK(u.report["accuracy"]["metric"] == "agreement");
  CHECK(u.report["accuracy"]["baseline"] == 1.0);  // the model agrees with itself
  const double agree = u.report["accuracy"]["final"].get<double>();
  CHECK(std::fmod(agree * 32, 1.0) == Approx(0.0).margin(1e-9));
  CHECK(u.report["accuracy"]["degradation"].get<double>() == Approx(1.0 - agree));
  CHECK(u.report["accuracy"]["metric_reason"].get<std::string>().find("no data.eval.labels") != std::string::npos);
  // top1 asked for explicitly without labels is a recipe error naming the alternative
  std::ofstream(dir + "/r3.yaml") << "model: " << testutil::fixture("mlp.pt") << "\ntask: classifier\n"
                                  << "data: {eval: {inputs: x.npy}}\naccuracy: {metric: top1}\noutput: out3\n";
  CHECK_THROWS_WITH(loadRecipe(dir + "/r3.yaml"), Catch::Contains("needs `labels: file.npy` in data.eval (without labels use agreement)"));
}

TEST_CASE("a model that cannot take the latency probe still finishes its run, saying why latency is missing", "[pipeline][zoo]") {
  Progress::setEnabled(false);
  const std::string dir = testutil::tempDir("");
  // The zoo's GPT-2 has a 32-position table: the default [1, 128] probe does not fit it.
  std::ofstream(dir + "/r.yaml") << "model: " << testutil::fixture("zoo/gpt2.pt") << "\n"
                                 << "inputs: {input_ids: {dtype: int64, shape: [batch, seq]}}\n"
                                 << "passes: [{rtn: {bits: 8}}]\nlatency_runs: 2\noutput: out\n";
  RunSummary s = runRecipe(loadRecipe(dir + "/r.yaml"));
  REQUIRE(s.report.contains("latency"));
  CHECK(s.report["latency"].is_array());
  CHECK(s.report["latency"].empty());
  CHECK(fs::exists(dir + "/out/report.json"));
}

TEST_CASE("a cached export (kv_cache) validates in ONNX Runtime with perplexity and gets crun latency", "[pipeline][kv]") {
  std::string why;
  if (!testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")")) return;
  Progress::setEnabled(false);
  std::string dir = setup("  - rtn: {bits: 8, ignore: [output]}\n", "accuracy: {metric: perplexity, max_degradation: 1000%}\n");
  std::ofstream(dir + "/recipe.yaml", std::ios::app) << "task: causal-lm\nexport: {onnx: {opset: 17, kv_cache: true, validate: true}}\n";
  RunSummary s = runRecipe(loadRecipe(dir + "/recipe.yaml"));
  const auto& rep = s.report;
  // ONNX Runtime scored the cached file from an empty cache (it once failed: "input 'past.0.key' is missing").
  const auto& ort = rep["export"]["validation"]["onnxruntime"];
  REQUIRE(ort.is_object());
  CHECK(ort["perplexity"]["ort_opt_disabled"].get<double>() == Approx(rep["accuracy"]["final"].get<double>()).epsilon(1e-3));
  int crun = 0, onnxruntime = 0;
  for (const auto& l : rep["latency"]) {
    const std::string engine = l.value("engine", "");
    crun += engine.rfind("crun", 0) == 0 && l["compressed_median_ms"].get<double>() > 0;
    onnxruntime += engine.rfind("onnxruntime", 0) == 0 && l["compressed_median_ms"].get<double>() > 0;
  }
  CHECK(crun >= 1);  // (it once said "crun cannot run it: the model takes N inputs, got 1")
  CHECK(onnxruntime >= 1);
}
