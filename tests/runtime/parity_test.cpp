// parity_test.cpp — the runtime against our executor on every export format of every fixture family
// (MLP, GPT-2 block, LLaMA block, CNN) and on stories260K (logits and perplexity).
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/npy.h"
#include "export/onnx_export.h"
#include "prune/magnitude_prune.h"
#include "quant/fp16.h"
#include "quant/rtn.h"
#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"
#include "test_util.h"
#include "crt_run.h"

using namespace compress;
using testutil::runCrt;

namespace {

struct Family {
  std::string file;
  InputSpec spec;
  std::vector<int64_t> shape;
  bool tokens;
  int group;
};

std::vector<Family> families() {
  return {
      {"mlp.pt", {"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}, {3, 12}, false, 16},
      {"gpt2_block.pt", {"idx", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}, {2, 7}, true, 16},
      {"llama_block.pt", {"tokens", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}, {2, 9}, true, 16},
      {"cnn.pt", {"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(3), Dim::fixed(16), Dim::fixed(16)}},
       {2, 3, 16, 16}, false, 16},
  };
}

/// Applies one export format; returns false when the format does not apply to the model (no linears).
Graph inFormat(Graph g, const std::string& fmt, int group, ExportOptions& eo) {
  RtnOptions r;
  if (fmt == "fp16") convertToFp16(g);
  if (fmt == "int8") rtnQuantize(g, r);
  if (fmt == "int8-asym") r.format = QuantFormat{8, -1, false}, rtnQuantize(g, r);
  if (fmt == "int2-g16") r.format = QuantFormat{2, group, false}, rtnQuantize(g, r);
  if (fmt == "int3-g16") r.format = QuantFormat{3, group, true}, rtnQuantize(g, r);
  if (fmt == "int4-mnb" || fmt == "int4-qdq" || fmt == "int4-sym") r.format = QuantFormat{4, group, fmt != "int4-sym"}, rtnQuantize(g, r);
  if (fmt == "pruned50") magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, {}});
  eo.int4 = fmt == "int4-qdq" ? "qdq" : "matmulnbits";
  g.pruneUnused();
  return g;
}


double pplOf(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor lp = at::log_softmax(logits.to(at::kDouble), -1).gather(-1, targets.unsqueeze(-1));
  return std::exp(-lp.mean().item<double>());
}

}  // namespace

TEST_CASE("runtime outputs equal the executor's on every export format of every model family - unfused, and on the emulated device, the same bits - a GPU within 1e-4 (fp16 1e-2)", "[runtime][parity][device]") {
  const std::vector<std::string> formats = {"fp32", "fp16", "int8", "int8-asym", "int4-mnb", "int4-qdq", "int4-sym",
                                            "int3-g16", "int2-g16", "pruned50"};
  std::string why;
  const bool gpu = crt::detail::cudaDeviceCount(&why) > 0;
  if (!gpu) WARN("CUDA legs skipped: " << why);
  std::string dir = testutil::tempDir("");
  for (const auto& f : families()) {
    ImportOptions io;
    io.inputs = {f.spec};
    Graph base = importTorchScript(testutil::fixture(f.file), io);
    at::manual_seed(7);
    at::Tensor x = f.tokens ? at::randint(0, 64, f.shape, at::kLong) : at::randn(f.shape);
    std::map<std::string, at::Tensor> inputs = {{f.spec.name, x}};
    for (const auto& fmt : formats) {
      INFO(f.file << " as " << fmt);
      ExportOptions eo;
      Graph g = inFormat(base, fmt, f.group, eo);
      std::string path = dir + "/m.onnx";
      exportOnnx(g, path, eo);
      at::Tensor want = Executor(g).run(inputs)[0].to(at::kFloat);
      for (bool simd : {true, false}) {
        INFO("simd " << simd);
        at::Tensor got = runCrt(path, inputs, 2, simd)[0];
        REQUIRE(got.sizes() == want.sizes());
        double diff = (got - want).abs().max().item<double>();
        double scale = want.abs().max().item<double>();
        if (fmt == "fp16") CHECK(diff <= 1e-2 * std::max(scale, 1.0));
        else CHECK(diff <= 1e-4 * std::max(scale, 1.0));
      }
      crt::SessionOptions so;
      so.threads = 2;
      const at::Tensor cpu = testutil::runCrtWith(path, inputs, so)[0];
      so.fuse = false;  // the fused RMSNorm / SiLU-multiply give the chains' bits
      CHECK(at::equal(testutil::runCrtWith(path, inputs, so)[0], cpu));
      so.fuse = true;
      so.device = crt::Device::Emulated;
      crt::SessionInfo info;
      CHECK(at::equal(testutil::runCrtWith(path, inputs, so, &info)[0], cpu));
      CHECK(info.device_nodes > 0);  // (fp16 graphs too: their activations are float16 on the device)
      if (gpu) {
        so.device = crt::Device::Cuda;
        const at::Tensor got = testutil::runCrtWith(path, inputs, so, &info)[0];
        INFO(info.device << ": " << info.device_nodes << " nodes, " << info.device_copies << " copies");
        // (fp16: each op's result is rounded to 11 bits, so the GPU's other summation order shows more)
        CHECK((got - cpu).abs().max().item<double>() <= (fmt == "fp16" ? 1e-2 : 1e-4) * std::max(cpu.abs().max().item<double>(), 1.0));
      }
    }
  }
}

TEST_CASE("stories260K through the runtime: logits and perplexity equal the executor's in fp32, int8 and int4", "[runtime][parity][shared]") {
  if (!testutil::haveShared()) return;
  Graph base = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  auto stream = readTokenStream(testutil::shared("data/tinystories/val.tok512.npy"));
  LmWindows w = makeWindows(stream, 256, 2048);  // 8 windows of 256
  std::string dir = testutil::tempDir("");
  for (const std::string fmt : {"fp32", "int8", "int4-mnb"}) {
    INFO(fmt);
    ExportOptions eo;
    Graph g = fmt == "fp32" ? base : inFormat(base, fmt, 32, eo);
    std::string path = dir + "/s.onnx";
    exportOnnx(g, path, eo);
    Executor ex(g);
    at::Tensor want = ex.run({{"tokens", w.inputs}})[0];
    at::Tensor got = runCrt(path, {{"tokens", w.inputs}}, 2)[0];
    CHECK((got - want).abs().max().item<double>() <= 1e-4);
    double pw = pplOf(want, w.targets), pg = pplOf(got, w.targets);
    CHECK(std::abs(pg / pw - 1) <= 1e-3);
    if (fmt == "fp32") CHECK(pg == Approx(4.08).margin(0.5));
  }
}

TEST_CASE("the runtime reads external-data exports and reports a missing or short data file", "[runtime][parity]") {
  ImportOptions io;
  io.inputs = {{"tokens", DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}}};
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"), io);
  std::string dir = testutil::tempDir("");
  ExportOptions ext;
  ext.external_data = true;
  exportOnnx(g, dir + "/ext.onnx", ext);
  at::Tensor x = at::randint(0, 64, {2, 5}, at::kLong);
  at::Tensor want = Executor(g).run({{"tokens", x}})[0];
  at::Tensor got = runCrt(dir + "/ext.onnx", {{"tokens", x}}, 1)[0];
  CHECK((got - want).abs().max().item<double>() <= 1e-4);
  std::filesystem::resize_file(dir + "/ext.onnx.data", 100);
  auto s = crt::Session::create(dir + "/ext.onnx");
  CHECK(s.status().code == crt::StatusCode::ModelError);
  CHECK_THAT(s.status().message, Catch::Matchers::Contains("external data file"));
  std::filesystem::remove(dir + "/ext.onnx.data");
  CHECK(crt::Session::create(dir + "/ext.onnx").status().code == crt::StatusCode::IoError);
}
