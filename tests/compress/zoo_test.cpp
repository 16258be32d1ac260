// zoo_test.cpp — every architecture of the fixture zoo (scripts/fixture_zoo.py: 16 families written the
// way the usual PyTorch code writes them) end to end: TorchScript import, the executor against torch's own
// outputs at two batch sizes and lengths (or image sizes) other than the traced ones, our ONNX export in
// ONNX Runtime and in crun, rtn int8 / int4-g32 / 50% magnitude pruning through the same checks, and
// torch.onnx.export's file in crun against torch. With COMPRESS_ZOO_COVERAGE=<file> the results are
// written as JSON (scripts/model_coverage.sh renders them into docs/models.md).
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/kv_cache.h"
#include "compress/npy.h"
#include "compress/onnx_import.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "prune/magnitude_prune.h"
#include "quant/rtn.h"
#include "runtime/crt.h"
#include "test_util.h"
#include "zoo_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>
#include "crt_run.h"

using namespace compress;
using namespace zooutil;
using nlohmann::json;

namespace {

at::Tensor runCrun(const std::string& path, const Feeds& inputs) { return testutil::runCrt(path, inputs)[0]; }

/// Results for the coverage table: family -> column -> "ok" / "n/a: why" / "FAIL: ...".
json& coverage() {
  static json c = json::object();
  return c;
}
void record(const std::string& family, const std::string& column, const std::string& value) {
  coverage()[family][column] = value;
  if (const char* p = std::getenv("COMPRESS_ZOO_COVERAGE")) {
    std::ofstream f(p);
    f << coverage().dump(1);
  }
}
std::string verdict(bool ok, double diff) { return ok ? "ok" : "FAIL (rel. diff " + std::to_string(diff) + ")"; }


/// Applies a compression format; returns false (with `why`) when it does not apply to the model.
bool compressAs(Graph& g, const std::string& fmt, std::string& why) {
  if (findLinears(g).empty() && findConvs(g).empty()) {
    why = "n/a: no linear or conv layers";
    return false;
  }
  RtnOptions r;
  if (fmt == "int8") r.format = QuantFormat{8, -1, true}, rtnQuantize(g, r);
  if (fmt == "int4-g32") r.format = QuantFormat{4, 32, false}, rtnQuantize(g, r);
  if (fmt == "prune50") magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, {}});
  g.pruneUnused();
  verify(g);
  return true;
}

/// Exports `g`, then checks ORT (optimizations off) and crun against the executor on every case.
void checkExport(const std::string& family, const std::string& column, const Graph& g, const std::vector<ZooCase>& cases,
                 bool have_ort) {
  const std::string path = testutil::tempDir("") + "/" + family + ".onnx";
  exportOnnx(g, path, {});
  Executor ex(g);
  double worst_ort = 0, worst_crun = 0;
  for (const auto& c : cases) {
    at::Tensor want = ex.run(c.inputs)[0].to(at::kFloat);
    if (have_ort) {
      auto ort = ortRun(path, c.inputs, "disabled");
      REQUIRE(ort.size() == 1);
      worst_ort = std::max(worst_ort, relDiff(ort.begin()->second, want));
    }
    worst_crun = std::max(worst_crun, relDiff(runCrun(path, c.inputs), want));
  }
  INFO(family << " " << column << ": ORT " << worst_ort << ", crun " << worst_crun);
  CHECK(worst_ort <= 1e-4);
  CHECK(worst_crun <= 1e-4);
  record(family, column + " ORT", verdict(worst_ort <= 1e-4, worst_ort));
  record(family, column + " crun", verdict(worst_crun <= 1e-4, worst_crun));
}

}  // namespace

TEST_CASE("zoo: the fixture zoo holds at least 14 architectures, each with TorchScript, ONNX and two cases", "[zoo]") {
  auto models = zoo();
  CHECK(models.size() >= 14);
  for (const auto& z : models) {
    INFO(z.name);
    CHECK(testutil::exists(zooDir() + "/" + z.name + ".pt"));
    CHECK(testutil::exists(zooDir() + "/" + z.name + ".onnx"));
    CHECK(z.cases.size() == 2);
    CHECK(z.onnx_cases.size() == 2);
  }
}

TEST_CASE("zoo: every family imports and the executor equals torch at sizes other than the traced one", "[zoo]") {
  for (const auto& z : zoo()) {
    INFO(z.name);
    Graph g = importZoo(z);
    record(z.name, "import", "ok");
    Executor ex(g);
    double worst = 0;
    for (const auto& c : z.cases) worst = std::max(worst, relDiff(ex.run(c.inputs)[0], c.output));
    INFO("executor vs torch: " << worst);
    CHECK(worst <= 1e-4);
    record(z.name, "executor", verdict(worst <= 1e-4, worst));
  }
}

TEST_CASE("zoo: our ONNX export of every family runs in ONNX Runtime and crun as the executor does", "[zoo][ort]") {
  std::string why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")");
  for (const auto& z : zoo()) {
    INFO(z.name);
    checkExport(z.name, "fp32", importZoo(z), z.cases, have_ort);
  }
}

TEST_CASE("zoo: rtn int8, rtn int4-g32 and 50% magnitude pruning run, export and match their own executor", "[zoo][ort]") {
  std::string why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")");
  for (const auto& z : zoo()) {
    const Graph base = importZoo(z);
    for (const std::string fmt : {"int8", "int4-g32", "prune50"}) {
      INFO(z.name << " " << fmt);
      Graph g = base.clone();
      std::string na;
      if (!compressAs(g, fmt, na)) {
        record(z.name, fmt, na);
        continue;
      }
      record(z.name, fmt, "ok");
      checkExport(z.name, fmt, g, z.cases, have_ort);
    }
  }
}

TEST_CASE("zoo: crun runs the file torch.onnx.export wrote for every family, matching torch", "[zoo]") {
  for (const auto& z : zoo()) {
    INFO(z.name);
    double worst = 0;
    for (const auto& c : z.onnx_cases) worst = std::max(worst, relDiff(runCrun(zooDir() + "/" + z.name + ".onnx", c.inputs), c.output));
    INFO("crun vs torch: " << worst);
    CHECK(worst <= 1e-4);
    record(z.name, "torch.onnx in crun", verdict(worst <= 1e-4, worst));
  }
}

TEST_CASE("zoo: torch.onnx.export's file of every family imports into the IR - the executor equals torch and ONNX Runtime", "[zoo][onnx-import]") {
  std::string why;
  REQUIRE(ortAvailable(&why));
  for (const auto& z : zoo()) {
    INFO(z.name);
    const std::string path = zooDir() + "/" + z.name + ".onnx";
    Graph g = importOnnx(path);
    verify(g);
    double worst = 0;
    for (const auto& c : z.onnx_cases) {
      Executor ex(g);
      const at::Tensor ours = ex.run(c.inputs)[0];
      worst = std::max(worst, relDiff(ours, c.output));
      const auto ort = ortRun(path, c.inputs);
      REQUIRE(ort.count(g.outputs[0]));
      worst = std::max(worst, relDiff(ours, ort.at(g.outputs[0])));
    }
    INFO("executor on the imported ONNX vs torch and ONNX Runtime: " << worst);
    CHECK(worst <= 1e-4);
    // exported again by us, it runs in crun as the executor does; decoders also get their KV cache
    const std::string again = testutil::tempDir("onnx_again") + "/" + z.name + ".onnx";
    exportOnnx(g, again);
    double crun_diff = 0;
    for (const auto& c : z.onnx_cases) crun_diff = std::max(crun_diff, relDiff(runCrun(again, c.inputs), Executor(g).run(c.inputs)[0]));
    INFO("crun on our re-export vs the executor: " << crun_diff);
    CHECK(crun_diff <= 1e-4);
    if (z.task == "causal-lm") {
      Graph cached = g;
      const KvCacheInfo kv = addKvCache(cached);  // throws unless prefill + steps reproduce the full logits
      CHECK(kv.layers == 2);
    }
    // linear layers are recognised in their ONNX forms (MatMul with a constant weight, Gemm), weights named
    const bool has_linear = z.name != "unet";
    CHECK(findLinears(g).empty() == !has_linear);
    for (const auto& l : findLinears(g)) CHECK(g.parameters.count(l.weight) == 1);
    record(z.name, "torch.onnx → IR", verdict(worst <= 1e-4, worst));
  }
}
