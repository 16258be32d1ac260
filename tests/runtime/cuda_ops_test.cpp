// cuda_ops_test.cpp — every CUDA kernel against the CPU runtime on small graphs, at the sizes around its tiles
// (GEMV rows per block, the GEMV -> cuBLAS switch at 16 rows, 32-value chunks, quantization blocks), and a
// session run 1,000 times without leaking GPU memory. Every machine runs the same graphs on the emulated device
// (the same placement, bit-identical values); without a GPU the CUDA legs say so in one line (the kernels'
// arithmetic is checked on every machine by device_math_test.cpp).
#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/internal.h"
#include "tests/runtime/model_builder.h"

namespace {

bool haveGpu(bool say = false) {
  std::string why;
  if (crt::detail::cudaDeviceCount(&why) > 0) return true;
  if (say) WARN("CUDA legs skipped: " << why);
  return false;
}

std::vector<float> randoms(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}

/// Largest |a - b| over the largest |a| of two float32 outputs of the same shape.
double relDiff(const crt::Tensor& a, const crt::Tensor& b) {
  REQUIRE(a.shape == b.shape);
  const float* pa = reinterpret_cast<const float*>(a.bytes.data());
  const float* pb = reinterpret_cast<const float*>(b.bytes.data());
  double scale = 1e-6, diff = 0;
  for (size_t i = 0; i < a.bytes.size() / 4; ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(pa[i])));
    diff = std::max(diff, static_cast<double>(std::abs(pa[i] - pb[i])));
  }
  return diff / scale;
}

crt::Tensor runOn(const std::string& model, crt::Device d, const std::vector<std::pair<std::string, crt::TensorView>>& feeds,
                  int device_nodes) {
  crt::SessionOptions so;
  so.threads = 2;
  so.device = d;
  so.fuse = false;  // each op's own kernel (fuse_test.cpp checks the fused ones, elementwise programs included)
  auto s = crt::Session::create(model, so);
  INFO(s.status().message);
  REQUIRE(s.ok());
  if (d != crt::Device::Cpu) CHECK(s->info().device_nodes == device_nodes);
  auto out = s->run(feeds);
  INFO(out.status().message);
  REQUIRE(out.ok());
  return out.value()[0];
}

/// Output 0 on the CPU, on the emulated device (bit for bit) and, with a GPU, on CUDA (within `tol` of the
/// output's largest magnitude); both devices must take `device_nodes` nodes.
void compare(const std::string& model, const std::vector<std::pair<std::string, crt::TensorView>>& feeds, int device_nodes,
             double tol = 1e-5) {
  const crt::Tensor want = runOn(model, crt::Device::Cpu, feeds, 0);
  CHECK(runOn(model, crt::Device::Emulated, feeds, device_nodes).bytes == want.bytes);
  if (haveGpu()) CHECK(relDiff(want, runOn(model, crt::Device::Cuda, feeds, device_nodes)) <= tol);
}

/// x [M, K] times a weight [K, N] of the given kind: "fp32", "int8" (DequantizeLinear, per column) or
/// "int4-gB" (MatMulNBits, block B).
std::string matmulModel(const std::string& kind, int64_t K, int64_t N, int64_t block, unsigned seed) {
  ModelBuilder b;
  b.m.add_opset_import()->set_domain("com.microsoft");
  b.m.mutable_opset_import(1)->set_version(1);
  b.io(true, "x", 1, {"m", std::to_string(K)});
  b.io(false, "y", 1, {"m", std::to_string(N)});
  std::mt19937 rng(seed);
  if (kind == "fp32") {
    b.initF("W", {K, N}, randoms(K * N, seed));
    b.node("MatMul", {"x", "W"}, {"y"});
  } else if (kind == "int8") {
    std::vector<uint8_t> q(K * N), z(N);
    for (auto& e : q) e = static_cast<uint8_t>(rng() % 256);
    for (auto& e : z) e = static_cast<uint8_t>(100 + rng() % 50);
    std::vector<float> s(N, 0.02f);
    initRaw(b, "Q", {K, N}, 2, bytesOf(q));
    initRaw(b, "Z", {N}, 2, bytesOf(z));
    b.initF("S", {N}, s);
    auto* dq = b.node("DequantizeLinear", {"Q", "S", "Z"}, {"W"});
    attrInt(dq, "axis", 1);
    b.node("MatMul", {"x", "W"}, {"y"});
  } else {
    const int64_t nblk = (K + block - 1) / block, blob = block / 2;
    std::vector<uint8_t> q(N * nblk * blob), z(N * ((nblk + 1) / 2));
    for (auto& e : q) e = static_cast<uint8_t>(rng() % 256);
    for (auto& e : z) e = static_cast<uint8_t>(rng() % 256);
    std::vector<float> s(N * nblk);
    for (auto& e : s) e = 0.01f + 0.001f * static_cast<float>(rng() % 50);
    matMulNBits4(b, K, N, block, q, s, z);
  }
  return b.save("cuda-mm-" + kind);
}

}  // namespace

TEST_CASE("CUDA MatMul on packed weights equals the CPU: fp32, int8, int4 at GEMV and GEMM sizes", "[runtime][cuda]") {
  haveGpu(true);
  struct Kind {
    std::string name;
    int64_t block;
  };
  for (const Kind& kind : std::vector<Kind>{{"fp32", 0}, {"int8", 0}, {"int4", 16}, {"int4", 32}, {"int4", 128}})
    for (int64_t K : {32, 33, 200})
      for (int64_t N : {1, 5, 67}) {
        const std::string model = matmulModel(kind.name, K, N, kind.block, static_cast<unsigned>(K * 131 + N));
        for (int64_t M : {1, 3, 15, 16, 17, 40}) {
          INFO(kind.name << " block " << kind.block << " M " << M << " K " << K << " N " << N);
          const std::vector<float> x = randoms(M * K, static_cast<unsigned>(M));
          compare(model, {{"x", crt::TensorView::of(x.data(), {M, K})}}, 1);
        }
      }
}

TEST_CASE("CUDA elementwise (Erf included), Softmax, ReduceMean, Transpose, Slice, Expand, Concat and batched MatMul equal the CPU", "[runtime][cuda]") {
  haveGpu(true);
  ModelBuilder b(17);
  b.io(true, "a", 1, {"2", "3", "40"});
  b.io(true, "c", 1, {"3", "1"});
  b.io(false, "y", 1, {"2", "3", "3"});
  b.node("Add", {"a", "c"}, {"t0"});    // broadcast [2,3,40] + [3,1]
  b.node("Mul", {"t0", "a"}, {"t1"});
  b.node("Sub", {"t1", "c"}, {"t2"});
  b.node("Div", {"t2", "c"}, {"t3"});
  b.initF("two", {}, {2.f});
  b.node("Pow", {"t3", "two"}, {"t4"});
  b.node("Sqrt", {"t4"}, {"t5"});
  b.node("Sigmoid", {"t5"}, {"t6"});
  b.node("Tanh", {"t6"}, {"t6b"});
  b.node("Erf", {"t6b"}, {"t7"});
  auto* rm = b.node("ReduceMean", {"t7"}, {"m"});
  attrInt(rm, "keepdims", 1);
  attrInts(rm, "axes", {-1});
  b.initI("full", {3}, {2, 3, 40});
  b.node("Expand", {"m", "full"}, {"me"});  // [2, 3, 1] -> [2, 3, 40]
  b.node("Sub", {"t7", "me"}, {"t8"});
  auto* sm = b.node("Softmax", {"t8"}, {"p"});
  attrInt(sm, "axis", -1);
  b.initI("s0", {1}, {3});
  b.initI("e0", {1}, {37});
  b.initI("ax", {1}, {2});
  b.node("Slice", {"p", "s0", "e0", "ax"}, {"q"});  // [2, 3, 34]
  attrInts(b.node("Transpose", {"q"}, {"qt"}), "perm", {0, 2, 1});  // [2, 34, 3]
  auto* cat = b.node("Concat", {"q", "q"}, {"qq"});  // [2, 3, 68]
  attrInt(cat, "axis", 2);
  b.node("Slice", {"qq", "s0", "e0", "ax"}, {"q2"});  // [2, 3, 34]
  b.node("MatMul", {"q2", "qt"}, {"y"});               // batched [2,3,34] x [2,34,3]
  const std::string model = b.save("cuda-ops");
  const std::vector<float> a = randoms(2 * 3 * 40, 1);
  std::vector<float> c = {0.5f, 1.5f, 2.f};
  compare(model, {{"a", crt::TensorView::of(a.data(), {2, 3, 40})}, {"c", crt::TensorView::of(c.data(), {3, 1})}}, 18, 1e-5);
}

namespace {

/// A float16 initializer of the given values (rounded to nearest even).
void initHalf(ModelBuilder& b, const std::string& name, std::vector<int64_t> dims, const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = crt::detail::floatToHalf(v[i]);
  initRaw(b, name, std::move(dims), 10, bytesOf(h));
}

}  // namespace

TEST_CASE("CUDA float16 activations equal the CPU: Casts, MatMul on an fp16 weight at GEMV and GEMM sizes, elementwise, Softmax, LayerNorm, ReduceMean, Transpose, Concat, Slice, batched MatMul", "[runtime][cuda]") {
  haveGpu(true);
  const int64_t K = 40, N = 24;
  ModelBuilder b(17);
  b.io(true, "x", 1, {"m", std::to_string(K)});
  b.io(false, "y", 1, {"m", "m"});
  attrInt(b.node("Cast", {"x"}, {"xh"}), "to", 10);
  initHalf(b, "W", {K, N}, randoms(K * N, 21));
  b.node("MatMul", {"xh", "W"}, {"h"});  // a packed fp16 weight: GEMV below 16 rows, an fp16 GEMM from 16
  initHalf(b, "bias", {N}, randoms(N, 22));
  b.node("Add", {"h", "bias"}, {"h1"});
  b.node("Mul", {"h1", "h1"}, {"h2"});
  b.node("Sigmoid", {"h2"}, {"h3"});
  attrInt(b.node("Softmax", {"h3"}, {"p"}), "axis", -1);
  initHalf(b, "g", {N}, randoms(N, 23));
  initHalf(b, "bb", {N}, randoms(N, 24));
  attrInt(b.node("LayerNormalization", {"p", "g", "bb"}, {"ln"}), "axis", -1);
  auto* rm = b.node("ReduceMean", {"ln"}, {"mean"});
  attrInt(rm, "keepdims", 1);
  attrInts(rm, "axes", {-1});
  b.node("Sub", {"ln", "mean"}, {"d"});
  attrInts(b.node("Transpose", {"d"}, {"dt"}), "perm", {1, 0});
  attrInt(b.node("Concat", {"d", "d"}, {"dd"}), "axis", 1);
  b.initI("s0", {1}, {3});
  b.initI("e0", {1}, {3 + N});
  b.initI("ax", {1}, {1});
  b.node("Slice", {"dd", "s0", "e0", "ax"}, {"d2"});  // [m, N]: d shifted by 3 columns, wrapping round
  b.node("MatMul", {"d2", "dt"}, {"s"});              // [m, m], two float16 tensors
  attrInt(b.node("Cast", {"s"}, {"y"}), "to", 1);
  const std::string model = b.save("cuda-f16");
  for (int64_t M : {1, 3, 15, 16, 17, 40}) {
    INFO("M " << M);
    const std::vector<float> x = randoms(M * K, static_cast<unsigned>(M));
    // every node on the device (no fusion takes float16 chains); each result rounded to fp16 on both sides, so the
    // GPU's other summation order shows at fp16's precision
    compare(model, {{"x", crt::TensorView::of(x.data(), {M, K})}}, 14, 1e-2);
  }
}

TEST_CASE("CUDA LayerNormalization equals the CPU: last axis and two axes, per-value and one-value scale and bias", "[runtime][cuda]") {
  haveGpu(true);
  struct Case {
    int64_t axis;
    std::vector<int64_t> scale;  // its shape (bias: the same)
    bool bias;
  };
  for (const Case& k : std::vector<Case>{{-1, {300}, true}, {-1, {300}, false}, {1, {7, 300}, true}, {-1, {1}, true}}) {
    INFO("axis " << k.axis << ", scale of " << k.scale.size() << " dims, bias " << k.bias);
    ModelBuilder b(17);
    b.io(true, "x", 1, {"3", "7", "300"});
    b.io(false, "y", 1, {"3", "7", "300"});
    int64_t n = 1;
    for (int64_t d : k.scale) n *= d;
    b.initF("g", k.scale, randoms(static_cast<size_t>(n), 4));
    b.initF("bb", k.scale, randoms(static_cast<size_t>(n), 5));
    auto* ln = b.node("LayerNormalization", k.bias ? std::vector<std::string>{"x", "g", "bb"} : std::vector<std::string>{"x", "g"}, {"y"});
    attrInt(ln, "axis", k.axis);
    const std::string model = b.save("cuda-ln");
    std::vector<float> x = randoms(3 * 7 * 300, 6);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 3.f + 2.f * x[i];  // (a mean far from zero)
    compare(model, {{"x", crt::TensorView::of(x.data(), {3, 7, 300})}}, 1, 1e-5);
  }
  // a bias that matches neither the row nor one value is an error naming it, not a read past its end
  ModelBuilder b(17);
  b.io(true, "x", 1, {"2", "8"});
  b.io(false, "y", 1, {"2", "8"});
  b.initF("g", {8}, std::vector<float>(8, 1.f));
  b.initF("bb", {3}, std::vector<float>(3, 0.f));
  b.node("LayerNormalization", {"x", "g", "bb"}, {"y"});
  crt::SessionOptions so;
  auto s = crt::Session::create(b.save("ln-bad-bias"), so);
  REQUIRE(s.ok());
  std::vector<float> x(16, 1.f);
  auto r = s->run({{"x", crt::TensorView::of(x.data(), {2, 8})}});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message.find("bias of [3] does not match the normalized size 8") != std::string::npos);
}

TEST_CASE("CUDA Split equals the CPU: GPT-2's q, k, v on the last axis, uneven parts on a middle axis", "[runtime][cuda]") {
  haveGpu(true);
  for (int64_t axis : {2, 1}) {
    INFO("axis " << axis);
    ModelBuilder b(17);
    b.io(true, "x", 1, {"2", "9", "24"});
    b.io(false, "y", 1, {});
    b.initI("sizes", {3}, axis == 2 ? std::vector<int64_t>{8, 8, 8} : std::vector<int64_t>{2, 0, 7});
    attrInt(b.node("Split", {"x", "sizes"}, {"a", "b", "c"}), "axis", axis);
    b.node("Concat", {"c", "b", "a"}, {"y"});  // the parts in another order: every output is read
    attrInt(b.g->mutable_node(1), "axis", axis);
    const std::string model = b.save("cuda-split-" + std::to_string(axis));
    const std::vector<float> x = randoms(2 * 9 * 24, 7);
    compare(model, {{"x", crt::TensorView::of(x.data(), {2, 9, 24})}}, 2, 0);
  }
}

TEST_CASE("CUDA Where equals the CPU: a bool condition from the host, the three operands broadcast", "[runtime][cuda]") {
  haveGpu(true);
  // GPT-2's masking: Where(causal [1, 1, s, t] bool, scores [2, 3, s, t], -inf scalar), then Softmax on the device
  ModelBuilder b(17);
  b.io(true, "scores", 1, {"2", "3", "5", "7"});
  b.io(true, "m", 1, {"1", "1", "5", "7"});
  b.io(false, "y", 1, {"2", "3", "5", "7"});
  b.initF("zero", {}, {0.f});
  b.initF("neg", {}, {-1e4f});
  b.node("Less", {"m", "zero"}, {"keep"});  // bool, made on the host (no device kernel)
  b.node("Where", {"keep", "scores", "neg"}, {"masked"});
  attrInt(b.node("Softmax", {"masked"}, {"y"}), "axis", -1);
  const std::string model = b.save("cuda-where");
  const std::vector<float> x = randoms(2 * 3 * 5 * 7, 8), m = randoms(5 * 7, 9);
  compare(model, {{"scores", crt::TensorView::of(x.data(), {2, 3, 5, 7})}, {"m", crt::TensorView::of(m.data(), {1, 1, 5, 7})}}, 2);
}

TEST_CASE("CUDA rotary-table ops equal the CPU: Gather at one constant index, Cos, Sin, Max and Min, and other Gathers stay on the host", "[runtime][cuda]") {
  haveGpu(true);
  // llama2.c's x[..., 0] / x[..., 1] of its rotary pairs, NeoX's and LLaMA's cos / sin tables, OPT's clamp of the scores
  ModelBuilder b(17);
  b.io(true, "x", 1, {"4", "4", "4", "4"});
  b.io(true, "i", 7, {"1"});
  b.io(false, "y", 1, {"1", "4", "4", "4"});
  b.initI("first", {}, {0});
  b.initI("second", {1}, {1});
  b.initI("last", {}, {-1});
  b.initI("two", {2}, {0, 2});
  attrInt(b.node("Gather", {"x", "first"}, {"a"}), "axis", 3);    // [4, 4, 4]: a scalar index on the last axis
  attrInt(b.node("Gather", {"x", "second"}, {"b"}), "axis", 0);   // [1, 4, 4, 4]: a one-element index on the first
  attrInt(b.node("Gather", {"x", "last"}, {"c"}), "axis", -3);    // [4, 4, 4]: a negative index on a middle axis
  attrInt(b.node("Gather", {"x", "i"}, {"d"}), "axis", 0);        // per-run index: on the host
  attrInt(b.node("Gather", {"x", "two"}, {"e2"}), "axis", 1);     // two indices: on the host
  b.node("Cos", {"a"}, {"ca"});
  b.node("Sin", {"b"}, {"sb"});
  b.node("Max", {"ca", "sb"}, {"m"});  // [1, 4, 4, 4]
  b.node("Min", {"m", "c"}, {"n"});
  b.node("Add", {"n", "d"}, {"s"});
  b.initI("axes", {1}, {1});
  b.node("ReduceSum", {"e2", "axes"}, {"e"});  // [4, 4, 4] on the host
  b.node("Sub", {"s", "e"}, {"y"});
  const std::string model = b.save("cuda-rotary");
  const std::vector<float> x = randoms(4 * 4 * 4 * 4, 11);
  for (int64_t i : {2, -4}) {
    compare(model, {{"x", crt::TensorView::of(x.data(), {4, 4, 4, 4})}, {"i", crt::TensorView::of(&i, {1})}}, 9);
  }
  // a constant index out of range is the same data error on the device as on the CPU
  ModelBuilder bad(17);
  bad.io(true, "x", 1, {"2", "3"});
  bad.io(false, "y", 1, {"2"});
  bad.initI("k", {}, {3});
  attrInt(bad.node("Gather", {"x", "k"}, {"g"}), "axis", 1);
  bad.node("Cos", {"g"}, {"y"});
  const std::string badModel = bad.save("cuda-gather-range");
  const std::vector<float> small = randoms(6, 12);
  for (crt::Device d : {crt::Device::Cpu, crt::Device::Emulated}) {
    crt::SessionOptions so;
    so.device = d;
    auto s = crt::Session::create(badModel, so);
    std::string message = s.status().message;
    if (s.ok()) {
      auto out = s->run({{"x", crt::TensorView::of(small.data(), {2, 3})}});
      REQUIRE_FALSE(out.ok());
      message = out.status().message;
    }
    CHECK(message.find("index 3 is out of range for an axis of size 3") != std::string::npos);
  }
}

TEST_CASE("device placement: a node between host nodes stays on the host, and with a device reader it goes to the device", "[runtime][device]") {
  // GPT-NeoX's positions: Range and Einsum on the host (no device kernels), a Slice between them that the device could
  // run, which would cost a copy in and a copy out
  for (bool deviceReader : {false, true}) {
    INFO((deviceReader ? "the Slice also feeds an Exp" : "the Slice feeds the Einsum only"));
    ModelBuilder b(17);
    b.io(true, "x", 1, {"6"});
    b.io(false, "y", 1, {});
    b.initI("s0", {1}, {1});
    b.initI("e0", {1}, {5});
    b.initF("f", {3}, {0.5f, 0.25f, 0.125f});
    b.node("Slice", {"x", "s0", "e0"}, {"t"});
    auto* e = b.node("Einsum", {"t", "f"}, {deviceReader ? "o" : "y"});
    attrStr(e, "equation", "i,j->ij");
    if (deviceReader) {
      b.node("Exp", {"t"}, {"u"});
      b.node("Unsqueeze", {"u", "s0"}, {"uu"});  // [4, 1] (axes [1])
      b.node("Add", {"o", "uu"}, {"y"});  // [4, 3] + [4, 1]: on the device, with the Einsum's output copied in
    }
    const std::string model = b.save(deviceReader ? "between-host-2" : "between-host-1");
    const std::vector<float> x = randoms(6, 13);
    crt::SessionOptions so;
    so.device = crt::Device::Emulated;
    auto sess = crt::Session::create(model, so);
    INFO(sess.status().message);
    REQUIRE(sess.ok());
    INFO("copied each run: " << sess->info().copied_values);
    if (!deviceReader) {
      CHECK(sess->info().device_nodes == 0);
      CHECK(sess->info().device_copies == 0);
    } else {
      CHECK(sess->info().device_nodes == 4);  // Slice, Exp, Unsqueeze (a view that follows it), Add
      CHECK(sess->info().host_ops == "Einsum 1");
    }
    compare(model, {{"x", crt::TensorView::of(x.data(), {6})}}, deviceReader ? 4 : 0);
  }
}

TEST_CASE("CUDA Cast of float32 to bool and to float32 equals the CPU (OPT's padding mask stays on the device)", "[runtime][cuda]") {
  haveGpu(true);
  // OPT: inverted = 1 - mask; pad = Where(Cast(inverted, bool), min, inverted); NaN casts to true, as on the CPU
  ModelBuilder b(17);
  b.io(true, "m", 1, {"2", "1", "3", "5"});
  b.io(false, "y", 1, {"2", "1", "3", "5"});
  b.initF("one", {}, {1.f});
  b.initF("low", {}, {-3.4e38f});
  b.node("Sub", {"one", "m"}, {"inverted"});
  attrInt(b.node("Cast", {"inverted"}, {"c"}), "to", 9);
  attrInt(b.node("Cast", {"inverted"}, {"same"}), "to", 1);
  b.node("Where", {"c", "low", "same"}, {"y"});
  const std::string model = b.save("cuda-cast");
  std::vector<float> m = randoms(30, 14);
  for (size_t i = 0; i < m.size(); i += 3) m[i] = 1.f;  // (those rows of inverted are 0: false)
  m[4] = NAN;
  compare(model, {{"m", crt::TensorView::of(m.data(), {2, 1, 3, 5})}}, 4, 0);
}

TEST_CASE("CUDA sessions do not leak: 1,000 runs leave the GPU's free memory as it was", "[runtime][cuda]") {
  if (!haveGpu(true)) return;
  const std::string model = matmulModel("int4", 256, 128, 32, 3);
  crt::SessionOptions so;
  so.device = crt::Device::Cuda;
  auto s = crt::Session::create(model, so);
  REQUIRE(s.ok());
  const std::vector<float> x = randoms(4 * 256, 2);
  std::vector<crt::TensorView> out;
  REQUIRE(s->run({{"x", crt::TensorView::of(x.data(), {4, 256})}}, out).ok());  // records the plan
  const int64_t before = crt::detail::cudaFreeBytes();
  for (int i = 0; i < 1000; ++i) REQUIRE(s->run({{"x", crt::TensorView::of(x.data(), {4, 256})}}, out).ok());
  CHECK(crt::detail::cudaFreeBytes() == before);
}
