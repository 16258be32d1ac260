// session_test.cpp — the Session API on small ONNX graphs built here: values against hand computation,
// memory plans (no allocation on a planned run, several shapes), and every kind of bad input as a Status.
#include <onnx/onnx_pb.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <tuple>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/internal.h"
#include "runtime/model_file.h"
#include "runtime/op_geometry.h"
#include "runtime/thread_pool.h"
#include "tests/runtime/model_builder.h"

using Catch::Matchers::Contains;

namespace {

/// y = softmax(x @ W + b) over the last axis, reshaped through Shape/Gather/Concat arithmetic (static nodes).
std::string smallModel() {
  ModelBuilder b;
  b.io(true, "x", 1, {"batch", "3"});
  b.io(false, "y", 1, {"batch", "2"});
  b.initF("W", {3, 2}, {1, 2, 3, 4, 5, 6});
  b.initF("b", {2}, {0.5f, -0.5f});
  b.initI("zero", {1}, {0});
  b.initI("minus1", {1}, {-1});
  b.node("MatMul", {"x", "W"}, {"xw"});
  b.node("Add", {"xw", "b"}, {"z"});
  b.node("Shape", {"x"}, {"s"});
  auto* gth = b.node("Gather", {"s", "zero"}, {"n"});
  attrInt(gth, "axis", 0);
  auto* cat = b.node("Concat", {"n", "minus1"}, {"shape"});
  attrInt(cat, "axis", 0);
  b.node("Reshape", {"z", "shape"}, {"z2"});
  auto* sm = b.node("Softmax", {"z2"}, {"y"});
  attrInt(sm, "axis", -1);
  return b.save("small");
}

std::vector<float> expected(const std::vector<float>& x) {
  const float W[6] = {1, 2, 3, 4, 5, 6}, bias[2] = {0.5f, -0.5f};
  std::vector<float> y;
  for (size_t r = 0; r < x.size() / 3; ++r) {
    float z[2];
    for (int n = 0; n < 2; ++n) z[n] = x[r * 3] * W[n] + x[r * 3 + 1] * W[2 + n] + x[r * 3 + 2] * W[4 + n] + bias[n];
    float m = std::max(z[0], z[1]), e0 = std::exp(z[0] - m), e1 = std::exp(z[1] - m);
    y.push_back(e0 / (e0 + e1));
    y.push_back(e1 / (e0 + e1));
  }
  return y;
}

}  // namespace

TEST_CASE("a session computes the right values, a planned run allocates nothing, one plan per shape", "[runtime][session]") {
  auto s = crt::Session::create(smallModel(), {2});
  REQUIRE(s.ok());
  CHECK(s->inputs().size() == 1);
  CHECK(s->inputs()[0].dim_names[0] == "batch");
  CHECK(s->info().packed_matmuls == 1);
  std::vector<float> x2 = {0.1f, -0.2f, 0.3f, 1, 0, -1};
  std::vector<float> x3 = {0.5f, 0.5f, 0.5f, -1, 2, 0.25f, 0, 0, 1};
  std::vector<crt::TensorView> out;
  for (int round = 0; round < 3; ++round) {
    for (const auto* x : {&x2, &x3}) {
      const int64_t rows = static_cast<int64_t>(x->size() / 3);
      std::vector<std::pair<std::string, crt::TensorView>> feeds = {{"x", crt::TensorView::of(x->data(), {rows, 3})}};
      const int64_t before = crt::detail::allocationCount();
      REQUIRE(s->run(feeds, out).ok());
      if (round > 0) CHECK(crt::detail::allocationCount() == before);  // planned: no new buffers
      REQUIRE(out.size() == 1);
      CHECK(out[0].shape == std::vector<int64_t>{rows, 2});
      auto want = expected(*x);
      for (size_t i = 0; i < want.size(); ++i) CHECK(out[0].as<float>()[i] == Approx(want[i]).epsilon(1e-6));
    }
  }
  // the owning convenience overload gives the same values
  auto owned = s->run({{"x", crt::TensorView::of(x2.data(), {2, 3})}});
  REQUIRE(owned.ok());
  CHECK(owned.value()[0].as<float>()[1] == Approx(expected(x2)[1]));
}

TEST_CASE("repeated subexpressions are merged at load: same op, attributes and inputs (equal constants by content), not graph outputs", "[runtime][session]") {
  // two layers' copies of the same rotary arithmetic: Mul(x, c) -> Cos, with c written twice; a Softmax over another
  // axis and a Mul by another constant are not repeats; y2 is a graph output that repeats y1's node
  ModelBuilder b;
  b.io(true, "x", 1, {"2", "3"});
  b.io(false, "y", 1, {"2", "3"});
  b.io(false, "y2", 1, {"2", "3"});
  b.initF("c1", {3}, {0.5f, 1.f, 2.f});
  b.initF("c2", {3}, {0.5f, 1.f, 2.f});  // the same bytes as c1
  b.initF("c3", {3}, {0.5f, 1.f, 3.f});  // not
  b.node("Mul", {"x", "c1"}, {"a1"});
  b.node("Mul", {"x", "c2"}, {"a2"});    // repeats a1 (merged)
  b.node("Mul", {"x", "c3"}, {"a3"});
  b.node("Cos", {"a1"}, {"k1"});
  b.node("Cos", {"a2"}, {"k2"});         // repeats k1 once a2 is a1 (merged)
  attrInt(b.node("Softmax", {"k1"}, {"s1"}), "axis", 1);
  attrInt(b.node("Softmax", {"k2"}, {"s2"}), "axis", 0);  // another axis: kept
  attrInt(b.node("Softmax", {"k2"}, {"s3"}), "axis", 1);  // repeats s1 (merged)
  b.node("Add", {"s1", "s2"}, {"t"});
  b.node("Add", {"t", "s3"}, {"u"});
  b.node("Add", {"u", "a3"}, {"y"});
  b.node("Add", {"u", "a3"}, {"y2"});    // a graph output: kept under its name
  const std::string model = b.save("merge");
  auto s = crt::Session::create(model);
  INFO(s.status().message);
  REQUIRE(s.ok());
  CHECK(s->info().merged == 3);
  const std::vector<float> x = {0.1f, -0.7f, 1.3f, 2.f, 0.f, -1.5f};
  auto out = s->run({{"x", crt::TensorView::of(x.data(), {2, 3})}});
  REQUIRE(out.ok());
  REQUIRE(out.value().size() == 2);
  const float* y = reinterpret_cast<const float*>(out.value()[0].bytes.data());
  CHECK(out.value()[0].bytes == out.value()[1].bytes);
  const float c1[3] = {0.5f, 1.f, 2.f}, c3[3] = {0.5f, 1.f, 3.f};
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j) {
      float k[2][3];
      for (int rr = 0; rr < 2; ++rr)
        for (int jj = 0; jj < 3; ++jj) k[rr][jj] = std::cos(x[rr * 3 + jj] * c1[jj]);
      double rowSum = 0, colSum = 0;
      for (int jj = 0; jj < 3; ++jj) rowSum += std::exp(k[r][jj]);
      for (int rr = 0; rr < 2; ++rr) colSum += std::exp(k[rr][j]);
      const double want = 2 * std::exp(k[r][j]) / rowSum + std::exp(k[r][j]) / colSum + x[r * 3 + j] * c3[j];
      CHECK(y[r * 3 + j] == Approx(want).epsilon(1e-5));
    }
}

TEST_CASE("bad inputs to run() are Status errors, never exceptions", "[runtime][session][errors]") {
  auto s = crt::Session::create(smallModel());
  REQUIRE(s.ok());
  std::vector<float> x = {1, 2, 3};
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<crt::TensorView> out;
  auto st = s->run({{"nope", crt::TensorView::of(x.data(), {1, 3})}}, out);
  CHECK(st.code == crt::StatusCode::InvalidArgument);
  CHECK_THAT(st.message, Contains("missing input 'x'"));
  st = s->run({{"x", crt::TensorView::of(ids.data(), {1, 3})}}, out);
  CHECK_THAT(st.message, Contains("must be float32, got int64"));
  st = s->run({{"x", crt::TensorView::of(x.data(), {3})}}, out);
  CHECK_THAT(st.message, Contains("must have rank 2"));
  st = s->run({{"x", crt::TensorView::of(x.data(), {1, 4})}}, out);
  CHECK_THAT(st.message, Contains("dim 1 must be 3, got 4"));
  st = s->run({}, out);
  CHECK_THAT(st.message, Contains("takes 1 input(s), got 0"));
  CHECK(s->run({{"x", crt::TensorView::of(x.data(), {1, 3})}}, out).ok());  // still usable
}

TEST_CASE("model errors: missing file, garbage, unsupported ops (all listed), bad initializers, bad options", "[runtime][session][errors]") {
  auto s = crt::Session::create("/nonexistent/model.onnx");
  CHECK(s.status().code == crt::StatusCode::IoError);
  CHECK_THAT(s.status().message, Contains("cannot open /nonexistent/model.onnx"));

  std::string garbage = "/tmp/crt-test-garbage.onnx";
  std::ofstream(garbage) << "this is not a protobuf \x01\x02\xff";
  s = crt::Session::create(garbage);
  CHECK(s.status().code == crt::StatusCode::ModelError);
  CHECK_THAT(s.status().message, Contains("not a valid ONNX model"));

  ModelBuilder b;
  b.io(true, "x", 1, {"2"});
  b.io(false, "y", 1, {"2"});
  b.node("Frobnicate", {"x"}, {"a"});
  b.node("Frobnicate", {"a"}, {"c"});
  b.node("NonMaxSuppression", {"c"}, {"y"});
  s = crt::Session::create(b.save("unsupported"));
  CHECK(s.status().code == crt::StatusCode::ModelError);
  CHECK_THAT(s.status().message, Contains("Frobnicate (x2)") && Contains("NonMaxSuppression (x1)") && Contains("2 op type(s)"));

  ModelBuilder t;
  t.io(true, "x", 1, {"2"});
  t.io(false, "y", 1, {"2"});
  auto* init = t.g->add_initializer();
  init->set_name("w");
  init->set_data_type(1);
  init->add_dims(2);
  init->set_raw_data("abc");  // 3 bytes for 2 floats
  t.node("Add", {"x", "w"}, {"y"});
  s = crt::Session::create(t.save("badinit"));
  CHECK_THAT(s.status().message, Contains("raw data has 3 bytes") && Contains("needs 8"));

  ModelBuilder u;
  u.io(true, "x", 1, {"2"});
  u.io(false, "y", 1, {"2"});
  u.node("Add", {"x", "ghost"}, {"y"});
  s = crt::Session::create(u.save("undefined"));
  CHECK_THAT(s.status().message, Contains("reads 'ghost', which no earlier node"));

  crt::SessionOptions bad;
  bad.threads = -1;
  CHECK(crt::Session::create(smallModel(), bad).status().code == crt::StatusCode::InvalidArgument);
}

TEST_CASE("data errors inside ops name the node: Gather index out of range, bad reshape", "[runtime][session][errors]") {
  ModelBuilder b;
  b.io(true, "ids", 7, {"n"});
  b.io(false, "y", 1, {"n", "2"});
  b.initF("E", {4, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  b.node("Gather", {"E", "ids"}, {"y"});
  auto s = crt::Session::create(b.save("gather"));
  REQUIRE(s.ok());
  std::vector<int64_t> ok = {3, -1}, bad = {1, 4};
  std::vector<crt::TensorView> out;
  REQUIRE(s->run({{"ids", crt::TensorView::of(ok.data(), {2})}}, out).ok());
  CHECK(out[0].as<float>()[0] == 6.f);
  CHECK(out[0].as<float>()[3] == 7.f);  // -1 counts from the end
  auto st = s->run({{"ids", crt::TensorView::of(bad.data(), {2})}}, out);
  CHECK(st.code == crt::StatusCode::DataError);
  CHECK_THAT(st.message, Contains("Gather node") && Contains("index 4 is out of range for an axis of size 4"));
}

TEST_CASE("the emulated device: placement, copies, device plans that allocate nothing when replayed, the CPU's values", "[runtime][session][device]") {
  crt::SessionOptions so;
  so.threads = 2;
  so.device = crt::Device::Emulated;
  auto s = crt::Session::create(smallModel(), so);
  REQUIRE(s.ok());
  // MatMul (packed), Add, Reshape (a view: follows its data) and Softmax on the device; Shape/Gather/Concat are
  // static host arithmetic; x goes in and y comes out through one copy each
  CHECK(s->info().device == "emulated");
  CHECK(s->info().device_nodes == 4);
  CHECK(s->info().device_copies == 2);
  auto cpu = crt::Session::create(smallModel(), {2});
  REQUIRE(cpu.ok());
  std::vector<float> x2 = {0.1f, -0.2f, 0.3f, 1, 0, -1};
  std::vector<float> x3 = {0.5f, 0.5f, 0.5f, -1, 2, 0.25f, 0, 0, 1};
  std::vector<crt::TensorView> out, ref;
  for (int round = 0; round < 3; ++round)
    for (const auto* x : {&x2, &x3}) {
      const int64_t rows = static_cast<int64_t>(x->size() / 3);
      std::vector<std::pair<std::string, crt::TensorView>> feeds = {{"x", crt::TensorView::of(x->data(), {rows, 3})}};
      const int64_t before = crt::detail::allocationCount();
      REQUIRE(s->run(feeds, out).ok());
      if (round > 0) CHECK(crt::detail::allocationCount() == before);  // neither side allocates on a planned run
      REQUIRE(cpu->run(feeds, ref).ok());
      REQUIRE(out[0].shape == ref[0].shape);
      for (int64_t i = 0; i < rows * 2; ++i) CHECK(out[0].as<float>()[i] == ref[0].as<float>()[i]);  // bit for bit
    }
}

TEST_CASE("device options: cuda without a GPU (or without CUDA in the build) is a clear error, auto falls back to the CPU", "[runtime][session][device]") {
  crt::SessionOptions so;
  so.device = crt::Device::Cuda;
  std::string why;
  if (crt::detail::cudaDeviceCount(&why) > 0) {
    WARN("a GPU answers here: this test checks the machines without one");
    return;
  }
  auto s = crt::Session::create(smallModel(), so);
  REQUIRE(!s.ok());
  CHECK(s.status().code == crt::StatusCode::InvalidArgument);
  CHECK_THAT(s.status().message, Contains("--device cpu"));
  so.device = crt::Device::Auto;
  auto a = crt::Session::create(smallModel(), so);
  REQUIRE(a.ok());
  CHECK(a->info().device == "cpu");
  CHECK(a->info().device_nodes == 0);
}

TEST_CASE("large Transpose, Slice and Expand copies split over the threads give the reference values", "[runtime][session]") {
  // [1, 40, 12, 70] (33,600 values: above the split threshold) through a heads transpose, a last-two-axes transpose,
  // a strided slice and an Expand, with 1 and 3 threads; every value checked against index arithmetic.
  ModelBuilder b;
  b.io(true, "x", 1, {"1", "40", "12", "70"});
  for (const char* o : {"t1", "t2", "s", "e"}) b.io(false, o, 1, {});
  attrInts(b.node("Transpose", {"x"}, {"t1"}), "perm", {0, 2, 1, 3});  // [1, 12, 40, 70]
  attrInts(b.node("Transpose", {"x"}, {"t2"}), "perm", {0, 1, 3, 2});  // [1, 40, 70, 12]
  b.initI("st", {2}, {1, 5});
  b.initI("en", {2}, {40, 70});
  b.initI("ax", {2}, {1, 3});
  b.initI("sp", {2}, {2, 3});
  b.node("Slice", {"x", "st", "en", "ax", "sp"}, {"s"});  // [1, 20, 12, 22]
  b.initI("shape", {4}, {2, 40, 12, 70});
  b.node("Expand", {"x", "shape"}, {"e"});  // [2, 40, 12, 70]
  const std::string model = b.save("copies");
  std::vector<float> x(40 * 12 * 70);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  const auto at = [&](int64_t t, int64_t h, int64_t d) { return x[(t * 12 + h) * 70 + d]; };
  for (int threads : {1, 3}) {
    crt::SessionOptions so;
    so.threads = threads;
    auto s = crt::Session::create(model, so);
    REQUIRE(s.ok());
    auto r = s->run({{"x", crt::TensorView::of(x.data(), {1, 40, 12, 70})}});
    REQUIRE(r.ok());
    const auto out = [&](int k) { return reinterpret_cast<const float*>(r.value()[k].bytes.data()); };
    int64_t bad = 0;
    for (int64_t t = 0; t < 40; ++t)
      for (int64_t h = 0; h < 12; ++h)
        for (int64_t d = 0; d < 70; ++d) {
          bad += out(0)[(h * 40 + t) * 70 + d] != at(t, h, d);
          bad += out(1)[(t * 70 + d) * 12 + h] != at(t, h, d);
          bad += out(3)[(t * 12 + h) * 70 + d] != at(t, h, d) || out(3)[((40 + t) * 12 + h) * 70 + d] != at(t, h, d);
          if (t % 2 == 1 && d >= 5 && (d - 5) % 3 == 0) bad += out(2)[((t / 2) * 12 + h) * 22 + (d - 5) / 3] != at(t, h, d);
        }
    INFO("threads " << threads);
    CHECK(bad == 0);
    CHECK(r.value()[2].shape == std::vector<int64_t>{1, 20, 12, 22});
  }
}

TEST_CASE("Transpose, Slice and Expand views that keep memory order alias their input and give the reference values", "[runtime][session]") {
  // Which views are reshapes: only size-1 axes move, from offset 0.
  using crt::detail::StridedView;
  const auto view = [](std::vector<int64_t> os, std::vector<int64_t> st, int64_t offset) {
    StridedView v;
    for (size_t i = 0; i < os.size(); ++i) v.os.push(os[i]), v.st[i] = st[i];
    v.offset = offset;
    return v;
  };
  CHECK(crt::detail::viewKeepsOrder(view({1, 12, 1, 64}, {768, 64, 768, 1}, 0)));    // [1,1,12,64] heads transpose
  CHECK(!crt::detail::viewKeepsOrder(view({1, 12, 2, 64}, {1536, 64, 768, 1}, 0)));  // two rows: a real transpose
  CHECK(!crt::detail::viewKeepsOrder(view({1, 12, 1, 64}, {768, 64, 768, 1}, 64)));  // a slice from an offset
  CHECK(!crt::detail::viewKeepsOrder(view({2, 12, 64}, {0, 64, 1}, 0)));             // a broadcast
  CHECK(!crt::detail::viewKeepsOrder(view({12, 64}, {64, -1}, 0)));                  // a reversal
  CHECK(crt::detail::viewKeepsOrder(view({}, {}, 0)));

  // A decode step's shapes: q = 2x [1, 1, 12, 64] transposed to heads and back (aliases of q, read after q's own
  // last use), a full Slice and an Expand (aliases), an offset Slice and a two-row transpose (copies).
  ModelBuilder b;
  b.io(true, "x", 1, {"1", "1", "12", "64"});
  b.io(true, "x2", 1, {"1", "2", "12", "64"});
  for (const char* o : {"t", "r", "s", "s1", "e", "u"}) b.io(false, o, 1, {});
  b.initF("two", {1}, {2.f});
  b.node("Mul", {"x", "two"}, {"q"});
  attrInts(b.node("Transpose", {"q"}, {"t"}), "perm", {0, 2, 1, 3});   // [1, 12, 1, 64]
  attrInts(b.node("Transpose", {"t"}, {"tb"}), "perm", {0, 2, 1, 3});  // [1, 1, 12, 64]
  b.node("Add", {"tb", "x"}, {"r"});                                   // 3x
  b.initI("st", {1}, {0});
  b.initI("big", {1}, {INT64_MAX});
  b.initI("one", {1}, {1});
  b.initI("ax", {1}, {3});
  b.node("Slice", {"q", "st", "big", "ax"}, {"s"});   // all of q
  b.node("Slice", {"q", "one", "big", "ax"}, {"s1"});  // [1, 1, 12, 63]
  b.initI("shape", {3}, {1, 12, 64});
  b.node("Expand", {"q", "shape"}, {"e"});  // [1, 1, 12, 64]
  attrInts(b.node("Transpose", {"x2"}, {"u"}), "perm", {0, 2, 1, 3});  // [1, 12, 2, 64]
  const std::string model = b.save("order-views");
  std::vector<float> x(12 * 64), x2(2 * 12 * 64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) - 300.f;
  for (size_t i = 0; i < x2.size(); ++i) x2[i] = static_cast<float>(i) * 0.5f;
  auto s = crt::Session::create(model, crt::SessionOptions{});
  REQUIRE(s.ok());
  for (int run = 0; run < 2; ++run) {  // recorded, then replayed
    auto r = s->run({{"x", crt::TensorView::of(x.data(), {1, 1, 12, 64})}, {"x2", crt::TensorView::of(x2.data(), {1, 2, 12, 64})}});
    REQUIRE(r.ok());
    const auto out = [&](int k) { return reinterpret_cast<const float*>(r.value()[k].bytes.data()); };
    CHECK(r.value()[0].shape == std::vector<int64_t>{1, 12, 1, 64});
    CHECK(r.value()[3].shape == std::vector<int64_t>{1, 1, 12, 63});
    CHECK(r.value()[4].shape == std::vector<int64_t>{1, 1, 12, 64});
    CHECK(r.value()[5].shape == std::vector<int64_t>{1, 12, 2, 64});
    int64_t bad = 0;
    for (int64_t h = 0; h < 12; ++h)
      for (int64_t d = 0; d < 64; ++d) {
        const float v = x[h * 64 + d];
        bad += out(0)[h * 64 + d] != 2 * v;
        bad += out(1)[h * 64 + d] != 3 * v;
        bad += out(2)[h * 64 + d] != 2 * v;
        bad += out(4)[h * 64 + d] != 2 * v;
        if (d >= 1) bad += out(3)[h * 63 + d - 1] != 2 * v;
        for (int64_t t = 0; t < 2; ++t) bad += out(5)[(h * 2 + t) * 64 + d] != x2[(t * 12 + h) * 64 + d];
      }
    INFO("run " << run);
    CHECK(bad == 0);
  }
}

namespace {

/// A cached attention in the exported form (past.0.key/value [1, 1, past, 4], Concat on axis 2, the keys
/// transposed) whose output also adds sum(Reshape(Slice(TAB, 0:T))): at T = 8, TAB's length, the Slice takes the
/// whole table and aliases it; at shorter T it copies, and the Reshape aliases the copy until the last node. Between
/// them a chain of T x 4 copies (from a 16-row table, never whole) competes for the same arena space.
std::string aliasSpareModel() {
  ModelBuilder b(17);
  b.io(true, "ids", 7, {"1", "s"});
  b.io(true, "past.0.key", 1, {"1", "1", "past", "4"});
  b.io(true, "past.0.value", 1, {"1", "1", "past", "4"});
  b.io(false, "y", 1, {"1", "1", "s", "4"});
  b.io(false, "present.0.key", 1, {"1", "1", "t", "4"});
  b.io(false, "present.0.value", 1, {"1", "1", "t", "4"});
  std::vector<float> emb(10 * 4), tab(8 * 4), tab2(16 * 4);
  for (size_t i = 0; i < emb.size(); ++i) emb[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
  for (size_t i = 0; i < tab.size(); ++i) tab[i] = static_cast<float>(i + 1);
  for (size_t i = 0; i < tab2.size(); ++i) tab2[i] = 0.5f * static_cast<float>(i);
  b.initF("E", {10, 4}, emb);
  b.initF("TAB", {8, 4}, tab);
  b.initF("TAB2", {16, 4}, tab2);
  b.initI("one", {1}, {1});
  b.initI("zero", {1}, {0});
  b.initI("two", {1}, {2});
  b.initI("flat", {1}, {-1});
  b.initF("c3", {}, {3.f});
  b.node("Gather", {"E", "ids"}, {"h"});  // [1, s, 4]
  b.node("Unsqueeze", {"h", "one"}, {"k"});  // [1, 1, s, 4]
  attrInt(b.node("Concat", {"past.0.key", "k"}, {"present.0.key"}), "axis", 2);
  attrInts(b.node("Transpose", {"present.0.key"}, {"kt"}), "perm", {0, 1, 3, 2});
  b.node("MatMul", {"k", "kt"}, {"scores"});  // [1, 1, s, t]
  attrInt(b.node("Softmax", {"scores"}, {"p"}), "axis", -1);
  attrInt(b.node("Concat", {"past.0.value", "k"}, {"present.0.value"}), "axis", 2);
  b.node("MatMul", {"p", "present.0.value"}, {"att"});  // [1, 1, s, 4]
  // T = past + s, from the shapes (the past's, which the cache rewrite keeps as a view of the cached rows)
  b.node("Shape", {"past.0.value"}, {"pv_shape"});
  b.node("Gather", {"pv_shape", "two"}, {"past_len"});  // [1]
  b.node("Shape", {"ids"}, {"ids_shape"});
  b.node("Gather", {"ids_shape", "one"}, {"s_len"});  // [1]
  b.node("Add", {"past_len", "s_len"}, {"t1"});
  b.node("Slice", {"TAB", "zero", "t1", "zero"}, {"rows"});  // [T, 4]: the whole table at T = 8
  b.node("Reshape", {"rows", "flat"}, {"rows_flat"});        // an alias of rows, read by the last nodes
  b.node("Slice", {"TAB2", "zero", "t1", "zero"}, {"j0"});   // [T, 4] copies, never the whole table
  b.node("Mul", {"j0", "c3"}, {"j1"});
  b.node("Add", {"j1", "j0"}, {"j2"});
  b.node("Mul", {"j2", "c3"}, {"j3"});
  b.node("Add", {"j3", "j1"}, {"j4"});
  b.node("ReduceSum", {"j4"}, {"js"});
  b.node("ReduceSum", {"rows_flat"}, {"rs"});
  b.node("Add", {"att", "rs"}, {"a1"});
  b.node("Add", {"a1", "js"}, {"y"});
  return b.save("kv-alias-spare");
}

}  // namespace

/// A one-layer cached decoder with heads of 32 (the decode kernels' size: Kernels::kv_dot / kv_axpy read fp16 and
/// int8 caches in place from 16 values per head on): ids -> rows of E as [1, s, 2, 32] -> keys k, values k * 0.5,
/// queries k; attention over past + new with a Softmax (mask 0), or Div(8) + Add(mask) + Softmax with a zero scalar
/// mask (1: the load fuses it all into one crt.KvAttention) or a mask of zeros built from Shape(scores) (2: a shape
/// that changes every step inside one plan).
std::string headDim32Model(int mask) {
  const bool scaled = mask > 0;
  ModelBuilder b(17);
  b.io(true, "ids", 7, {"1", "s"});
  b.io(true, "past.0.key", 1, {"1", "2", "past", "32"});
  b.io(true, "past.0.value", 1, {"1", "2", "past", "32"});
  b.io(false, "y", 1, {"1", "2", "s", "32"});
  b.io(false, "present.0.key", 1, {"1", "2", "t", "32"});
  b.io(false, "present.0.value", 1, {"1", "2", "t", "32"});
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> emb(12 * 64);
  for (auto& e : emb) e = nd(rng);
  b.initF("E", {12, 64}, emb);
  b.initI("shape", {4}, {1, -1, 2, 32});
  b.initF("half", {}, {0.5f});
  b.initF("eight", {}, {8.f});
  b.node("Gather", {"E", "ids"}, {"h"});  // [1, s, 64]
  b.node("Reshape", {"h", "shape"}, {"h4"});
  attrInts(b.node("Transpose", {"h4"}, {"k"}), "perm", {0, 2, 1, 3});  // [1, 2, s, 32]
  b.node("Mul", {"k", "half"}, {"v"});
  attrInt(b.node("Concat", {"past.0.key", "k"}, {"present.0.key"}), "axis", 2);
  attrInts(b.node("Transpose", {"present.0.key"}, {"kt"}), "perm", {0, 1, 3, 2});
  b.node("MatMul", {"k", "kt"}, {"scores"});  // [1, 2, s, t]
  std::string logits = "scores";
  if (scaled) {
    b.node("Div", {"scores", "eight"}, {"sd"});
    if (mask == 2) {
      b.node("Shape", {"scores"}, {"ss"});
      b.node("ConstantOfShape", {"ss"}, {"mask"});  // zeros of the scores' shape
    } else {
      b.initF("mask", {}, {0.f});
    }
    b.node("Add", {"sd", "mask"}, {"sm"});
    logits = "sm";
  }
  attrInt(b.node("Softmax", {logits}, {"p"}), "axis", -1);
  attrInt(b.node("Concat", {"past.0.value", "v"}, {"present.0.value"}), "axis", 2);
  b.node("MatMul", {"p", "present.0.value"}, {"y"});
  return b.save("kv-hd32-" + std::to_string(mask));
}

TEST_CASE("a cache with heads of 32 in fp32, fp16 and int8: prefill and one-token steps equal the graph run by hand, on the CPU, the emulated device and a GPU", "[runtime][session][kv][device]") {
  const std::vector<int64_t> ids = {1, 4, 2, 7, 3, 9, 5, 6, 11, 0};
  std::string why;
  std::vector<crt::Device> devices = {crt::Device::Cpu, crt::Device::Emulated};
  if (crt::detail::cudaDeviceCount(&why) > 0) devices.push_back(crt::Device::Cuda);
  else WARN("CUDA legs skipped: " << why);
  for (int mask : {0, 1, 2}) {
    INFO((mask == 1 ? "scaled and masked softmax (fused into crt.KvAttention)"
                    : mask == 2 ? "a mask built from the scores' shape (per step)" : "plain softmax (KvScores, KvValues)"));
    const std::string model = headDim32Model(mask);
    // reference: prefill 3, then one-token steps, past and present passed by hand (fp32, no in-session cache)
    std::vector<float> want;
    {
      auto s = crt::Session::create(model, crt::SessionOptions{});
      REQUIRE(s.ok());
      std::vector<float> pk, pv;
      for (int64_t t = 0; t < 10;) {
        const int64_t n = t == 0 ? 3 : 1;
        auto r = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, n})},
                         {"past.0.key", crt::TensorView::of(pk.data(), {1, 2, t, 32})},
                         {"past.0.value", crt::TensorView::of(pv.data(), {1, 2, t, 32})}});
        INFO(r.status().message);
        REQUIRE(r.ok());
        const float* y = reinterpret_cast<const float*>(r.value()[0].bytes.data());
        want.insert(want.end(), y, y + 2 * n * 32);
        const float* k = reinterpret_cast<const float*>(r.value()[1].bytes.data());
        const float* v = reinterpret_cast<const float*>(r.value()[2].bytes.data());
        pk.assign(k, k + 2 * (t + n) * 32);
        pv.assign(v, v + 2 * (t + n) * 32);
        t += n;
      }
    }
    double scale = 0;
    for (float w : want) scale = std::max(scale, static_cast<double>(std::abs(w)));
    for (crt::Device device : devices)
    for (crt::DType dt : {crt::DType::F32, crt::DType::F16, crt::DType::I8})
      for (bool fuse : {true, false}) {
        INFO("cache " << crt::dtypeName(dt) << (fuse ? ", fused" : ", unfused") << ", device " << static_cast<int>(device));
        crt::SessionOptions so;
        so.kv_capacity = 16;
        so.kv_dtype = dt;
        so.fuse = fuse;
        so.device = device;
        so.profile = true;
        auto s = crt::Session::create(model, so);
        INFO(s.status().message);
        REQUIRE(s.ok());
        std::vector<float> got;
        for (int64_t t = 0; t < 10;) {
          const int64_t n = t == 0 ? 3 : 1;
          std::vector<crt::TensorView> out;
          const crt::Status st = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, n})}}, out);
          INFO(st.message);
          REQUIRE(st.ok());
          const float* y = static_cast<const float*>(out[0].data);
          got.insert(got.end(), y, y + 2 * n * 32);
          t += n;
        }
        std::map<std::string, int64_t> calls;
        for (const auto& op : s->profile()) calls[op.op] = op.calls;
        CHECK(calls[mask == 1 && fuse ? "crt.KvAttention" : "crt.KvScores"] > 0);
        REQUIRE(got.size() == want.size());
        double diff = 0;
        for (size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::abs(static_cast<double>(got[i]) - want[i]));
        INFO("max |diff| / max |y| = " << diff / scale);
        // fp16 rounds the cached keys and values to 11 bits, int8 to 1/254 of each row's largest value
        CHECK(diff / scale <= (dt == crt::DType::F32 ? 1e-5 : dt == crt::DType::F16 ? 2e-3 : 5e-3));
      }
  }
}

TEST_CASE("a KV session's plan keeps the space of an output its recording aliased alive while anything reads it", "[runtime][session][kv]") {
  const std::string model = aliasSpareModel();
  const std::vector<int64_t> ids = {1, 4, 2, 7, 3, 9, 5, 6};
  // reference: the same steps with past and present passed by hand (a plan per shape, no replay across lengths)
  std::vector<std::vector<float>> want;
  {
    auto s = crt::Session::create(model, crt::SessionOptions{});
    REQUIRE(s.ok());
    std::vector<float> pk, pv;
    for (int64_t t = 0; t < 8; ++t) {
      auto r = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, 1})},
                       {"past.0.key", crt::TensorView::of(pk.data(), {1, 1, t, 4})},
                       {"past.0.value", crt::TensorView::of(pv.data(), {1, 1, t, 4})}});
      INFO(r.status().message);
      REQUIRE(r.ok());
      const auto& o = r.value();
      const float* y = reinterpret_cast<const float*>(o[0].bytes.data());
      want.emplace_back(y, y + 4);
      const float* k = reinterpret_cast<const float*>(o[1].bytes.data());
      const float* v = reinterpret_cast<const float*>(o[2].bytes.data());
      pk.assign(k, k + (t + 1) * 4);
      pv.assign(v, v + (t + 1) * 4);
    }
  }
  // the in-session cache of 8 rows: one-token steps replay the plan recorded at T = 8 (where the Slice aliased)
  crt::SessionOptions so;
  so.kv_capacity = 8;
  auto s = crt::Session::create(model, so);
  INFO(s.status().message);
  REQUIRE(s.ok());
  int64_t before = 0;
  for (int64_t t = 0; t < 8; ++t) {
    if (t == 2) before = crt::detail::allocationCount();
    std::vector<crt::TensorView> out;
    const crt::Status st = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, 1})}}, out);
    INFO("step " << t << ": " << st.message);
    REQUIRE(st.ok());
    const float* y = static_cast<const float*>(out[0].data);
    for (int i = 0; i < 4; ++i) CHECK(y[i] == Approx(want[t][i]).epsilon(1e-6));
  }
  CHECK(crt::detail::allocationCount() == before);  // the steps after the first replay one plan
}

TEST_CASE("Session::stop() stops a run from another thread, and a stopped cached step leaves the cache as it was", "[runtime][session][kv]") {
  const std::string model = aliasSpareModel();
  const std::vector<int64_t> ids = {1, 4, 2, 7, 3, 9};
  crt::SessionOptions so;
  so.kv_capacity = 8;
  std::vector<std::vector<float>> want;  // the steps without a stop
  {
    auto s = crt::Session::create(model, so);
    REQUIRE(s.ok());
    for (int64_t t = 0; t < 6; ++t) {
      auto r = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, 1})}});
      REQUIRE(r.ok());
      want.emplace_back(r.value()[0].as<float>(), r.value()[0].as<float>() + 4);
    }
  }
  auto s = crt::Session::create(model, so);
  REQUIRE(s.ok());
  std::vector<crt::TensorView> out;
  for (int64_t t = 0; t < 6; ++t) {
    if (t == 3) {  // asked before the run: the next run stops, the cache keeps its 3 tokens, and the step is run again
      s->stop();
      const crt::Status st = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, 1})}}, out);
      CHECK(st.code == crt::StatusCode::Stopped);
      CHECK_THAT(st.message, Catch::Matchers::Contains("Session::stop()"));
      CHECK(s->kvLength() == 3);
    }
    const crt::Status st = s->run({{"ids", crt::TensorView::of(ids.data() + t, {1, 1})}}, out);
    INFO("step " << t << ": " << st.message);
    REQUIRE(st.ok());
    for (int i = 0; i < 4; ++i) CHECK(out[0].as<float>()[i] == want[t][i]);
  }
  CHECK(s->kvLength() == 6);
}

TEST_CASE("Session::stop() from another thread ends a long run early", "[runtime][session]") {
  // 400 MatMuls of [1024, 256] x [256, 256] on one thread (0.2 s or more): stopped 20 ms in
  crt::SessionOptions so;
  so.threads = 1;
  auto s = crt::Session::create(matmulChain("stop-chain", 400, false), so);
  REQUIRE(s.ok());
  std::vector<float> x(1024 * 256, 1.f);
  std::atomic<bool> started{false};
  crt::Status st;
  std::vector<crt::TensorView> out;
  std::thread runner([&] {
    started = true;
    st = s->run({{"x", crt::TensorView::of(x.data(), {1024, 256})}}, out);
  });
  while (!started) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s->stop();
  runner.join();
  CHECK(st.code == crt::StatusCode::Stopped);  // (before one of its MatMuls: a run that ended would be Ok)
  CHECK_THAT(st.message, Catch::Matchers::Contains("the run stopped before MatMul node"));
  st = s->run({{"x", crt::TensorView::of(x.data(), {1, 256})}}, out);  // the next run is not stopped
  INFO(st.message);
  REQUIRE(st.ok());
  for (int j = 0; j < 256; ++j) CHECK(out[0].as<float>()[j] == Approx(1.f).epsilon(1e-4));
}


namespace {

/// A model y = x [M, K] times a weight [K, N]: `build` adds the weight's nodes and initializers, ending in "W"
/// (float32) or "W16" (float16: x is cast to float16 and y back to float32), or nodes ending in y itself.
template <typename Build>
std::string weightModel(const std::string& tag, int64_t K, int64_t N, Build&& build, bool fp16 = false) {
  ModelBuilder b;
  b.m.add_opset_import()->set_domain("com.microsoft");
  b.m.mutable_opset_import(1)->set_version(1);
  b.io(true, "x", 1, {"m", std::to_string(K)});
  b.io(false, "y", 1, {"m", std::to_string(N)});
  build(b);
  if (fp16) {
    attrInt(b.node("Cast", {"x"}, {"x16"}), "to", 10);
    b.node("MatMul", {"x16", "W16"}, {"y16"});
    attrInt(b.node("Cast", {"y16"}, {"y"}), "to", 1);
  } else if (b.g->node_size() == 0 || b.g->node(b.g->node_size() - 1).output(0) != "y") {  // (unless build wrote y)
    b.node("MatMul", {"x", "W"}, {"y"});
  }
  return b.save("pack-" + tag);
}

/// y for M rows of x through the session at `path` (loaded from the file, or `fromMemory` from its bytes), whose one
/// MatMul must have packed its weight at load.
std::vector<float> runWeightModel(const std::string& path, const std::vector<float>& x, int64_t M, int64_t K,
                                  crt::SessionInfo* info = nullptr, bool fromMemory = false) {
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto s = fromMemory ? crt::Session::createFromMemory(bytes, {2}) : crt::Session::create(path, {2});
  REQUIRE(s.ok());
  CHECK(s->info().packed_matmuls == 1);
  if (info) *info = s->info();
  auto out = s->run({{"x", crt::TensorView::of(x.data(), {M, K})}});
  REQUIRE(out.ok());
  const crt::Tensor& y = out.value()[0];
  return std::vector<float>(y.as<float>(), y.as<float>() + y.bytes.size() / 4);
}

/// max |y - x w| / max |x w| with w [K, N] in double.
double relErrorAgainst(const std::vector<float>& y, const std::vector<float>& x, const std::vector<double>& w, int64_t M,
                       int64_t K, int64_t N) {
  double err = 0, scale = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double r = 0;
      for (int64_t k = 0; k < K; ++k) r += static_cast<double>(x[m * K + k]) * w[k * N + n];
      err = std::max(err, std::abs(r - y[m * N + n]));
      scale = std::max(scale, std::abs(r));
    }
  return err / scale;
}

}  // namespace

TEST_CASE("weights are packed at load from the file's layout: a weight's Transpose (fp32, fp16), MatMulNBits in whole and partial blocks, int8 DequantizeLinear, against reference values", "[runtime][session]") {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const int64_t M = 5;
  SECTION("MatMul(x, Transpose(W)) packs W itself: the bits of the model that stores W's transpose") {
    // (70 x 37: one whole panel and a partial one; 1040 x 600: weights of 1 MiB and more, packed from the model file)
    for (const auto& [K, N, fp16] : std::vector<std::tuple<int64_t, int64_t, bool>>{{70, 37, false}, {70, 37, true}, {1040, 600, false}, {1040, 600, true}}) {
      CAPTURE(K, N, fp16);
      std::vector<float> w(N * K), x(M * K);
      for (auto& e : w) e = nd(rng);
      for (auto& e : x) e = nd(rng);
      std::vector<float> wt(K * N);
      std::vector<double> ref(K * N);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) wt[k * N + n] = w[n * K + k];
      const auto init = [&](ModelBuilder& b, const std::string& name, const std::vector<float>& v, std::vector<int64_t> dims) {
        if (!fp16) return b.initF(name, dims, v);
        std::vector<uint16_t> h(v.size());
        for (size_t i = 0; i < v.size(); ++i) h[i] = crt::detail::floatToHalf(v[i]);
        initRaw(b, name, dims, 10, bytesOf(h));
      };
      const std::string out = fp16 ? "W16" : "W", tag = fp16 ? "f16" : "f32";
      const std::string transposed = weightModel("t-" + tag, K, N, [&](ModelBuilder& b) {
        init(b, "Wn", w, {N, K});
        attrInts(b.node("Transpose", {"Wn"}, {out}), "perm", {1, 0});
      }, fp16);
      const std::string stored = weightModel("s-" + tag, K, N, [&](ModelBuilder& b) { init(b, out, wt, {K, N}); }, fp16);
      for (int64_t i = 0; i < K * N; ++i)
        ref[i] = fp16 ? crt::detail::halfToFloat(crt::detail::floatToHalf(wt[i])) : wt[i];
      for (const int64_t rows : {int64_t{1}, M}) {
        crt::SessionInfo info;
        const auto a = runWeightModel(transposed, x, rows, K, &info), b = runWeightModel(stored, x, rows, K);
        CHECK(info.folded == 0);  // the Transpose was never computed
        CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
        CHECK(relErrorAgainst(a, x, ref, rows, K, N) < (fp16 ? 2e-3 : 1e-5));  // (float sums of up to 1040 products)
        // from memory (every weight read into memory first) the same bits as from the file
        CHECK(runWeightModel(transposed, x, rows, K, nullptr, true) == a);
        CHECK(runWeightModel(stored, x, rows, K, nullptr, true) == b);
      }
      if (fp16) continue;
      // W also read by another node: packed from the file for the MatMul, then read into memory for the other
      const std::string shared = weightModel("shared-" + tag, K, N, [&](ModelBuilder& b) {
        init(b, "Wn", w, {N, K});
        attrInts(b.node("Transpose", {"Wn"}, {"Wt"}), "perm", {1, 0});
        b.node("MatMul", {"x", "Wt"}, {"xw"});
        auto* mean = b.node("ReduceMean", {"Wn"}, {"wm"});
        attrInts(mean, "axes", {1});
        attrInt(mean, "keepdims", 0);
        b.node("Add", {"xw", "wm"}, {"y"});
      });
      const auto fromFile = runWeightModel(shared, x, M, K), fromMemory = runWeightModel(shared, x, M, K, nullptr, true);
      CHECK(fromFile == fromMemory);
      double mean0 = 0;
      for (int64_t k = 0; k < K; ++k) mean0 += w[k];
      const auto plain = runWeightModel(transposed, x, M, K);
      CHECK(fromFile[0] - plain[0] == Approx(mean0 / static_cast<double>(K)).margin(1e-4));
    }
  }
  SECTION("MatMulNBits int4: whole blocks (the chunk copy) and a partial last block (value by value)") {
    for (const auto& [K, block] : std::vector<std::pair<int64_t, int64_t>>{{128, 32}, {128, 64}, {100, 32}, {96, 64}}) {
      CAPTURE(K, block);
      const int64_t N = 19, nblk = (K + block - 1) / block, blob = block / 2, zpRow = (nblk + 1) / 2;
      std::vector<uint8_t> q(N * nblk * blob), z(N * zpRow);
      std::vector<float> sc(N * nblk), x(M * K);
      for (auto& e : q) e = static_cast<uint8_t>(rng() % 256);
      for (auto& e : z) e = static_cast<uint8_t>(rng() % 256);
      for (auto& e : sc) e = 0.01f + 0.001f * static_cast<float>(rng() % 50);
      for (auto& e : x) e = nd(rng);
      std::vector<double> ref(K * N);  // ONNX's definition: value j of block b of row n is (q - zp) * scale
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t b = k / block, j = k % block;
          const int v = (q[(n * nblk + b) * blob + j / 2] >> (4 * (j % 2))) & 15, zp = (z[n * zpRow + b / 2] >> (4 * (b % 2))) & 15;
          ref[k * N + n] = static_cast<double>(v - zp) * sc[n * nblk + b];
        }
      const std::string path = weightModel("nbits", K, N, [&](ModelBuilder& b) { matMulNBits4(b, K, N, block, q, sc, z); });
      for (const int64_t rows : {int64_t{1}, M}) CHECK(relErrorAgainst(runWeightModel(path, x, rows, K), x, ref, rows, K, N) < 1e-5);
    }
  }
  SECTION("int8 DequantizeLinear per column and in blocks along K: the [K, N] integers read 64 outputs at a time") {
    const int64_t K = 96, N = 70;
    std::vector<int8_t> q(K * N);
    std::vector<float> x(M * K), perColumn(N), blocked(3 * N);
    for (auto& e : q) e = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    for (auto& e : perColumn) e = 0.01f + 0.001f * static_cast<float>(rng() % 50);
    for (auto& e : blocked) e = 0.01f + 0.001f * static_cast<float>(rng() % 50);
    for (auto& e : x) e = nd(rng);
    for (const bool blocks : {false, true}) {
      CAPTURE(blocks);
      std::vector<double> ref(K * N);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) ref[k * N + n] = q[k * N + n] * static_cast<double>(blocks ? blocked[(k / 32) * N + n] : perColumn[n]);
      const std::string path = weightModel(blocks ? "dq-blocks" : "dq-columns", K, N, [&](ModelBuilder& b) {
        initRaw(b, "Q", {K, N}, 3, bytesOf(q));
        if (blocks) b.initF("S", {3, N}, blocked);
        else b.initF("S", {N}, perColumn);
        auto* dq = b.node("DequantizeLinear", {"Q", "S"}, {"W"});
        attrInt(dq, "axis", blocks ? 0 : 1);
        if (blocks) attrInt(dq, "block_size", 32);
      });
      for (const int64_t rows : {int64_t{1}, M}) CHECK(relErrorAgainst(runWeightModel(path, x, rows, K), x, ref, rows, K, N) < 1e-5);
    }
  }
}

TEST_CASE("the pool's parallelForEach runs every task and rethrows the error of the first failing task in task order", "[runtime][session]") {
  for (const int threads : {1, 2, 4}) {
    crt::detail::ThreadPool pool(threads);
    std::vector<std::atomic<int>> ran(64);
    try {
      pool.parallelForEach(64, [&](int64_t t) {
        ++ran[t];
        if (t % 10 == 7) throw std::runtime_error("task " + std::to_string(t));
      });
      FAIL("no exception");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "task 7");
    }
    for (const auto& r : ran) CHECK(r == 1);
  }
}

TEST_CASE("back-to-back parallelFor calls run each call's tasks once, with that call's function", "[runtime][session]") {
  // A worker still looking at the last call's (exhausted) counter once read the next call's task count and claimed
  // one more task of the old generation, then ran it with the new call's function: an index past the new call's
  // tasks (the CI's crun ppl crashed on it once; ThreadSanitizer named the race). Many short calls of alternating
  // sizes open that window.
  crt::detail::ThreadPool pool(2);
  int64_t bad = 0, missed = 0;
  for (int i = 0; i < 200000; ++i) {
    const int64_t tasks = i % 2 ? 64 : 2;
    std::vector<int> ran(static_cast<size_t>(tasks), 0);  // (a fresh buffer per call, as a session's scratch)
    std::atomic<int64_t> outOfRange{0};
    pool.parallelFor(tasks, [&](int64_t t) {
      if (t < 0 || t >= tasks) ++outOfRange;
      else ++reinterpret_cast<std::atomic<int>&>(ran[static_cast<size_t>(t)]);
    });
    bad += outOfRange.load();
    for (int r : ran) missed += r != 1;
  }
  CHECK(bad == 0);
  CHECK(missed == 0);
}

namespace {

/// A length-delimited protobuf field: tag, length, bytes.
std::string protoField(int number, const std::string& bytes) {
  std::string out;
  const auto varint = [&](uint64_t v) {
    for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>(v | 0x80));
    out.push_back(static_cast<char>(v));
  };
  varint(static_cast<uint64_t>(number) << 3 | 2);
  varint(bytes.size());
  return out + bytes;
}

std::string writeBytes(const std::string& tag, const std::string& bytes) {
  const std::string path = testutil::removeAtExit("/tmp/crt-test-" + tag + "-" + std::to_string(::getpid()) + ".onnx");
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

TEST_CASE("the weight scan reads each initializer's bytes once from the file: protobuf's tensors for a graph written twice, raw_data written twice, typed and empty data, and what it cannot scan loads as before", "[runtime][session]") {
  // y = (x W + b) * s: W raw [3, 2] (its tensor written as two messages, the first raw_data wrong: protobuf keeps the
  // last), b as float_data, s raw in a second graph message (protobuf merges the two), and an unused empty tensor
  ModelBuilder b;
  b.io(true, "x", 1, {"1", "3"});
  b.io(false, "y", 1, {"1", "2"});
  b.node("MatMul", {"x", "W"}, {"xw"});
  b.node("Add", {"xw", "bias"}, {"z"});
  b.node("Mul", {"z", "s"}, {"y"});
  auto* bias = b.g->add_initializer();
  bias->set_name("bias");
  bias->set_data_type(1);
  bias->add_dims(2);
  bias->add_float_data(0.5f);
  bias->add_float_data(-1.0f);
  initRaw(b, "empty", {0}, 1, "");
  const std::vector<float> W = {1, 2, 3, 4, 5, 6};
  onnx::TensorProto wrong, right, s;
  wrong.set_name("W");
  wrong.set_data_type(1);
  wrong.add_dims(3);
  wrong.add_dims(2);
  wrong.set_raw_data(std::string(24, '\x7f'));
  right.set_raw_data(bytesOf(W));
  s.set_name("s");
  s.set_data_type(1);
  s.set_raw_data(bytesOf(std::vector<float>{2.0f}));
  onnx::GraphProto second;
  *second.add_initializer() = s;
  const std::string file = b.m.SerializeAsString() + protoField(7, protoField(5, wrong.SerializeAsString() + right.SerializeAsString())) +
                           protoField(7, second.SerializeAsString());
  const std::vector<float> x = {1, -1, 2};
  const std::vector<float> want = {(1 - 3 + 10 + 0.5f) * 2, (2 - 4 + 12 - 1.0f) * 2};
  const auto run = [&](crt::Result<crt::Session> s) {
    REQUIRE(s.ok());
    auto out = s->run({{"x", crt::TensorView::of(x.data(), {1, 3})}});
    REQUIRE(out.ok());
    return std::vector<float>(out.value()[0].as<float>(), out.value()[0].as<float>() + 2);
  };

  const std::string path = writeBytes("scan", file);
  const int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  crt::detail::StrippedModel stripped;
  REQUIRE(crt::detail::stripWeights(fd, static_cast<int64_t>(file.size()), stripped));
  onnx::ModelProto parsed, whole;
  REQUIRE(parsed.ParseFromString(stripped.proto));
  REQUIRE(whole.ParseFromString(file));
  REQUIRE(stripped.spans.size() == 4);  // bias, empty, W, s: the order of protobuf's merged initializers
  REQUIRE(parsed.graph().initializer_size() == whole.graph().initializer_size());
  for (int i = 0; i < whole.graph().initializer_size(); ++i) {
    const onnx::TensorProto& t = whole.graph().initializer(i);
    CAPTURE(t.name());
    CHECK(parsed.graph().initializer(i).name() == t.name());
    CHECK(!parsed.graph().initializer(i).has_raw_data());
    CHECK(parsed.graph().initializer(i).float_data_size() == t.float_data_size());
    const crt::detail::RawSpan span = stripped.spans[static_cast<size_t>(i)];
    CHECK((span.offset >= 0) == t.has_raw_data());
    if (span.offset < 0) continue;
    std::string bytes(static_cast<size_t>(span.size), '\0');
    REQUIRE(crt::detail::readWeightBytes(fd, span, bytes.data()));
    CHECK(bytes == t.raw_data());  // (W: the second raw_data)
  }
  ::close(fd);
  CHECK(run(crt::Session::create(path)) == want);
  CHECK(run(crt::Session::createFromMemory(file)) == want);

  // an unknown group field (wire types 3 and 4): protobuf keeps it as an unknown field, the scan gives up, the file
  // loads whole as before
  const std::string group = std::string("\xa3\x06", 2) + std::string("\x08\x01", 2) + std::string("\xa4\x06", 2);  // field 100
  const std::string grouped = writeBytes("scan-group", file + group);
  const int gfd = ::open(grouped.c_str(), O_RDONLY);
  REQUIRE(gfd >= 0);
  CHECK_FALSE(crt::detail::stripWeights(gfd, static_cast<int64_t>(file.size() + group.size()), stripped));
  ::close(gfd);
  CHECK(run(crt::Session::create(grouped)) == want);

  // truncated inside W's raw_data: neither can read it, and the error is protobuf's
  const auto cut = crt::Session::create(writeBytes("scan-cut", file.substr(0, file.size() - 30)));
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.status().code == crt::StatusCode::ModelError);
  CHECK_THAT(cut.status().message, Contains("not a valid ONNX model"));
}

namespace {
/// The VmFlags line of the mapping in /proc/self/smaps that holds address p ("" when none does).
std::string mappingFlags(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto a = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < line.find(' ')) inside = a >= lo && a < hi;
    else if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}
}  // namespace

TEST_CASE("buffers that can hold a 2 MiB page ask for transparent huge pages, smaller ones do not", "[runtime][memory]") {
  // A decode step streams every weight once: with 4 KiB pages it took a TLB miss per page (runtime/util.cpp). The
  // request is the mapping's "hg" flag (MADV_HUGEPAGE), set whether or not the kernel then finds 2 MiB pages.
  crt::detail::AlignedBytes big(size_t{3} << 20), mid(size_t{3} << 19), small(4096);
  static_cast<char*>(big.data())[0] = 1;
  static_cast<char*>(mid.data())[0] = 1;
  const std::string bigFlags = mappingFlags(big.data()), midFlags = mappingFlags(mid.data());
  INFO("3 MiB: " << bigFlags << "\n1.5 MiB: " << midFlags);
  REQUIRE_FALSE(bigFlags.empty());
  REQUIRE_FALSE(midFlags.empty());
  CHECK(midFlags.find(" hg") == std::string::npos);
  CHECK(reinterpret_cast<uintptr_t>(small.data()) % 64 == 0);
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) {  // a kernel built without THP refuses the hint
    WARN("huge-page request not checked: this kernel has no transparent huge pages");
    return;
  }
  CHECK(bigFlags.find(" hg") != std::string::npos);
}
