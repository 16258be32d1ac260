// hostile_test.cpp — the runtime against crafted models and inputs (docs/security.md): sizes that wrap,
// data that is not there, names defined twice, attributes out of range, external data outside the model's
// folder, limits. Each case gets its exact Status code and a message that names the problem; none crashes
// (the sanitizer job runs these under ASan+UBSan). Each case was a crash or a wrong answer before the fix.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "runtime/crt.h"
#include "runtime/internal.h"
#include "tests/runtime/model_builder.h"

using Catch::Matchers::Contains;

namespace {

constexpr int64_t k2to32 = int64_t{1} << 32;

crt::Status createStatus(const std::string& path, crt::SessionOptions o = {}) {
  auto s = crt::Session::create(path, o);
  return s.ok() ? crt::Status::Ok() : s.status();
}

/// y = Identity(W) for an initializer W with the given dims and raw bytes.
std::string constantModel(const std::string& tag, std::vector<int64_t> dims, const std::string& raw) {
  ModelBuilder b;
  b.io(false, "y", 1, {});
  auto* t = b.g->add_initializer();
  t->set_name("W");
  t->set_data_type(1);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(raw);
  b.io(true, "x", 1, {"1"});
  b.node("Add", {"x", "W"}, {"y"});
  return b.save(tag);
}

std::string tempDir(const std::string& tag) {
  std::string d = "/tmp/crt-hostile-" + tag + "-" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("crafted sizes: dims whose product wraps, negative and huge dims are model errors", "[runtime][hostile]") {
  // [2^32, 2^32] floats wrap to 0 elements: with 0 bytes of data this used to load and overflow the heap.
  crt::Status st = createStatus(constantModel("wrap0", {k2to32, k2to32}, ""));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("2^48"));
  st = createStatus(constantModel("wrapneg", {k2to32 + 1, k2to32 - 1}, std::string(4, '\0')));
  CHECK(st.code == crt::StatusCode::ModelError);
  st = createStatus(constantModel("negdim", {-3}, ""));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("negative dim"));
  // a zero dim does not hide the others: [0, 2^40, 2^40] is refused too (partial products would overflow)
  st = createStatus(constantModel("zerohides", {0, int64_t{1} << 40, int64_t{1} << 40}, ""));
  CHECK(st.code == crt::StatusCode::ModelError);
}

TEST_CASE("data lengths are checked before anything is allocated", "[runtime][hostile]") {
  // 82-byte model: a 1 GiB tensor with 4 bytes of data. The loader used to allocate and zero 1 GiB first.
  const int64_t before = crt::detail::allocationCount();
  crt::Status st = createStatus(constantModel("short", {268435456}, std::string(4, '\0')));
  CHECK(crt::detail::allocationCount() == before);
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("raw data has 4 bytes") && Contains("1073741824"));
  // typed data: too few values
  ModelBuilder b;
  b.io(true, "x", 7, {"2"});
  b.io(false, "y", 7, {"2"});
  b.initI("c", {2}, {5});
  b.node("Add", {"x", "c"}, {"y"});
  st = createStatus(b.save("typedshort"));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("holds 1 values"));
}

TEST_CASE("the memory limits refuse a model or an input that asks for too much", "[runtime][hostile]") {
  // Expand a scalar to [2^15, 2^15] float32: 4 GiB from a few bytes of model
  ModelBuilder b;
  b.io(true, "x", 1, {"1"});
  b.io(false, "y", 1, {"32768", "32768"});
  b.initI("shape", {2}, {32768, 32768});
  b.node("Expand", {"x", "shape"}, {"y"});
  const std::string path = b.save("expand");
  crt::SessionOptions o;
  o.max_tensor_bytes = 1 << 20;
  auto s = crt::Session::create(path, o);
  REQUIRE(s.ok());
  float x = 1;
  std::vector<crt::TensorView> out;
  crt::Status st = s->run({{"x", crt::TensorView::of(&x, {1})}}, out);
  CHECK(st.code == crt::StatusCode::DataError);
  CHECK_THAT(st.message, Contains("Expand") && Contains("limit for one tensor"));
  // the total: two 768 KiB outputs under a 1 MiB total
  o.max_tensor_bytes = 1 << 20;
  o.max_total_bytes = 1 << 20;
  ModelBuilder b2;
  b2.io(true, "x", 1, {"1"});
  b2.io(false, "y", 1, {"196608"});
  b2.io(false, "z", 1, {"196608"});
  b2.initI("shape", {1}, {196608});
  b2.node("Expand", {"x", "shape"}, {"y"});
  b2.node("Neg", {"y"}, {"z"});
  auto s2 = crt::Session::create(b2.save("total"), o);
  REQUIRE(s2.ok());
  st = s2->run({{"x", crt::TensorView::of(&x, {1})}}, out);
  CHECK(st.code == crt::StatusCode::DataError);
  CHECK_THAT(st.message, Contains("max_total_bytes"));
  // inputs: a crafted input shape of a symbolic-dim model is refused before any op runs
  std::vector<float> big(4);
  ModelBuilder b3;
  b3.io(true, "x", 1, {"n", "m"});
  b3.io(false, "y", 1, {"n", "m"});
  b3.node("Relu", {"x"}, {"y"});
  auto s4 = crt::Session::create(b3.save("symbolic"), {});
  REQUIRE(s4.ok());
  st = s4->run({{"x", crt::TensorView{crt::DType::F32, {k2to32, k2to32}, big.data()}}}, out);
  CHECK(st.code == crt::StatusCode::InvalidArgument);
  CHECK_THAT(st.message, Contains("2^48"));
  st = s4->run({{"x", crt::TensorView{crt::DType::F32, {int64_t{1} << 24, int64_t{1} << 24}, big.data()}}}, out);
  CHECK(st.code == crt::StatusCode::InvalidArgument);
}

TEST_CASE("a Reshape to a wrapped shape is a data error, not an output with a lying shape", "[runtime][hostile]") {
  ModelBuilder b;
  b.io(true, "x", 1, {"0"});
  b.io(false, "y", 1, {});
  b.initI("shape", {3}, {k2to32, k2to32, 0});
  auto* r = b.node("Reshape", {"x", "shape"}, {"y"});
  attrInt(r, "allowzero", 1);
  auto s = crt::Session::create(b.save("reshape"), {});
  REQUIRE(s.ok());
  std::vector<crt::TensorView> out;
  float dummy = 0;
  crt::Status st = s->run({{"x", crt::TensorView{crt::DType::F32, {0}, &dummy}}}, out);
  CHECK(st.code == crt::StatusCode::DataError);
  CHECK_THAT(st.message, Contains("Reshape") && Contains("overflows"));
}

TEST_CASE("every name is defined once: initializer, graph input and node outputs", "[runtime][hostile]") {
  {  // a node output that is also an initializer
    ModelBuilder b;
    b.io(true, "x", 1, {"2"});
    b.io(false, "y", 1, {"2"});
    b.initF("W", {2}, {1, 2});
    b.node("Relu", {"x"}, {"W"});
    b.node("Add", {"x", "W"}, {"y"});
    crt::Status st = createStatus(b.save("dup-init"));
    CHECK(st.code == crt::StatusCode::ModelError);
    CHECK_THAT(st.message, Contains("'W' is defined twice") && Contains("an initializer"));
  }
  {  // a node output that is a graph input
    ModelBuilder b;
    b.io(true, "x", 1, {"2"});
    b.io(false, "y", 1, {"2"});
    b.node("Relu", {"x"}, {"x"});
    b.node("Neg", {"x"}, {"y"});
    crt::Status st = createStatus(b.save("dup-input"));
    CHECK(st.code == crt::StatusCode::ModelError);
    CHECK_THAT(st.message, Contains("'x' is defined twice") && Contains("a graph input"));
  }
  {  // two nodes writing one name
    ModelBuilder b;
    b.io(true, "x", 1, {"2"});
    b.io(false, "y", 1, {"2"});
    b.node("Relu", {"x"}, {"y"});
    b.node("Neg", {"x"}, {"y"});
    crt::Status st = createStatus(b.save("dup-node"));
    CHECK(st.code == crt::StatusCode::ModelError);
    CHECK_THAT(st.message, Contains("'y' is defined twice"));
  }
}

TEST_CASE("attribute ranges are checked at load: block sizes, axes, kernel geometry", "[runtime][hostile]") {
  auto withAttr = [](const std::string& op, std::vector<std::string> in, const std::string& k, int64_t v) {
    ModelBuilder b;
    b.io(true, "x", 3, {"4"});
    b.io(false, "y", 1, {"4"});
    b.initF("s", {1}, {0.5f});
    auto* n = b.node(op, in, {"y"});
    attrInt(n, k, v);
    return createStatus(b.save(op + k));
  };
  crt::Status st = withAttr("DequantizeLinear", {"x", "s"}, "block_size", -3);
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("block_size") && Contains("-3"));
  st = withAttr("Softmax", {"x"}, "axis", INT64_MIN);
  CHECK(st.code == crt::StatusCode::ModelError);
  ModelBuilder b;
  b.io(true, "x", 1, {"1", "1", "4", "4"});
  b.io(false, "y", 1, {"1", "1", "2", "2"});
  auto* p = b.node("MaxPool", {"x"}, {"y"});
  attrInts(p, "kernel_shape", {2, 2});
  attrInts(p, "strides", {0, 2});
  st = createStatus(b.save("pool-stride0"));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("strides"));
}

TEST_CASE("MatMulNBits attributes that overflow are model errors", "[runtime][hostile]") {
  ModelBuilder b;
  b.io(true, "x", 1, {"1", "32"});
  b.io(false, "y", 1, {"1", "4"});
  auto* t = b.g->add_initializer();
  t->set_name("B");
  t->set_data_type(2);
  t->add_dims(1);
  t->set_raw_data(std::string(1, '\0'));
  b.initF("S", {1}, {1.f});
  auto* n = b.node("MatMulNBits", {"x", "B", "S"}, {"y"});
  n->set_domain("com.microsoft");
  attrInt(n, "K", int64_t{1} << 40);
  attrInt(n, "N", int64_t{1} << 40);
  attrInt(n, "bits", 4);
  attrInt(n, "block_size", 32);
  crt::Status st = createStatus(b.save("mnb"));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("too large"));
}

TEST_CASE("Slice with extreme steps and bounds computes the right elements", "[runtime][hostile]") {
  ModelBuilder b;
  b.io(true, "x", 1, {"5"});
  b.io(false, "y", 1, {"1"});
  b.io(false, "z", 1, {"1"});
  b.initI("s0", {1}, {0});
  b.initI("e0", {1}, {INT64_MAX});
  b.initI("st0", {1}, {INT64_MAX});
  b.initI("s1", {1}, {-1});
  b.initI("e1", {1}, {INT64_MIN});
  b.initI("st1", {1}, {INT64_MIN});
  b.initI("ax", {1}, {0});
  b.node("Slice", {"x", "s0", "e0", "ax", "st0"}, {"y"});
  b.node("Slice", {"x", "s1", "e1", "ax", "st1"}, {"z"});
  auto s = crt::Session::create(b.save("slice"), {});
  REQUIRE(s.ok());
  std::vector<float> x = {1, 2, 3, 4, 5};
  auto r = s->run({{"x", crt::TensorView::of(x.data(), {5})}});
  REQUIRE(r.ok());
  REQUIRE(r.value()[0].shape == std::vector<int64_t>{1});
  CHECK(r.value()[0].as<float>()[0] == 1.f);
  REQUIRE(r.value()[1].shape == std::vector<int64_t>{1});
  CHECK(r.value()[1].as<float>()[0] == 5.f);
}

TEST_CASE("DequantizeLinear with a scale that does not fit its input is a data error", "[runtime][hostile]") {
  ModelBuilder b;
  b.io(true, "q", 3, {"8"});
  b.io(false, "y", 1, {"8"});
  b.initF("s", {3}, {1, 2, 3});
  auto* n = b.node("DequantizeLinear", {"q", "s"}, {"y"});
  attrInt(n, "axis", 0);
  auto s = crt::Session::create(b.save("dq"), {});
  REQUIRE(s.ok());
  std::vector<int8_t> q(8, 1);
  auto r = s->run({{"q", crt::TensorView::of(q.data(), {8})}});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code == crt::StatusCode::DataError);
  CHECK_THAT(r.status().message, Contains("scale has 3 values"));
}

TEST_CASE("Split sizes out of range are a data error, not a read past the input", "[runtime][hostile]") {
  // sizes {7, -2} add up to the axis' 5: the first part would copy 7 rows of 5
  for (const auto& sizes : std::vector<std::vector<int64_t>>{{7, -2}, {-1, 6}}) {
    ModelBuilder b;
    b.io(true, "x", 1, {"5", "4"});
    b.io(false, "a", 1, {});
    b.io(false, "b", 1, {});
    b.initI("sizes", {2}, sizes);
    attrInt(b.node("Split", {"x", "sizes"}, {"a", "b"}), "axis", 0);
    auto s = crt::Session::create(b.save("split-hostile"), {});
    REQUIRE(s.ok());
    std::vector<float> x(20, 1.f);
    auto r = s->run({{"x", crt::TensorView::of(x.data(), {5, 4})}});
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code == crt::StatusCode::DataError);
    CHECK_THAT(r.status().message, Contains("is outside [0, 5]"));
  }
}

TEST_CASE("external data: bad offsets, short files, paths and links outside the model's folder", "[runtime][hostile]") {
  const std::string dir = tempDir("ext"), outside = tempDir("ext-outside");
  {
    std::ofstream(dir + "/w.bin", std::ios::binary) << std::string(16, '\0');
    std::ofstream(outside + "/secret.bin", std::ios::binary) << std::string(16, '\0');
  }
  auto model = [&](const std::string& location, const std::string& offset) {
    ModelBuilder b;
    b.io(true, "x", 1, {"4"});
    b.io(false, "y", 1, {"4"});
    auto* t = b.g->add_initializer();
    t->set_name("W");
    t->set_data_type(1);
    t->add_dims(4);
    t->set_data_location(onnx::TensorProto::EXTERNAL);
    auto* kv = t->add_external_data();
    kv->set_key("location");
    kv->set_value(location);
    if (!offset.empty()) {
      kv = t->add_external_data();
      kv->set_key("offset");
      kv->set_value(offset);
    }
    b.node("Add", {"x", "W"}, {"y"});
    const std::string path = dir + "/m.onnx";
    std::ofstream f(path, std::ios::binary);
    b.m.SerializeToOstream(&f);
    return path;
  };
  CHECK(createStatus(model("w.bin", "")).ok());
  crt::Status st = createStatus(model("w.bin", "12abc"));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("not a non-negative integer"));
  st = createStatus(model("w.bin", "8"));  // 8 + 16 > 16 bytes
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("shorter than the tensor"));
  st = createStatus(model("../ext-outside/secret.bin", ""));
  CHECK(st.code == crt::StatusCode::ModelError);
  st = createStatus(model(outside + "/secret.bin", ""));
  CHECK(st.code == crt::StatusCode::ModelError);
  std::filesystem::create_symlink(outside + "/secret.bin", dir + "/link.bin");
  st = createStatus(model("link.bin", ""));
  CHECK(st.code == crt::StatusCode::ModelError);
  CHECK_THAT(st.message, Contains("leads outside the model's folder"));
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(outside);
}

TEST_CASE("a folder or a device given as the model is a clear i/o error", "[runtime][hostile]") {
  crt::Status st = createStatus("/tmp");
  CHECK(st.code == crt::StatusCode::IoError);
  CHECK_THAT(st.message, Contains("is a folder"));
  st = createStatus("/dev/zero");
  CHECK(st.code == crt::StatusCode::IoError);
  CHECK_THAT(st.message, Contains("not a regular file"));
  st = createStatus("/nonexistent/m.onnx");
  CHECK(st.code == crt::StatusCode::IoError);
}

TEST_CASE("max_run_ms stops a run between nodes, and the session runs shorter inputs after it", "[runtime][hostile]") {
  // 200 MatMuls of [2048, 256] x [256, 256]: 27 GMAC, at least 0.25 s on any CPU this runs on; 1 row: 13 MMAC, about
  // 25 ms in the ASan build on a busy 2-core VM (at 400 nodes and a 50 ms limit it once took 52 ms there)
  const std::string path = matmulChain("slow", 200, false);
  crt::SessionOptions o;
  o.threads = 1;
  o.max_run_ms = 150;
  auto s = crt::Session::create(path, o);
  REQUIRE(s.ok());
  std::vector<float> x(2048 * 256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 256) / 128.f;  // every row's mean is 255/256
  std::vector<crt::TensorView> out;
  crt::Status st = s->run({{"x", crt::TensorView::of(x.data(), {2048, 256})}}, out);
  CHECK(st.code == crt::StatusCode::Stopped);
  CHECK_THAT(st.message, Contains("the run stopped before MatMul node") && Contains("150 ms limit (SessionOptions::max_run_ms"));
  st = s->run({{"x", crt::TensorView::of(x.data(), {1, 256})}}, out);
  INFO(st.message);
  REQUIRE(st.ok());
  REQUIRE(out[0].shape == std::vector<int64_t>{1, 256});
  for (int j = 0; j < 256; ++j) CHECK(out[0].as<float>()[j] == Approx(255.f / 256).epsilon(1e-4));
  o.max_run_ms = -1;
  CHECK(crt::Session::create(path, o).status().code == crt::StatusCode::InvalidArgument);
}

TEST_CASE("max_run_ms bounds the load's constant folding too", "[runtime][hostile]") {
  crt::SessionOptions o;
  o.threads = 1;
  o.max_run_ms = 20;
  auto s = crt::Session::create(matmulChain("foldshort", 2, true), o);  // the same graph, short: folds in time
  INFO(s.status().message);
  REQUIRE(s.ok());
  CHECK(s->info().folded == 2);
  // 400 constant MatMuls of [1024, 256] x [256, 256] at load
  const crt::Status st = createStatus(matmulChain("foldlong", 400, true, 1024), o);
  CHECK(st.code == crt::StatusCode::Stopped);
  CHECK_THAT(st.message, Contains("folding constants at load stopped before MatMul node") && Contains("max_run_ms"));
}
