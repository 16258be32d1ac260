// hostile_host_test.cpp — the host (LibTorch) side against corrupt inputs (docs/security.md): recipes that
// repeat keys or name folders and devices, TorchScript archives with truncated tensor records, model.cir and
// model files that are devices, and export validation of a model whose outputs are NaN. Each case expects
// its exact error category; each was accepted or unclear before the hardening issue.
#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/importer.h"
#include "compress/recipe.h"
#include "compress/serialize.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "export/validate.h"
#include "tests/error_util.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;
using testutil::categoryOf;

TEST_CASE("a recipe that repeats a key is a config error at the repeated key's line", "[hostile][recipe]") {
  const std::string text = "model: a.pt\ntask: causal-lm\noutput: out\ntask: classifier\npasses:\n  - rtn: {bits: 8, bits: 4}\n";
  std::string msg;
  CHECK(categoryOf([&] { parseRecipe(text, "r.yaml"); }, &msg) == ErrorCategory::Config);
  CHECK_THAT(msg, Contains("r.yaml:4") && Contains("task") && Contains("repeated key (first given at line 2)"));
  CHECK_THAT(msg, Contains("bits") && Contains("r.yaml:6"));
  CHECK(categoryOf([&] { loadRecipe("/dev/zero"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("not a regular file"));
}

TEST_CASE("a recipe naming a folder or a device as its model says so (not 'does not exist')", "[hostile][recipe]") {
  std::string msg;
  categoryOf([&] { parseRecipe("model: /tmp\noutput: out\ndata: {eval: {tokens: /dev/zero}}\n", "/tmp/r.yaml"); }, &msg);
  CHECK_THAT(msg, Contains("'/tmp' is a folder, not a file"));
  CHECK_THAT(msg, Contains("'/dev/zero' is not a regular file"));
}

TEST_CASE("a TorchScript archive with a truncated tensor record is a model error", "[hostile][importer]") {
  std::string msg;
  CHECK(categoryOf([&] { importTorchScript(testutil::fixture("truncated_record.pt")); }, &msg) == ErrorCategory::Model);
  CHECK_THAT(msg, Contains("corrupt") && Contains("fc2.weight"));
  // the archive it was cut from imports
  ImportOptions io;
  io.inputs = {InputSpec{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}};
  CHECK(importTorchScript(testutil::fixture("mlp.pt"), io).initializers.size() == 6);
  CHECK(categoryOf([&] { importTorchScript("/dev/zero"); }, &msg) == ErrorCategory::Io);
  CHECK(categoryOf([&] { importTorchScript("/tmp"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("is a folder"));
  CHECK(categoryOf([&] { loadGraph("/dev/zero"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("not a regular file"));
}

TEST_CASE("export validation fails when the model's outputs are NaN", "[hostile][export][ort]") {
  ImportOptions io;
  Graph g = importTorchScript(testutil::fixture("nan_lm.pt"), io);
  const std::string path = testutil::tempDir("") + "/nan.onnx";
  exportOnnx(g, path, ExportOptions{});
  std::string why;
  if (!testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")")) return;
  std::string msg;
  CHECK(categoryOf([&] { validateExport(g, path, validationInputs(g, ""), ValidationOptions{}); }, &msg) == ErrorCategory::Numeric);
  CHECK_THAT(msg, Contains("NaN/Inf"));
}
