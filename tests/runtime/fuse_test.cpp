// fuse_test.cpp — the load-time fusions (runtime/fuse.h): RMSNorm, SiLU-multiply, RoPE, per-row scale and
// attention-softmax chains become one node each and give the chains' bits; chains that something else reads into, other exponents, other operand orders,
// other axes and broadcasting are handled.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <tuple>

#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/internal.h"
#include "tests/runtime/model_builder.h"

namespace {

/// y = SwiGLU-style block: RMSNorm(x) * w, then (g * sigmoid(g)) * up with g = h * a, up = h * b (elementwise).
/// `leak`: the RMSNorm's mean is also a graph output (the chain must stay unfused); `pow3`: x^3 instead of x^2;
/// `bcastUp`: up has shape [1, 8] against g's [rows, 8]; `scalarW`: the norm's weight is one value, [1].
std::string normGluModel(bool leak, bool pow3, bool bcastUp, bool scalarW = false) {
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "8"});
  b.io(false, "y", 1, {"rows", "8"});
  if (leak) b.io(false, "mean", 1, {"rows", "1"});
  b.initF("p", {}, {pow3 ? 3.f : 2.f});
  b.initF("eps", {}, {1e-5f});
  if (scalarW) b.initF("w", {1}, {1.5f});
  else b.initF("w", {8}, {0.5f, 1, 1.5f, 2, -1, 0.25f, 3, 1});
  b.initF("a", {8}, {1, -2, 0.5f, 3, 1, 1, -1, 2});
  b.initF("bb", bcastUp ? std::vector<int64_t>{1, 8} : std::vector<int64_t>{8}, {2, 1, 0.5f, -1, 1, 3, 1, -2});
  b.node("Pow", {"x", "p"}, {"x2"});
  attrInts(b.node("ReduceMean", {"x2"}, {"mean"}), "axes", {-1});
  b.node("Add", {"mean", "eps"}, {"me"});
  b.node("Sqrt", {"me"}, {"sd"});
  b.node("Reciprocal", {"sd"}, {"r"});
  b.node("Mul", {"x", "r"}, {"xn"});
  b.node("Mul", {"xn", "w"}, {"h"});
  b.node("Mul", {"h", "a"}, {"g"});
  if (bcastUp) b.node("Mul", {"bb", "bb"}, {"up"});  // [1, 8]
  else b.node("Mul", {"h", "bb"}, {"up"});
  b.node("Sigmoid", {"g"}, {"s"});
  b.node("Mul", {"s", "g"}, {"gs"});
  b.node("Mul", {"gs", "up"}, {"y"});
  return b.save(std::string("fuse") + (leak ? "-leak" : "") + (pow3 ? "-pow3" : "") + (bcastUp ? "-bcast" : "") +
                (scalarW ? "-w1" : ""));
}

/// LLaMA's RoPE on pairs as torch exports it: a = x[..., 0::2], b = x[..., 1::2] on axis `axis` of x [5, 2, 3, h];
/// a*cos - b*sin and a*sin + b*cos (cos and sin of shape `tab`), each Unsqueezed at `stack`, Concatenated there.
/// `swapSub`: b*sin - a*cos (not a rotation: stays unfused); `leakB`: b is also a graph output (stays unfused).
/// `tab` empty: cos and sin are graph inputs of any shape instead of constants.
std::string ropeModel(int64_t axis, int64_t stack, std::vector<int64_t> tab, bool swapSub = false, bool leakB = false) {
  ModelBuilder b;
  b.io(true, "x", 1, {"5", "2", "3", "h"});
  b.io(false, "y", 1, {});
  if (leakB) b.io(false, "b", 1, {});
  int64_t n = 1;
  for (int64_t d : tab) n *= d;
  std::vector<float> c(static_cast<size_t>(n)), sn(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) c[i] = std::cos(0.3f * static_cast<float>(i)), sn[i] = std::sin(0.3f * static_cast<float>(i));
  if (tab.empty()) {
    b.io(true, "cos", 1, {"c0", "c1"});
    b.io(true, "sin", 1, {"c0", "c1"});
  } else {
    b.initF("cos", tab, c);
    b.initF("sin", tab, sn);
  }
  b.initI("zero", {1}, {0});
  b.initI("one", {1}, {1});
  b.initI("end", {1}, {INT64_MAX});
  b.initI("axis", {1}, {axis});
  b.initI("two", {1}, {2});
  b.initI("stack", {1}, {stack});
  b.node("Slice", {"x", "zero", "end", "axis", "two"}, {"a"});
  b.node("Slice", {"x", "one", "end", "axis", "two"}, {"b"});
  b.node("Mul", {"a", "cos"}, {"ac"});
  b.node("Mul", {"b", "sin"}, {"bs"});
  b.node("Sub", swapSub ? std::vector<std::string>{"bs", "ac"} : std::vector<std::string>{"ac", "bs"}, {"r0"});
  b.node("Mul", {"sin", "a"}, {"as"});  // (operands in either order)
  b.node("Mul", {"b", "cos"}, {"bc"});
  b.node("Add", {"as", "bc"}, {"r1"});
  b.node("Unsqueeze", {"r0", "stack"}, {"u0"});
  b.node("Unsqueeze", {"r1", "stack"}, {"u1"});
  attrInt(b.node("Concat", {"u0", "u1"}, {"y"}), "axis", stack);
  return b.save("rope-" + std::to_string(axis) + "-" + std::to_string(stack) + "-" + std::to_string(tab.size()) +
                (swapSub ? "-swap" : "") + (leakB ? "-leak" : ""));
}

/// SmoothQuant's per-token scale as its export writes it: Abs(x) -> ReduceMax(axes [-1]) -> Div(127) -> Max(., floor),
/// x [rows, 8]. `swapMax`: Max(floor, .) (not fused); `floor` <= 0 is not fused either (the sign of a zero max would
/// then matter).
std::string scaleModel(float floor, bool swapMax = false) {
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "8"});
  b.io(false, "y", 1, {"rows", "1"});
  b.initI("last", {1}, {-1});
  b.initF("c127", {}, {127.f});
  b.initF("floor", {}, {floor});
  b.node("Abs", {"x"}, {"a"});
  b.node("ReduceMax", {"a", "last"}, {"m"});
  b.node("Div", {"m", "c127"}, {"s0"});
  b.node("Max", swapMax ? std::vector<std::string>{"floor", "s0"} : std::vector<std::string>{"s0", "floor"}, {"y"});
  return b.save("scale-" + std::to_string(floor) + (swapMax ? "-swap" : ""));
}

/// Attention's scaled, masked softmax: Softmax(Div(x, sqrt(32)) + mask) over axis `axis` of x [rows, 8], mask a
/// constant of shape `maskShape` (empty: a graph input "mask" of any shape); `maskFirst`: Add(mask, .).
std::string softmaxModel(std::vector<int64_t> maskShape, bool maskFirst = false, int64_t axis = -1) {
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "8"});
  b.io(false, "y", 1, {"rows", "8"});
  b.initF("c", {}, {5.656854f});  // (sqrt(32): not a power of two, so x / c and x * (1 / c) differ)
  if (maskShape.empty()) {
    b.io(true, "mask", 1, {"m0", "m1"});
  } else {
    int64_t n = 1;
    for (int64_t d : maskShape) n *= d;
    std::vector<float> m(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) m[i] = i % 3 == 0 ? -INFINITY : 0.1f * static_cast<float>(i % 7);  // (a causal-style -inf)
    b.initF("mask", maskShape, m);
  }
  b.node("Div", {"x", "c"}, {"s"});
  b.node("Add", maskFirst ? std::vector<std::string>{"mask", "s"} : std::vector<std::string>{"s", "mask"}, {"sm"});
  attrInt(b.node("Softmax", {"sm"}, {"y"}), "axis", axis);
  std::string tag;
  for (int64_t d : maskShape) tag += "-" + std::to_string(d);
  return b.save("softmax" + tag + (maskFirst ? "-first" : "") + "-ax" + std::to_string(axis));
}

/// GELU as exports write it on x [rows, 8]: the erf form ((x * 0.5) * (erf(x / sqrt 2) + 1), NeoX's operand
/// order) or GPT-2's tanh form; `swap`: constants first where the ops allow it (Mul(0.5, x), Add(1, t), ...);
/// `leak`: the Tanh's / Erf's output is also a graph output (the chain stays); `power2`: x^2 in the tanh form
/// (another function; fused with its own constant).
std::string geluModel(bool tanhForm, bool swap = false, bool leak = false, bool power2 = false) {
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "8"});
  b.io(false, "y", 1, {"rows", "8"});
  if (leak) b.io(false, "t", 1, {"rows", "8"});
  b.initF("half", {}, {0.5f});
  b.initF("one", {}, {1.f});
  const auto bin = [&](const char* op, const std::string& a, const std::string& c, const std::string& out, bool commutes = true) {
    b.node(op, swap && commutes ? std::vector<std::string>{c, a} : std::vector<std::string>{a, c}, {out});
  };
  if (tanhForm) {
    b.initF("p", {}, {power2 ? 2.f : 3.f});
    b.initF("cube", {}, {0.044715f});
    b.initF("scale", {}, {0.7978845608f});
    bin("Mul", "x", "half", "h");
    b.node("Pow", {"x", "p"}, {"q"});
    bin("Mul", "q", "cube", "m");
    bin("Add", "x", "m", "a");
    bin("Mul", "a", "scale", "s");
    b.node("Tanh", {"s"}, {"t"});
  } else {
    b.initF("div", {}, {1.4142135f});
    b.node("Div", {"x", "div"}, {"d"});
    b.node("Erf", {"d"}, {"t"});
    bin("Mul", "x", "half", "h");
  }
  bin("Add", "t", "one", "o");
  bin("Mul", "h", "o", "y");
  return b.save(std::string("gelu") + (tanhForm ? "-tanh" : "-erf") + (swap ? "-swap" : "") + (leak ? "-leak" : "") + (power2 ? "-p2" : ""));
}

/// A session of `model` on device d (its creation must succeed); none for CUDA on a machine without a GPU.
std::optional<crt::Session> sessionOn(const std::string& model, crt::Device d) {
  std::string why;
  if (d == crt::Device::Cuda && crt::detail::cudaDeviceCount(&why) == 0) return std::nullopt;
  crt::SessionOptions so;
  so.device = d;
  auto s = crt::Session::create(model, so);
  INFO(s.status().message);
  REQUIRE(s.ok());
  return std::move(s.value());
}

/// Output 0 with and without fusion, checking how many chains were fused; the fused nodes on the emulated device
/// (the same bits, no fused node left on the host) and, with a GPU, on CUDA (within 1e-5). x has shape `xs`.
/// `deviceFuses` false: a chain a device session runs node by node (SmoothQuant's per-token scale).
void checkSameBits(const std::string& model, int fused, std::vector<int64_t> xs = {19, 8}, bool deviceFuses = true) {  // (19 rows: 8, 8, 3)
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  int64_t count = 1;
  for (int64_t d : xs) count *= d;
  std::vector<float> x(static_cast<size_t>(count));
  for (auto& e : x) e = nd(rng);
  std::vector<std::vector<uint8_t>> outs;
  for (bool fuse : {true, false}) {
    crt::SessionOptions so;
    so.threads = 2;
    so.fuse = fuse;
    auto s = crt::Session::create(model, so);
    INFO(s.status().message);
    REQUIRE(s.ok());
    CHECK(s->info().fused_nodes == (fuse ? fused : 0));
    auto r = s->run({{"x", crt::TensorView::of(x.data(), xs)}});
    INFO(r.status().message);
    REQUIRE(r.ok());
    outs.push_back(r.value()[0].bytes);
  }
  CHECK(outs[0] == outs[1]);
  for (crt::Device d : {crt::Device::Emulated, crt::Device::Cuda}) {
    std::optional<crt::Session> s = sessionOn(model, d);
    if (!s) break;
    // (an unfused chain may stay on the host whole: a light island between host nodes, backend.cpp)
    CHECK((s->info().device_nodes > 0 || fused == 0));
    CHECK(s->info().fused_nodes >= (deviceFuses ? fused : 0));  // (and the elementwise chains left: programs)
    INFO("on the host: " << s->info().host_ops);
    std::string host = s->info().host_ops;  // (an elementwise program may stay on the host: a light island, backend.cpp)
    for (size_t at; (at = host.find("crt.Elementwise")) != std::string::npos;) host.erase(at, 15);
    CHECK(host.find("crt.") == std::string::npos);
    auto r = s->run({{"x", crt::TensorView::of(x.data(), xs)}});
    INFO(r.status().message);
    REQUIRE(r.ok());
    const std::vector<uint8_t>& got = r.value()[0].bytes;
    REQUIRE(got.size() == outs[0].size());
    if (d == crt::Device::Emulated) {
      CHECK(got == outs[0]);
    } else {
      const float* a = reinterpret_cast<const float*>(got.data());
      const float* b = reinterpret_cast<const float*>(outs[0].data());
      for (size_t i = 0; i < got.size() / 4; ++i) CHECK(a[i] == Approx(b[i]).epsilon(1e-5).margin(1e-6));
    }
  }
}

/// Inputs the model refuses: an error (not a crash) with and without fusion, `fused` chains fused, and the fused
/// run's message containing `says`.
void checkRefused(const std::string& model, int fused, const std::vector<std::pair<std::string, crt::TensorView>>& in,
                  const std::string& says) {
  for (bool fuse : {true, false}) {
    crt::SessionOptions so;
    so.fuse = fuse;
    auto s = crt::Session::create(model, so);
    REQUIRE(s.ok());
    CHECK(s->info().fused_nodes == (fuse ? fused : 0));
    auto r = s->run(in);
    INFO(r.status().message);
    CHECK_FALSE(r.ok());
    if (fuse) CHECK(r.status().message.find(says) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("fusion: RMSNorm and SiLU-multiply chains become one node each, with the chains' bits", "[runtime][fuse]") {
  SECTION("both chains") { checkSameBits(normGluModel(false, false, false), 2); }
  SECTION("up broadcast against the gate") { checkSameBits(normGluModel(false, false, true), 2); }
  SECTION("an intermediate the graph also outputs keeps the norm unfused") { checkSameBits(normGluModel(true, false, false), 1); }
  SECTION("x^3 is not a norm") { checkSameBits(normGluModel(false, true, false), 1); }
  SECTION("a one-value norm weight broadcasts") { checkSameBits(normGluModel(false, false, false, true), 2); }
}

TEST_CASE("fusion: LLaMA's RoPE on pairs becomes one node with the chain's bits, on any axes", "[runtime][fuse]") {
  const std::vector<int64_t> xs = {5, 2, 3, 8};
  SECTION("pairs on the last axis, tables [T, 1, half] (x is [B, T, H, head])") { checkSameBits(ropeModel(-1, 4, {2, 1, 4}), 1, xs); }
  SECTION("positive axes, tables [half]") { checkSameBits(ropeModel(3, -1, {4}), 1, xs); }
  SECTION("pairs on axis 1, stacked before it") { checkSameBits(ropeModel(1, 0, {1, 3, 8}), 1, xs); }
  SECTION("pairs on axis 3, stacked at axis 2") { checkSameBits(ropeModel(3, 2, {3, 4}), 1, xs); }
  SECTION("b*sin - a*cos is not a rotation") { checkSameBits(ropeModel(-1, -1, {2, 1, 4}, true), 0, xs); }
  SECTION("b read elsewhere keeps the chain") { checkSameBits(ropeModel(-1, -1, {2, 1, 4}, false, true), 0, xs); }
}

TEST_CASE("fusion: a fused RoPE on an odd-length axis fails cleanly, as the chain does", "[runtime][fuse][hostile]") {
  // x [5, 2, 3, h] fed with h = 7: both the chain (halves of 4 and 3 values do not broadcast) and the fused node
  // (odd pairs' axis) refuse it with an error, not a crash.
  std::vector<float> x(5 * 2 * 3 * 7, 0.5f);
  checkRefused(ropeModel(-1, -1, {4}), 1, {{"x", crt::TensorView::of(x.data(), {5, 2, 3, 7})}}, "odd");
}

TEST_CASE("reductions over the last axis keep each row's left-to-right order, rows side by side or alone", "[runtime][fuse]") {
  // ReduceSum / ReduceMean / ReduceMax over the last axis of [19, 37] (8-row groups, then 3 rows alone): exactly the
  // sequential float reference of each row (the order the RMSNorm fusion repeats).
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "37"});
  for (const char* o : {"sum", "mean", "max"}) b.io(false, o, 1, {"rows", "1"});
  b.initI("last", {1}, {-1});
  b.node("ReduceSum", {"x", "last"}, {"sum"});
  attrInts(b.node("ReduceMean", {"x"}, {"mean"}), "axes", {-1});
  attrInts(b.node("ReduceMax", {"x"}, {"max"}), "axes", {-1});
  const std::string model = b.save("reduce-rows");
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> x(19 * 37);
  for (auto& e : x) e = nd(rng) * 100.f;  // (large values: a different order would change the low bits)
  auto s = crt::Session::create(model, crt::SessionOptions{});
  REQUIRE(s.ok());
  auto r = s->run({{"x", crt::TensorView::of(x.data(), {19, 37})}});
  REQUIRE(r.ok());
  for (int64_t row = 0; row < 19; ++row) {
    float sum = 0.f, mx = -INFINITY;
    for (int64_t j = 0; j < 37; ++j) sum = sum + x[row * 37 + j], mx = std::max(mx, x[row * 37 + j]);
    INFO("row " << row);
    CHECK(reinterpret_cast<const float*>(r.value()[0].bytes.data())[row] == sum);
    CHECK(reinterpret_cast<const float*>(r.value()[1].bytes.data())[row] == sum / 37.f);
    CHECK(reinterpret_cast<const float*>(r.value()[2].bytes.data())[row] == mx);
  }
}

TEST_CASE("fusion: a fused RoPE refuses tables that do not broadcast to the halves, as the chain does", "[runtime][fuse][hostile]") {
  // cos / sin as graph inputs, fed [3, 5] against halves [5, 2, 3, 4]: an error naming the shapes, fused or not
  std::vector<float> x(5 * 2 * 3 * 8, 0.5f), tab(15, 0.25f);
  checkRefused(ropeModel(-1, -1, {}), 1,
               {{"x", crt::TensorView::of(x.data(), {5, 2, 3, 8})}, {"cos", crt::TensorView::of(tab.data(), {3, 5})},
                {"sin", crt::TensorView::of(tab.data(), {3, 5})}},
               "do not broadcast");
}

TEST_CASE("fusion: SmoothQuant's per-token scale chain becomes one node with the chain's bits", "[runtime][fuse]") {
  SECTION("the exported chain") { checkSameBits(scaleModel(1e-8f), 1, {19, 8}, false); }
  SECTION("Max(floor, .) keeps the chain") { checkSameBits(scaleModel(1e-8f, true), 0, {19, 8}, false); }
  SECTION("a floor of 0 keeps the chain") { checkSameBits(scaleModel(0.f), 0, {19, 8}, false); }
  SECTION("rows of zeros, signed zeros, NaN, infinity and denormals: the same bits fused and not") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<float> x = {0, -0.f, 0, 0, -0.f, 0, 0, 0,             // zeros: the floor
                            1, -2, 3, nan, 4, 5, -6, 7,               // a NaN wins
                            -inf, 1, 2, 3, 4, 5, 6, 7,                // infinity
                            1e-40f, -2e-40f, 0, 0, 0, 0, 0, 0,        // denormals
                            -9, 8, 7, 6, 5, 4, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8.5f};  // (2 rows)
    std::vector<std::vector<uint8_t>> outs;
    for (bool fuse : {true, false}) {
      crt::SessionOptions so;
      so.fuse = fuse;
      auto s = crt::Session::create(scaleModel(1e-8f), so);
      REQUIRE(s.ok());
      CHECK(s->info().fused_nodes == (fuse ? 1 : 0));
      auto r = s->run({{"x", crt::TensorView::of(x.data(), {6, 8})}});
      REQUIRE(r.ok());
      outs.push_back(r.value()[0].bytes);
    }
    CHECK(outs[0] == outs[1]);
    const float* y = reinterpret_cast<const float*>(outs[0].data());
    CHECK(y[0] == 1e-8f);
    CHECK(std::isnan(y[1]));
    CHECK(y[2] == inf);
    CHECK(y[4] == 9.f / 127.f);
    CHECK(y[5] == 8.5f / 127.f);
  }
}

TEST_CASE("fusion: GELU in its erf and tanh forms becomes one node with the chain's bits", "[runtime][fuse]") {
  for (bool tanhForm : {false, true}) {
    INFO((tanhForm ? "tanh form (GPT-2)" : "erf form (NeoX, BERT)"));
    SECTION("exported order") { checkSameBits(geluModel(tanhForm), 1); }
    SECTION("constants first") { checkSameBits(geluModel(tanhForm, true), 1); }
    SECTION("an intermediate the graph also outputs keeps the chain") { checkSameBits(geluModel(tanhForm, false, true), 0); }
  }
  SECTION("another exponent keeps its own constant") { checkSameBits(geluModel(true, false, false, true), 1); }
}

TEST_CASE("fusion: attention's scaled, masked softmax becomes one node with the chain's bits", "[runtime][fuse]") {
  SECTION("a mask row per score row") { checkSameBits(softmaxModel({19, 8}), 1); }
  SECTION("one mask row for all, Add(mask, .)") { checkSameBits(softmaxModel({8}, true), 1); }
  SECTION("a one-value mask") { checkSameBits(softmaxModel({1}), 1); }
  SECTION("a softmax over the first axis keeps the chain") { checkSameBits(softmaxModel({8}, false, 0), 0); }
  SECTION("a mask that does not broadcast to the scores is an error naming both, fused or not") {
    std::vector<float> x(19 * 8, 0.5f), m(3 * 8, 0.f);
    checkRefused(softmaxModel({}), 1,
                 {{"x", crt::TensorView::of(x.data(), {19, 8})}, {"mask", crt::TensorView::of(m.data(), {3, 8})}},
                 "[19,8] and [3,8] do not broadcast");
  }
}

namespace {

/// An elementwise chain over x [rows, 8], c [8] and a scalar, every Binary and Unary op of the device's list, with
/// broadcasting; `half`: x is Cast to float16 first, the chain runs in float16 but for a float32 island (Exp, Erf, Tanh
/// between Casts, as the fp16 pass writes it) and the output is Cast back to float32.
std::string elementwiseModel(bool half) {
  ModelBuilder b;
  b.io(true, "x", 1, {"rows", "8"});
  b.io(false, "y", 1, {"rows", "8"});
  const std::vector<float> cv = {0.5f, 1.5f, 2.f, -1.f, 0.25f, 3.f, -2.f, 1.f};
  std::string x = "x";
  if (half) {
    std::vector<uint16_t> h(cv.size()), two = {crt::detail::floatToHalf(2.f)};
    for (size_t i = 0; i < cv.size(); ++i) h[i] = crt::detail::floatToHalf(cv[i]);
    for (auto [name, v, dims] : {std::tuple{"c", &h, std::vector<int64_t>{8}}, std::tuple{"two", &two, std::vector<int64_t>{}}}) {
      auto* t = b.g->add_initializer();
      t->set_name(name);
      t->set_data_type(10);
      for (auto d : dims) t->add_dims(d);
      t->set_raw_data(std::string(reinterpret_cast<const char*>(v->data()), v->size() * 2));
    }
    attrInt(b.node("Cast", {"x"}, {"xh"}), "to", 10);
    x = "xh";
  } else {
    b.initF("c", {8}, cv);
    b.initF("two", {}, {2.f});
  }
  b.node("Add", {x, "c"}, {"t0"});
  b.node("Mul", {"t0", x}, {"t1"});
  b.node("Sub", {"t1", "c"}, {"t2"});
  b.node("Div", {"t2", "c"}, {"t3"});
  b.node("Pow", {"t3", "two"}, {"t4"});
  b.node("Sqrt", {"t4"}, {"t5"});
  b.node("Max", {"t5", "c"}, {"t6"});
  b.node("Min", {"t6", "two"}, {"t7"});
  b.node("Sigmoid", {"t7"}, {"t8"});
  std::string at = "t8";
  if (half) attrInt(b.node("Cast", {"t8"}, {"t8f"}), "to", 1), at = "t8f";
  b.node("Exp", {at}, {"t9"});
  b.node("Erf", {"t9"}, {"t10"});
  b.node("Tanh", {"t10"}, {"t11"});
  at = "t11";
  if (half) attrInt(b.node("Cast", {"t11"}, {"t11h"}), "to", 10), at = "t11h";
  b.node("Neg", {at}, {"t12"});
  b.node("Relu", {"t12"}, {"t13"});
  b.node("Reciprocal", {"t13"}, {"t14"});
  b.node("Cos", {"t14"}, {"t15"});
  b.node("Sin", {"t15"}, {"t16"});
  if (half) attrInt(b.node("Cast", {"t16"}, {"y"}), "to", 1);
  else b.node("Neg", {"t16"}, {"y"});
  return b.save(half ? "ew-half" : "ew");
}

}  // namespace

TEST_CASE("fusion: a device session runs an elementwise chain (float32, or float16 with Casts) as one program with the chain's bits", "[runtime][fuse][device]") {
  for (bool half : {false, true}) {
    INFO((half ? "float16" : "float32") << " chain");
    const std::string model = elementwiseModel(half);
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    std::vector<float> x(19 * 8);
    for (auto& e : x) e = nd(rng);
    x[3] = NAN, x[5] = INFINITY, x[6] = -0.f, x[7] = 70000.f;  // (NaN and Inf through every step; beyond float16's range)
    std::vector<crt::Tensor> outs;
    for (crt::Device d : {crt::Device::Cpu, crt::Device::Emulated, crt::Device::Cuda}) {
      std::optional<crt::Session> s = sessionOn(model, d);
      if (!s) break;
      // the CPU runs the chain op by op; a device session runs it as programs: float32, two around the Sigmoid (the
      // CPU's float32 Sigmoid is a vector kernel, not the program's arithmetic); float16, one after the Cast that two
      // steps read
      CHECK(s->info().fused_nodes == (d == crt::Device::Cpu ? 0 : half ? 1 : 2));
      if (d != crt::Device::Cpu) CHECK(s->info().device_nodes == (half ? 2 : 3));
      auto r = s->run({{"x", crt::TensorView::of(x.data(), {19, 8})}});
      INFO(r.status().message);
      REQUIRE(r.ok());
      outs.push_back(r.value()[0]);
    }
    CHECK(outs[1].bytes == outs[0].bytes);
    if (outs.size() == 3) {
      const float* a = reinterpret_cast<const float*>(outs[2].bytes.data());
      const float* b = reinterpret_cast<const float*>(outs[0].bytes.data());
      for (size_t i = 0; i < outs[0].bytes.size() / 4; ++i)
        CHECK((std::isnan(a[i]) == std::isnan(b[i]) && (std::isnan(a[i]) || std::abs(a[i] - b[i]) <= (half ? 2e-3 : 1e-5) * (1 + std::abs(b[i])))));
    }
  }
}
