// device_math_test.cpp — the CUDA kernels' arithmetic (runtime/cuda/device_math.h) on the host, lane by lane in
// the kernels' order, against the CPU runtime: the GEMV's per-lane partials and warp sum for every packed weight
// kind at block and chunk boundaries, the dequantization in front of the prefill GEMM (exact), broadcasting and
// strided-copy index maps, the batched-GEMM stride test, fp16 bits, the KV-cache attention's partial sums (GQA, fp32
// and fp16 caches) and the RoPE / masked-softmax index maps. Runs on every machine; the kernels themselves
// are checked on a GPU by the device tests (parity_test, kv_cache_test, cuda_ops_test).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "runtime/backend.h"
#include "runtime/cuda/device_math.h"
#include "runtime/internal.h"
#include "runtime/matmul.h"
#include "runtime/ops_common.h"
#include "kernel_sets.h"

using namespace crt::detail;
namespace dm = crt::device;

namespace {

/// Row n of y = W x as the CUDA GEMV computes it: 32 lanes' partials, then the warp's butterfly sum.
float deviceRow(const dm::WeightView& v, int64_t n, const float* x) {
  float part[dm::kWarp];
  const bool quant = v.kind == dm::WeightView::Q8 || v.kind == dm::WeightView::Q4;
  for (int l = 0; l < dm::kWarp; ++l)
    part[l] = quant ? dm::quantRowPartial(v, n, x, l, dm::kWarp) : dm::denseRowPartial(v, n, x, l, dm::kWarp);
  return dm::butterflySum(part);
}

/// Checks the device arithmetic on packed weight `w` against the CPU's scalar kernels: GEMV rows within fp32
/// reordering error, dequantized weights bit for bit.
void checkWeight(const PackedWeight& w) {
  const std::vector<float> rows = w.kind == PackedWeight::F32 ? panelsToRows(w) : std::vector<float>();
  const dm::WeightView v = weightView(w, w.kind == PackedWeight::F32 ? static_cast<const void*>(rows.data()) : w.w.data(),
                                      w.scale.data(), w.zp.data());
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> x(w.K);
  for (auto& e : x) e = nd(rng);
  const std::vector<float> want = testutil::runPacked(scalarKernels(), w, x, 1);
  // the dequantized weight: unpack_rows gives the CPU's floats (padding as zeros)
  const int64_t ld = (w.kind == PackedWeight::Q8 || w.kind == PackedWeight::Q4) ? w.nblk * w.P : w.K;
  std::vector<float> unpacked(static_cast<size_t>(w.N * ld));
  if (w.kind != PackedWeight::F32) scalarKernels().unpack_rows(w, 0, w.N, unpacked.data(), ld);
  for (int64_t n = 0; n < w.N; ++n) {
    double mag = 0;
    for (int64_t k = 0; k < w.K; ++k) {
      const float wk = dm::weightAt(v, n, k);
      mag += std::abs(static_cast<double>(wk) * x[k]);
      if (w.kind == PackedWeight::F32) {
        CHECK(wk == rows[n * w.K + k]);
      } else if (w.kind == PackedWeight::F16) {
        CHECK(wk == unpacked[n * ld + k]);
      } else {
        const int64_t b = k / w.block;
        CHECK(wk == unpacked[n * ld + b * w.P + (k - b * w.block)]);
      }
    }
    CHECK(std::abs(deviceRow(v, n, x.data()) - want[n]) <= 1e-5 * std::max(mag, 1e-3));
  }
}

}  // namespace

TEST_CASE("device GEMV arithmetic, lane by lane, equals the CPU kernels for fp32, fp16, int8 and int4 weights", "[runtime][device]") {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  for (int64_t K : {1, 31, 32, 33, 100, 130}) {
    for (int64_t N : {1, 5, 33}) {
      INFO("K " << K << " N " << N);
      // fp32 and fp16 weights [K, N]
      std::vector<float> wf(K * N);
      std::vector<uint16_t> wh(K * N);
      for (int64_t i = 0; i < K * N; ++i) wf[i] = nd(rng), wh[i] = floatToHalf(wf[i]);
      for (bool half : {false, true}) {
        Buf b;
        b.dt = half ? crt::DType::F16 : crt::DType::F32;
        b.shape = Shape{K, N};
        b.data = half ? static_cast<void*>(wh.data()) : static_cast<void*>(wf.data());
        auto pw = packDense(b);
        REQUIRE(pw);
        checkWeight(*pw);
      }
      // int8 / int4 with zero points, per column and blocked (16, 32, 64, 128: chunks within and across blocks)
      for (int bits : {8, 4})
        for (int64_t block : {int64_t{0}, int64_t{16}, int64_t{32}, int64_t{64}, int64_t{128}}) {
          INFO("bits " << bits << " block " << block);
          const int64_t nb = block ? (K + block - 1) / block : 1, ns = block ? nb * N : N;
          std::vector<uint8_t> q8(K * N), q4((K * N + 1) / 2), z8(ns), z4((ns + 1) / 2);
          std::vector<float> s(ns);
          for (auto& e : s) e = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
          for (int64_t i = 0; i < K * N; ++i) {
            const int q = std::uniform_int_distribution<int>(0, bits == 8 ? 255 : 15)(rng);
            q8[i] = static_cast<uint8_t>(q);
            q4[i / 2] |= static_cast<uint8_t>(q << (4 * (i & 1)));
          }
          for (int64_t i = 0; i < ns; ++i) {
            const int z = std::uniform_int_distribution<int>(0, bits == 8 ? 255 : 15)(rng);
            z8[i] = static_cast<uint8_t>(z);
            z4[i / 2] |= static_cast<uint8_t>(z << (4 * (i & 1)));
          }
          Buf q, sc, zp;
          q.dt = bits == 8 ? crt::DType::U8 : kU4;
          q.shape = Shape{K, N};
          q.data = bits == 8 ? static_cast<void*>(q8.data()) : static_cast<void*>(q4.data());
          sc.dt = crt::DType::F32;
          sc.shape = block ? Shape{nb, N} : Shape{N};
          sc.data = s.data();
          zp = sc;
          zp.dt = q.dt;
          zp.data = bits == 8 ? static_cast<void*>(z8.data()) : static_cast<void*>(z4.data());
          auto pw = packDequantize(q, sc, &zp, block ? 0 : 1, block);
          REQUIRE(pw);
          checkWeight(*pw);
        }
    }
  }
}

TEST_CASE("device index maps: broadcasting, strided copies (Transpose, Slice) and batched-GEMM strides", "[runtime][device]") {
  SECTION("broadcast offsets equal the CPU's broadcast strides") {
    const std::vector<std::pair<Shape, Shape>> cases = {{{2, 3, 4}, {4}}, {{2, 1, 4}, {3, 1}}, {{1}, {5, 2}}, {{}, {2, 2}},
                                                        {{2, 3, 1, 5}, {1, 3, 4, 1}}, {{7}, {7}}};
    for (const auto& [a, b] : cases) {
      dm::Broadcast bc;
      REQUIRE(dm::makeBroadcast(a.d, a.rank, b.d, b.rank, bc));
      Shape os;
      for (int i = 0; i < bc.rank; ++i) os.push(bc.out[i]);
      int64_t sa[kMaxRank], sb[kMaxRank];
      bstrides(a, os, sa);
      bstrides(b, os, sb);
      for (int64_t i = 0; i < os.numel(); ++i) {
        int64_t oa, ob, ra = 0, rb = 0, rem = i;
        dm::broadcastOffsets(bc, i, oa, ob);
        for (int d = os.rank - 1; d >= 0; --d) {
          ra += (rem % os[d]) * sa[d];
          rb += (rem % os[d]) * sb[d];
          rem /= os[d];
        }
        CHECK(oa == ra);
        CHECK(ob == rb);
      }
    }
    dm::Broadcast bc;
    const int64_t a[] = {2, 3}, b[] = {4};
    CHECK_FALSE(dm::makeBroadcast(a, 2, b, 1, bc));
  }
  SECTION("strided sources equal the CPU's strided copy") {
    std::vector<float> src(4 * 5 * 6);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i);
    struct Case {
      Shape os;
      std::vector<int64_t> st;
      int64_t offset;
    };
    const std::vector<Case> cases = {{{6, 5, 4}, {1, 6, 30}, 0},     // a full transpose
                                     {{2, 5, 3}, {30, 6, 2}, 1},     // a slice with step 2 from offset 1
                                     {{4, 2, 6}, {30, -6, 1}, 24},   // a negative step
                                     {{4, 5, 1}, {30, 6, 0}, 5}};    // the last element of each row
    for (const Case& c : cases) {
      std::vector<float> want(c.os.numel());
      stridedCopy(reinterpret_cast<const uint8_t*>(src.data() + c.offset), c.st.data(), c.os, reinterpret_cast<uint8_t*>(want.data()), 4);
      dm::Strided v;
      v.rank = c.os.rank;
      v.offset = c.offset;
      for (int d = 0; d < v.rank; ++d) v.os[d] = c.os[d], v.st[d] = c.st[d];
      for (int64_t i = 0; i < c.os.numel(); ++i) CHECK(src[dm::stridedSource(v, i)] == want[i]);
    }
  }
  SECTION("uniform batches: dense, broadcast, and the mixed case that needs one GEMM per batch") {
    int64_t stride = -1;
    const int64_t dims[] = {2, 3};
    const int64_t dense[] = {3 * 20, 20}, zero[] = {0, 0}, mixed[] = {20, 0}, ones[] = {0, 20};
    CHECK(dm::uniformBatch(dims, dense, 2, 20, stride));
    CHECK(stride == 20);
    CHECK(dm::uniformBatch(dims, zero, 2, 20, stride));
    CHECK(stride == 0);
    CHECK_FALSE(dm::uniformBatch(dims, mixed, 2, 20, stride));  // GQA's repeated heads
    const int64_t dims1[] = {1, 3};
    CHECK(dm::uniformBatch(dims1, ones, 2, 20, stride));  // a size-1 dim's stride does not matter
  }
}

namespace {

/// fp16 bits' value by the format's definition (the reference of the conversions; NaN for NaN bits).
double halfValue(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m ? NAN : sign * INFINITY;
  return sign * (e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
}

/// The fp16 nearest to f, ties to the even significand, by search over the ordered positive halves (0x0000..0x7bff
/// are increasing); beyond the midpoint of the largest half and 2^16, Inf.
uint16_t nearestHalf(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7e00;
  const double a = std::abs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;
  int lo = 0, hi = 0x7bff;
  while (lo < hi) {  // the largest bits whose value is <= a
    const int mid = (lo + hi + 1) / 2;
    if (halfValue(static_cast<uint16_t>(mid)) <= a) lo = mid;
    else hi = mid - 1;
  }
  const double below = halfValue(static_cast<uint16_t>(lo)), above = lo == 0x7bff ? 65536.0 : halfValue(static_cast<uint16_t>(lo + 1));
  const int pick = a - below < above - a ? lo : a - below > above - a ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
  return sign | static_cast<uint16_t>(pick);
}

}  // namespace

TEST_CASE("fp16 conversions (the CPU's and the kernels' one function each way) round to nearest even by the format's definition", "[runtime][device]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want = halfValue(static_cast<uint16_t>(h));
    const float a = dm::halfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) CHECK(std::isnan(a));
    else CHECK(static_cast<double>(a) == want);
  }
  // every half, the midpoints between neighbours (ties) and the floats on either side of them, both signs
  std::vector<float> xs = {0.f, -0.f, 65504.f, 65519.99f, 65520.f, 1e9f, INFINITY, -INFINITY, NAN, 5.96e-8f, 2.98e-8f, 2.9802322e-8f, 1e-30f};
  for (int h = 0; h < 0x7bff; ++h) {
    const float mid = static_cast<float>((halfValue(static_cast<uint16_t>(h)) + halfValue(static_cast<uint16_t>(h + 1))) / 2);
    for (float x : {static_cast<float>(halfValue(static_cast<uint16_t>(h))), mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)})
      xs.push_back(x), xs.push_back(-x);
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    xs.push_back(f);
  }
  int bad = 0;
  for (float x : xs) {
    const uint16_t got = dm::floatToHalfBits(x), want = nearestHalf(x);
    if (std::isnan(x) ? !std::isnan(dm::halfBitsToFloat(got)) : got != want) {
      if (++bad <= 5) FAIL_CHECK("float " << x << ": bits " << got << ", want " << want);
    }
    CHECK(floatToHalf(x) == got);  // (the CPU's conversion is this one)
  }
  CHECK(bad == 0);
  // an activation element as the kernels read and write it
  const float f[2] = {1.5f, -0.1f};
  uint16_t hb[2];
  dm::store(hb, 0, f[0]), dm::store(hb, 1, f[1]);
  CHECK(dm::load(hb, 0) == 1.5f);
  CHECK(dm::load(hb, 1) == halfToFloat(floatToHalf(-0.1f)));
  CHECK(dm::load(f, 1) == -0.1f);
}

TEST_CASE("device GEMV with float16 activations: the same lanes and sums as with their float32 values", "[runtime][device]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  const int64_t K = 97, N = 7;  // (chunks across blocks of 32 and a ragged tail)
  std::vector<float> wf(K * N), x(K);
  std::vector<uint16_t> wh(K * N), xh(K);
  for (int64_t i = 0; i < K * N; ++i) wf[i] = nd(rng), wh[i] = floatToHalf(wf[i]);
  for (int64_t k = 0; k < K; ++k) xh[k] = floatToHalf(nd(rng)), x[k] = halfToFloat(xh[k]);
  std::vector<std::shared_ptr<PackedWeight>> ws;
  for (bool half : {false, true}) {
    Buf b;
    b.dt = half ? crt::DType::F16 : crt::DType::F32;
    b.shape = Shape{K, N};
    b.data = half ? static_cast<void*>(wh.data()) : static_cast<void*>(wf.data());
    ws.push_back(packDense(b));
  }
  std::vector<uint8_t> q(K * N);
  for (auto& e : q) e = static_cast<uint8_t>(rng() & 0xff);
  Buf qb, sc;
  qb.dt = crt::DType::U8, qb.shape = Shape{K, N}, qb.data = q.data();
  std::vector<float> scales(((K + 31) / 32) * N, 0.05f);
  sc.dt = crt::DType::F32, sc.shape = Shape{(K + 31) / 32, N}, sc.data = scales.data();
  ws.push_back(packDequantize(qb, sc, nullptr, 0, 32));
  for (const auto& w : ws) {
    REQUIRE(w);
    const std::vector<float> rows = w->kind == PackedWeight::F32 ? panelsToRows(*w) : std::vector<float>();
    const dm::WeightView v = weightView(*w, w->kind == PackedWeight::F32 ? static_cast<const void*>(rows.data()) : w->w.data(),
                                        w->scale.data(), w->zp.data());
    const bool quant = v.kind == dm::WeightView::Q8;
    for (int64_t n = 0; n < N; ++n) {
      float pf[dm::kWarp], ph[dm::kWarp];
      for (int l = 0; l < dm::kWarp; ++l) {
        pf[l] = quant ? dm::quantRowPartial(v, n, x.data(), l, dm::kWarp) : dm::denseRowPartial(v, n, x.data(), l, dm::kWarp);
        ph[l] = quant ? dm::quantRowPartial(v, n, xh.data(), l, dm::kWarp) : dm::denseRowPartial(v, n, xh.data(), l, dm::kWarp);
      }
      CHECK(dm::butterflySum(ph) == dm::butterflySum(pf));
    }
  }
}

TEST_CASE("device elementwise functions equal the CPU's", "[runtime][device]") {
  for (float x : {-3.5f, -1.f, 0.f, 0.25f, 2.f, 9.f}) {
    CHECK(dm::applyBinary(dm::Binary::Add, x, 1.5f) == x + 1.5f);
    CHECK(dm::applyBinary(dm::Binary::Sub, x, 1.5f) == x - 1.5f);
    CHECK(dm::applyBinary(dm::Binary::Mul, x, 1.5f) == x * 1.5f);
    CHECK(dm::applyBinary(dm::Binary::Div, x, 1.5f) == x / 1.5f);
    CHECK(dm::applyBinary(dm::Binary::Pow, x, 2.f) == x * x);
    CHECK(dm::applyBinary(dm::Binary::Max, x, 0.25f) == std::max(x, 0.25f));
    CHECK(dm::applyBinary(dm::Binary::Min, x, 0.25f) == std::min(x, 0.25f));
    CHECK(std::isnan(dm::applyBinary(dm::Binary::Max, x, NAN)));  // NaN propagates, as the CPU's Max
    CHECK(std::isnan(dm::applyBinary(dm::Binary::Min, NAN, x)));
    CHECK(dm::applyUnary(dm::Unary::Neg, x) == -x);
    CHECK(dm::applyUnary(dm::Unary::Relu, x) == std::max(x, 0.f));
    CHECK(dm::applyUnary(dm::Unary::Sigmoid, x) == Approx(1 / (1 + std::exp(-x))).epsilon(1e-6));
    CHECK(dm::applyUnary(dm::Unary::Tanh, x) == Approx(std::tanh(x)).epsilon(1e-6));
    CHECK(dm::applyUnary(dm::Unary::Exp, x) == Approx(std::exp(x)).epsilon(1e-6));
    CHECK(dm::applyUnary(dm::Unary::Erf, x) == Approx(std::erf(x)).epsilon(1e-6).margin(1e-7));
    CHECK(dm::applyUnary(dm::Unary::Cos, x) == Approx(std::cos(x)).epsilon(1e-6).margin(1e-7));
    CHECK(dm::applyUnary(dm::Unary::Sin, x) == Approx(std::sin(x)).epsilon(1e-6).margin(1e-7));
    if (x > 0) CHECK(dm::applyUnary(dm::Unary::Sqrt, x) == std::sqrt(x));
    if (x != 0) CHECK(dm::applyUnary(dm::Unary::Reciprocal, x) == 1 / x);
  }
}

namespace {

/// cuBLAS's SGEMM contract on the host: column-major C[m, n] = op(A) op(B), op = transpose where asked.
void colMajorSgemm(const dm::GemmCall& g, const float* A, const float* B, float* C) {
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      double s = 0;
      for (int p = 0; p < g.k; ++p) {
        const float a = g.transA ? A[p + i * g.lda] : A[i + p * g.lda];
        const float b = g.transB ? B[j + p * g.ldb] : B[p + j * g.ldb];
        s += static_cast<double>(a) * b;
      }
      C[i + j * g.ldc] = static_cast<float>(s);
    }
}

}  // namespace

TEST_CASE("the cuBLAS calls compute the row-major products: X W^T (packed weights) and A B (attention)", "[runtime][device]") {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  for (int64_t M : {1, 3, 16})
    for (int64_t N : {1, 5, 8})
      for (int64_t K : {1, 7, 32})
        for (bool weightRows : {true, false}) {
          INFO("M " << M << " N " << N << " K " << K << (weightRows ? " X W^T" : " A B"));
          std::vector<float> X(M * K), R(K * N), Y(M * N, -1.f);
          for (auto& e : X) e = nd(rng);
          for (auto& e : R) e = nd(rng);  // [N, K] rows of a weight, or [K, N]
          colMajorSgemm(dm::rowMajorGemm(M, N, K, weightRows), R.data(), X.data(), Y.data());
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double want = 0;
              for (int64_t k = 0; k < K; ++k) want += static_cast<double>(X[m * K + k]) * (weightRows ? R[n * K + k] : R[k * N + n]);
              CHECK(Y[m * N + n] == Approx(want).margin(1e-5));
            }
        }
}

TEST_CASE("device KV-cache attention arithmetic (GQA, fp32, fp16 and int8 caches) equals the CPU's cached attention", "[runtime][device][kv]") {
  // The CUDA kernels' schemes: a score is 32 lanes' partials and the warp's sum; an output value is the partials of
  // kRowThreads / D groups over the cached rows, summed in group order (one thread over all rows when D > 256).
  constexpr int kRowThreads = 256;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int kind : {0, 1, 2})  // fp32, fp16, int8 with a scale per row
    for (int64_t D : {8, 33, 64, 80, 300})
      for (int64_t rep : {1, 3}) {
        const bool f16 = kind == 1, i8 = kind == 2;
        INFO((i8 ? "int8" : f16 ? "fp16" : "fp32") << " cache, head size " << D << ", GQA repeat " << rep);
        const int64_t kvHeads = 2, capacity = 13, T = 11, S = 2, H = kvHeads * rep;
        std::vector<float> cache(static_cast<size_t>(kvHeads * capacity * D));
        for (auto& e : cache) e = nd(rng);
        std::vector<uint16_t> bits(cache.size());
        for (size_t i = 0; i < cache.size(); ++i) bits[i] = floatToHalf(cache[i]), cache[i] = f16 ? halfToFloat(bits[i]) : cache[i];
        std::vector<int8_t> q8(cache.size());
        std::vector<float> scales(static_cast<size_t>(kvHeads * capacity));
        for (size_t r = 0; r < scales.size() && i8; ++r) {  // the CPU cache's quantization, then its dequantized rows
          float m = 0.f;
          for (int64_t d = 0; d < D; ++d) m = std::max(m, std::abs(cache[r * D + d]));
          scales[r] = dm::kvInt8Scale(m, false);
          for (int64_t d = 0; d < D; ++d) {
            q8[r * D + d] = dm::kvInt8(cache[r * D + d], scales[r]);
            CHECK(std::abs(q8[r * D + d] * scales[r] - cache[r * D + d]) <= 0.501f * scales[r]);  // half a step (and float rounding)
            cache[r * D + d] = static_cast<float>(q8[r * D + d]) * scales[r];
          }
        }
        dm::KvCache kv;
        kv.data = i8 ? static_cast<const void*>(q8.data()) : f16 ? static_cast<const void*>(bits.data()) : cache.data();
        kv.scales = i8 ? scales.data() : nullptr;
        kv.f16 = f16, kv.capacity = capacity, kv.D = D, kv.rep = rep;
        std::vector<float> q(static_cast<size_t>(H * S * D)), p(static_cast<size_t>(H * S * T));
        for (auto& e : q) e = nd(rng);
        for (auto& e : p) e = std::abs(nd(rng));
        for (int64_t qh = 0; qh < H; ++qh) {
          const float* rows = cache.data() + dm::kvRowOffset(kv, qh / rep, 0);  // what the CPU op reads for this head
          CHECK(rows == cache.data() + (qh / rep) * capacity * D);
          std::vector<float> scores(static_cast<size_t>(S * T)), out(static_cast<size_t>(S * D));
          scalarKernels().gemm_nt(S, T, D, q.data() + qh * S * D, D, rows, D, scores.data(), T);
          scalarKernels().gemm_nn(S, D, T, p.data() + qh * S * T, T, rows, D, out.data(), D);
          for (int64_t s = 0; s < S; ++s) {
            const float* qr = q.data() + (qh * S + s) * D;
            const float* pr = p.data() + (qh * S + s) * T;
            for (int64_t t = 0; t < T; ++t) {
              float part[dm::kWarp];
              double mag = 0;
              for (int l = 0; l < dm::kWarp; ++l) part[l] = dm::kvScorePartial(kv, qr, qh, t, l, dm::kWarp);
              for (int64_t d = 0; d < D; ++d) mag += std::abs(static_cast<double>(qr[d]) * rows[t * D + d]);
              CHECK(std::abs(dm::butterflySum(part) - scores[s * T + t]) <= 1e-5 * std::max(mag, 1e-3));
            }
            const int64_t groups = D > kRowThreads ? 1 : kRowThreads / D;
            for (int64_t d = 0; d < D; ++d) {
              float sum = 0.f;
              double mag = 0;
              for (int64_t g = 0; g < groups; ++g) sum += dm::kvValuePartial(kv, pr, qh, T, d, g, groups);
              for (int64_t t = 0; t < T; ++t) mag += std::abs(static_cast<double>(pr[t]) * rows[t * D + d]);
              CHECK(std::abs(sum - out[s * D + d]) <= 1e-5 * std::max(mag, 1e-3));
            }
          }
        }
        // appended rows land where the CPU op writes them: kv head h, row t at (h * capacity + t) * D
        CHECK(dm::kvRowOffset(kv, 1, 5) == (1 * capacity + 5) * D);
      }
}

TEST_CASE("int8 KV-cache rows: a scale per row from its largest value, round to nearest even, zero, NaN and Inf rows", "[runtime][device][kv]") {
  CHECK(dm::kvInt8Scale(127.f, false) == 1.f);
  CHECK(dm::kvInt8(2.5f, 1.f) == 2);    // ties to even
  CHECK(dm::kvInt8(-3.5f, 1.f) == -4);
  CHECK(dm::kvInt8(127.f, 1.f) == 127);
  CHECK(dm::kvInt8(-127.f, 1.f) == -127);
  CHECK(dm::kvInt8(0.3f, 0.f) == 0);    // a row of zeros: scale 0, values 0
  CHECK(std::isnan(dm::kvInt8Scale(1.f, true)));
  CHECK(dm::kvInt8(1.f, NAN) == 0);      // (the NaN scale makes every product NaN)
  CHECK(dm::kvInt8(1.f, INFINITY) == 0); // an Inf row: 0 * Inf = NaN when read
  dm::KvCache kv;
  const int8_t q[2] = {0, 5};
  const float inf = INFINITY;
  kv.data = q, kv.scales = &inf, kv.D = 2, kv.capacity = 1;
  CHECK(std::isnan(dm::kvAt(kv, 0)));
  CHECK(std::isinf(dm::kvAt(kv, 1)));
}

TEST_CASE("device RoPE and masked-softmax index maps equal the CPU's fused ops' (the ops share them)", "[runtime][device]") {
  // ropeOffsets over A = [2, 3, 4] with pairs on the last axis (t [2, 3, 8]) stacked last (y [2, 3, 4, 2]), tables [3, 4]
  dm::Rope r;
  r.rank = 3;
  const int64_t A[3] = {2, 3, 4}, ta[3] = {24, 8, 2}, tc[3] = {0, 4, 1}, ty[3] = {24, 8, 2};
  for (int d = 0; d < 3; ++d) r.A[d] = A[d], r.ta[d] = ta[d], r.tc[d] = tc[d], r.ts[d] = tc[d], r.ty[d] = ty[d];
  r.bOff = 1, r.second = 1;
  for (int64_t i = 0; i < 24; ++i) {
    int64_t a, c, s, y;
    dm::ropeOffsets(r, i, a, c, s, y);
    const int64_t i0 = i / 12, i1 = i / 4 % 3, i2 = i % 4;
    CHECK(a == i0 * 24 + i1 * 8 + 2 * i2);
    CHECK(c == i1 * 4 + i2);
    CHECK(s == c);
    CHECK(y == a);
  }
  float y0, y1;
  dm::ropePair(3.f, 5.f, 0.5f, 0.25f, y0, y1);
  CHECK(y0 == 3.f * 0.5f - 5.f * 0.25f);
  CHECK(y1 == 3.f * 0.25f + 5.f * 0.5f);
  // maskRowOffset: scores [2, 3, 5] against a mask [3, 5] (strides 0, 5, 1) and a mask [2, 1, 5] (5, 0, 1)
  dm::RowMask m;
  m.rank = 3;
  m.dims[0] = 2, m.dims[1] = 3, m.dims[2] = 5;
  m.ms[0] = 0, m.ms[1] = 5, m.ms[2] = 1;
  for (int64_t row = 0; row < 6; ++row) CHECK(dm::maskRowOffset(m, row) == row % 3 * 5);
  m.ms[0] = 5, m.ms[1] = 0;
  for (int64_t row = 0; row < 6; ++row) CHECK(dm::maskRowOffset(m, row) == row / 3 * 5);
  CHECK(dm::scaleMask(3.f, 5.656854f, -1.f) == 3.f / 5.656854f + -1.f);
}

TEST_CASE("device three-operand broadcasting (Where) maps every output to the operands' elements", "[runtime][device]") {
  const int64_t c[] = {2, 1, 4}, a[] = {3, 1}, bb[] = {4};
  const int64_t* dims[3] = {c, a, bb};
  const int ranks[3] = {3, 2, 1};
  dm::Broadcast3 bc;
  REQUIRE(dm::makeBroadcast3(dims, ranks, bc));
  REQUIRE(bc.rank == 3);
  CHECK(bc.out[0] == 2);
  CHECK(bc.out[1] == 3);
  CHECK(bc.out[2] == 4);
  for (int64_t i = 0; i < 24; ++i) {
    const int64_t i0 = i / 12, i1 = i / 4 % 3, i2 = i % 4;
    int64_t off[3];
    dm::broadcastOffsets3(bc, i, off);
    CHECK(off[0] == i0 * 4 + i2);  // c [2, 1, 4]
    CHECK(off[1] == i1);           // a [3, 1]
    CHECK(off[2] == i2);           // b [4]
  }
  const int64_t bad[] = {5};
  const int64_t* dims2[3] = {c, a, bad};
  CHECK_FALSE(dm::makeBroadcast3(dims2, ranks, bc));  // 4 against 5
}
