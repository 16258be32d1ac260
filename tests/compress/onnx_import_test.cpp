// onnx_import_test.cpp — ONNX in: the stories model exported by us and imported back computes the same
// perplexity and compresses the same as from TorchScript; Gemm becomes a linear layer; opset-18 Reduce
// axes; bad files are clear errors. (Every zoo family's torch.onnx file: zoo_test.cpp.)
#include <onnx/onnx_pb.h>

#include <fstream>
#include <functional>

#include "compress/error.h"
#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/npy.h"
#include "compress/onnx_import.h"
#include "export/onnx_export.h"
#include "quant/rtn.h"
#include "test_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>
#include "error_util.h"

using namespace compress;

namespace {

void save(const onnx::ModelProto& m, const std::string& path) {
  std::ofstream f(path, std::ios::binary);
  REQUIRE(m.SerializeToOstream(&f));
}

/// A model with one float input x [batch, 4] and the nodes `build` adds; opset `opset`.
onnx::ModelProto tinyModel(int opset, const std::function<void(onnx::GraphProto&)>& build) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(opset);
  onnx::GraphProto& g = *m.mutable_graph();
  g.set_name("tiny");
  auto* in = g.add_input();
  in->set_name("x");
  auto* tt = in->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(1);
  tt->mutable_shape()->add_dim()->set_dim_param("N");
  tt->mutable_shape()->add_dim()->set_dim_value(4);
  build(g);
  return m;
}

void floatInit(onnx::GraphProto& g, const std::string& name, const std::vector<int64_t>& dims, const std::vector<float>& v) {
  auto* t = g.add_initializer();
  t->set_name(name);
  t->set_data_type(1);
  for (int64_t d : dims) t->add_dims(d);
  for (float x : v) t->add_float_data(x);
}

/// `f` raises an Error of category `c` whose message holds every one of `parts`.
template <typename F>
void requireError(F&& f, ErrorCategory c, const std::vector<std::string>& parts) {
  std::string msg;
  CHECK(testutil::categoryOf(f, &msg) == c);
  INFO(msg);
  for (const auto& p : parts) CHECK(msg.find(p) != std::string::npos);
}

}  // namespace

TEST_CASE("onnx import: the stories model exported and imported back gives the TorchScript model's perplexity and int8", "[onnx-import]") {
  if (!testutil::requiredOrSkip(testutil::haveShared(), "../shared")) return;
  const std::string dir = testutil::tempDir("onnx_in");
  Graph pt = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  exportOnnx(pt, dir + "/stories.onnx");
  Graph ox = importOnnx(dir + "/stories.onnx");
  CHECK(ox.inputs == pt.inputs);
  CHECK(ox.outputs == pt.outputs);
  CHECK(findLinears(ox).size() == findLinears(pt).size());  // 35 linears + the tied classifier
  CHECK(ox.parameterCount() == pt.parameterCount());       // tied: one initializer, counted once
  LmWindows w = makeWindows(readTokenStream(testutil::shared("data/tinystories/val.tok512.npy")), 512, 4096);
  Executor a(pt), b(ox);
  const double p0 = perplexity(a, w, 1, false).value, p1 = perplexity(b, w, 1, false).value;
  CHECK(std::abs(p1 / p0 - 1) < 1e-6);
  // the same pass on both gives the same weights: names and layouts survived the round trip
  RtnOptions r;
  r.format = QuantFormat{8, -1, true};
  rtnQuantize(pt, r);
  rtnQuantize(ox, r);
  CHECK(ox.quant.size() == pt.quant.size());
  at::Tensor tok = at::arange(1, 65, at::kLong).reshape({1, 64});
  at::Tensor la = Executor(pt).run1(tok), lb = Executor(ox).run1(tok);
  CHECK((la - lb).abs().max().item<double>() <= 1e-5 * la.abs().max().item<double>());
}

TEST_CASE("onnx import: Gemm with transB, alpha and beta becomes a linear layer - opset-18 ReduceMean axes", "[onnx-import]") {
  const std::string dir = testutil::tempDir("onnx_gemm");
  auto m = tinyModel(18, [](onnx::GraphProto& g) {
    floatInit(g, "fc.weight", {3, 4}, {1, 2, 3, 4, -1, 0, 1, 0, 0.5f, 0.5f, 0.5f, 0.5f});
    floatInit(g, "fc.bias", {3}, {0.1f, -0.2f, 0.3f});
    auto* axes = g.add_initializer();
    axes->set_name("axes");
    axes->set_data_type(7);
    axes->add_dims(1);
    axes->add_int64_data(-1);
    auto* n = g.add_node();
    n->set_op_type("Gemm");
    n->add_input("x"), n->add_input("fc.weight"), n->add_input("fc.bias");
    n->add_output("y");
    auto* a = n->add_attribute();
    a->set_name("transB"), a->set_type(onnx::AttributeProto::INT), a->set_i(1);
    a = n->add_attribute();
    a->set_name("alpha"), a->set_type(onnx::AttributeProto::FLOAT), a->set_f(0.5f);
    a = n->add_attribute();
    a->set_name("beta"), a->set_type(onnx::AttributeProto::FLOAT), a->set_f(2.f);
    auto* r = g.add_node();
    r->set_op_type("ReduceMean");
    r->add_input("y"), r->add_input("axes");
    r->add_output("z");
    auto* o = g.add_output();
    o->set_name("z");
    o->mutable_type()->mutable_tensor_type()->set_elem_type(1);
  });
  save(m, dir + "/gemm.onnx");
  Graph g = importOnnx(dir + "/gemm.onnx");
  auto lin = findLinears(g);
  REQUIRE(lin.size() == 1);
  CHECK(lin[0].weight == "fc.weight");
  CHECK(lin[0].transposed);
  CHECK(g.parameters.count("fc.weight") == 1);
  CHECK(g.parameters.count("fc.bias") == 1);
  CHECK(g.values.at("x").shape->at(0).symbol == "batch");
  at::Tensor x = at::tensor({1.f, 2.f, 3.f, 4.f, 0.f, -1.f, 2.f, 1.f}).reshape({2, 4});
  at::Tensor W = g.initializers.at("fc.weight"), bias = g.initializers.at("fc.bias");
  at::Tensor want = (0.5 * at::matmul(x, W.t()) + 2.0 * bias).mean(-1, true);
  at::Tensor got = Executor(g).run1(x);
  CHECK(got.sizes() == want.sizes());
  CHECK((got - want).abs().max().item<double>() < 1e-6);
}

TEST_CASE("onnx import: bad files are clear errors", "[onnx-import]") {
  const std::string dir = testutil::tempDir("onnx_bad");
  SECTION("unsupported ops are listed at once") {
    auto m = tinyModel(17, [](onnx::GraphProto& g) {
      for (const char* op : {"FooBar", "FooBar", "Loop"}) {
        auto* n = g.add_node();
        n->set_op_type(op);
        n->add_input("x");
        n->add_output(std::string("o_") + std::to_string(g.node_size()));
      }
      auto* n = g.add_node();
      n->set_op_type("MatMulNBits");
      n->set_domain("com.microsoft");
      n->add_input("x");
      n->add_output("q");
      g.add_output()->set_name("q");
    });
    save(m, dir + "/ops.onnx");
    requireError([&] { importOnnx(dir + "/ops.onnx"); }, ErrorCategory::Model,
                           {"FooBar (2x)", "Loop (1x)", "com.microsoft.MatMulNBits whose weights are not plain initializers"});
  }
  SECTION("an opset outside 13-21") {
    save(tinyModel(11, [](onnx::GraphProto& g) { g.add_output()->set_name("x"); }), dir + "/old.onnx");
    requireError([&] { importOnnx(dir + "/old.onnx"); }, ErrorCategory::Model, {"opset 11", "version_converter"});
  }
  SECTION("not ONNX, missing, external data outside the folder") {
    std::ofstream(dir + "/junk.onnx") << "this is not a protobuf";
    requireError([&] { importOnnx(dir + "/junk.onnx"); }, ErrorCategory::Model, {"not an ONNX model"});
    requireError([&] { importOnnx(dir + "/missing.onnx"); }, ErrorCategory::Io, {"missing.onnx"});
    auto m = tinyModel(17, [](onnx::GraphProto& g) {
      auto* t = g.add_initializer();
      t->set_name("w");
      t->set_data_type(1);
      t->add_dims(4);
      t->set_data_location(onnx::TensorProto::EXTERNAL);
      auto* kv = t->add_external_data();
      kv->set_key("location"), kv->set_value("../../etc/passwd");
      auto* n = g.add_node();
      n->set_op_type("Add");
      n->add_input("x"), n->add_input("w");
      n->add_output("y");
      g.add_output()->set_name("y");
    });
    save(m, dir + "/ext.onnx");
    requireError([&] { importOnnx(dir + "/ext.onnx"); }, ErrorCategory::Model, {"outside the model's folder"});
  }
}

TEST_CASE("onnx import: quantized weights (QDQ int8, int4 blocks, convs, MatMulNBits) read back as the same quantized weights", "[onnx-import][quant]") {
  const std::string dir = testutil::tempDir("onnx_q");
  struct Case {
    const char* name;
    QuantFormat format;
    int opset;
    const char* int4;  // how blocked weights are written
  };
  for (const Case& c : {Case{"int8", QuantFormat{8, -1, true}, 17, "qdq"}, Case{"int8-asym", QuantFormat{8, -1, false}, 17, "qdq"},
                        Case{"int4-g16", QuantFormat{4, 16, false}, 21, "qdq"}, Case{"int4-g16-sym", QuantFormat{4, 16, true}, 21, "qdq"},
                        Case{"int4-g16-mnb", QuantFormat{4, 16, false}, 21, "matmulnbits"},
                        Case{"int4-g16-sym-mnb", QuantFormat{4, 16, true}, 21, "matmulnbits"},
                        Case{"int2-g16-mnb", QuantFormat{2, 16, false}, 21, "matmulnbits"}}) {
    for (const char* model : {"llama_block.pt", "zoo/resnet.pt"}) {
      INFO(c.name << " " << model);
      ImportOptions io;
      const bool cnn = std::string(model) == "zoo/resnet.pt";
      if (cnn) io.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(3), Dim::sym("height"), Dim::sym("width")}}};
      Graph g = importTorchScript(testutil::fixture(model), io);
      RtnOptions r;
      r.format = c.format;
      rtnQuantize(g, r);
      const std::string path = dir + "/" + c.name + (cnn ? "_resnet" : "_llama") + ".onnx";
      ExportOptions eo;
      eo.opset = c.opset;
      eo.int4 = c.int4;
      const auto written = exportOnnx(g, path, eo);
      INFO(written.dump());
      Graph back = importOnnx(path, io);
      CHECK(back.quant.size() == g.quant.size());
      for (const auto& [w, q] : g.quant) {
        INFO(w);
        REQUIRE(back.quant.count(w));
        // QDQ keeps fewer than 4 bits in 4-bit containers (UINT4/INT4), which is what the file says.
        bool linear = false;  // linears may be written as MatMulNBits (which keeps 2 bits), convs as QDQ
        for (const auto& l : findLinears(g)) linear = linear || l.weight == w;
        const bool qdq_written = std::string(c.int4) == "qdq" || !linear;
        CHECK(back.quant.at(w).bits == (q.bits < 4 && qdq_written ? 4 : q.bits));
        CHECK(back.quant.at(w).group_size == q.group_size);
        CHECK(back.quant.at(w).symmetric == q.symmetric);
        CHECK(back.quant.at(w).method == "onnx");
        CHECK(at::equal(back.initializers.at(w + ".qdata"), g.initializers.at(w + ".qdata")));  // the same integers
        CHECK(at::equal(back.initializers.at(w + ".scale"), g.initializers.at(w + ".scale")));
      }
      if (!cnn) CHECK(back.parameterBytes() == g.parameterBytes());  // (ONNX import counts BatchNorm statistics as parameters)
      at::Tensor x = cnn ? at::randn({2, 3, 20, 20}) : at::randint(0, 64, {2, 9}, at::kLong);
      at::Tensor a = Executor(g).run1(x), b = Executor(back).run1(x);
      CHECK((a - b).abs().max().item<double>() <= 1e-5 * a.abs().max().item<double>());
      // Quantizing what is already quantized is refused with the reason.
      RtnOptions again;
      again.format = QuantFormat{4, 32, false};
      CHECK_THROWS_WITH(rtnQuantize(back, again), Catch::Contains("already quantized") && Catch::Contains("as the ONNX file stores it"));
    }
  }
}
