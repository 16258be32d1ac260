// kernels_test.cpp — every kernel set (scalar, AVX2, AVX-512 where the CPU has them) against a double-precision
// reference, at sizes below, equal to, above and a multiple of the block (32-value chunks, quantization
// blocks) and tile (32-column panels, 12/4/2/1-row tiles); fp16 conversion; softmax/sigmoid.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/ops_common.h"
#include "runtime/sparse.h"
#include "runtime/thread_pool.h"
#include "kernel_sets.h"

using namespace crt;
using namespace crt::detail;

namespace {

using testutil::HeapAlloc;
using testutil::kernelSets;

/// A quantized weight [K, N] as DequantizeLinear inputs: int8/uint8 values, blocked or per-column scales.
struct QuantCase {
  Buf q, scale, zp;
  std::vector<int8_t> q8;
  std::vector<uint8_t> q4;  // packed uint4, two per byte
  std::vector<float> s;
  std::vector<uint8_t> z8;
  std::vector<uint8_t> z4;
};

/// Reference: y[m, n] = sum_k x[m, k] * W[k, n] in double, W given densely.
std::vector<double> reference(const std::vector<float>& x, const std::vector<double>& w, int64_t M, int64_t K, int64_t N) {
  std::vector<double> y(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += x[m * K + k] * w[k * N + n];
  return y;
}

/// Every kernel set that takes the weight's layout (Q8P / Q4P / F16P: those with their kernels) at M from GEMV to GEMM tiles against
/// the reference; returns the number of kernel sets run.
int checkAll(const PackedWeight& pw, const std::vector<double>& dense, int64_t K, int64_t N) {
  int sets = 0;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  ThreadPool pool(2);
  for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 12, 13, 20, 29}) {  // (tiles: AVX2 6 and 2, AVX-512 12, 8, 4)
    std::vector<float> x(M * K);
    for (auto& v : x) v = nd(rng);
    auto want = reference(x, dense, M, K, N);
    double scale = 1e-6;
    for (double v : want) scale = std::max(scale, std::abs(v));
    for (const Kernels* k : kernelSets()) {
      if (pw.panelOrdered() && !k->converting_gemm_panels) continue;
      INFO("kernels " << k->isa << " M=" << M << " K=" << K << " N=" << N << " kind " << pw.kind);
      sets += M == 1;
      HeapAlloc alloc;
      Node node;
      node.op = "MatMul";
      std::vector<Buf> vals(1);
      RunEnv env{nullptr, vals.data(), &alloc, &pool, k, 0};
      OpCtx c{env, node};
      std::vector<float> y(M * N, -1.f);
      packedMatMul(c, pw, x.data(), M, y.data());
      double err = 0;
      for (int64_t i = 0; i < M * N; ++i) err = std::max(err, std::abs(y[i] - want[i]));
      CHECK(err <= 2e-5 * scale * std::sqrt(static_cast<double>(K)));
    }
  }
  return sets;
}

}  // namespace

TEST_CASE("fp32 and fp16 packed MatMul (panels / GEMV / GEMM) match the reference", "[runtime][kernels]") {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (int64_t K : {1, 31, 32, 33, 64, 172}) {
    for (int64_t N : {1, 31, 32, 33, 96, 160}) {
      for (bool half : {false, true}) {
        std::vector<float> w(K * N);
        std::vector<uint16_t> h(K * N);
        std::vector<double> dense(K * N);
        for (int64_t i = 0; i < K * N; ++i) {
          w[i] = nd(rng);
          h[i] = floatToHalf(w[i]);
          dense[i] = half ? halfToFloat(h[i]) : w[i];
        }
        Buf b;
        b.dt = half ? DType::F16 : DType::F32;
        b.shape = Shape{K, N};
        b.data = half ? static_cast<void*>(h.data()) : static_cast<void*>(w.data());
        auto pw = packDense(b);
        REQUIRE(pw);
        checkAll(*pw, dense, K, N);
        if (half) {  // as exact compute runs it: in F16P panels
          auto panels = packDense(b);
          REQUIRE(panelize(*panels));
          CHECK(panels->kind == PackedWeight::F16P);
          CHECK(checkAll(*panels, dense, K, N) == (avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0));
        }
      }
    }
  }
}

TEST_CASE("int8 and int4 DequantizeLinear weights (per tensor, per column, blocked) match the reference", "[runtime][kernels]") {
  std::mt19937 rng(2);
  for (int64_t K : {16, 31, 32, 33, 64, 100, 172}) {
    for (int64_t N : {1, 5, 32, 33, 160}) {  // (160: the panel GEMV's groups of four (two) panels, then one)
      for (int64_t block : {int64_t{0}, int64_t{16}, int64_t{32}, int64_t{64}}) {
        for (int bits : {8, 4}) {
          for (bool withZp : {false, true}) {
            INFO("bits " << bits << " block " << block << " zp " << withZp);
            const int64_t nb = block ? (K + block - 1) / block : 1;
            const int64_t ns = block ? nb * N : N;
            std::vector<int8_t> q8(K * N);
            std::vector<uint8_t> q4((K * N + 1) / 2), z4((ns + 1) / 2);
            std::vector<int8_t> z8(ns);
            std::vector<float> s(ns);
            for (auto& v : s) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
            std::vector<int> qv(K * N), zv(ns);
            for (int64_t i = 0; i < K * N; ++i) {
              qv[i] = bits == 8 ? std::uniform_int_distribution<int>(-128, 127)(rng) : std::uniform_int_distribution<int>(0, 15)(rng);
              if (bits == 8) q8[i] = static_cast<int8_t>(qv[i]);
              else q4[i / 2] |= static_cast<uint8_t>(qv[i] << (4 * (i & 1)));
            }
            for (int64_t i = 0; i < ns; ++i) {
              zv[i] = withZp ? (bits == 8 ? std::uniform_int_distribution<int>(-20, 20)(rng) : std::uniform_int_distribution<int>(0, 15)(rng)) : 0;
              if (bits == 8) z8[i] = static_cast<int8_t>(zv[i]);
              else z4[i / 2] |= static_cast<uint8_t>(zv[i] << (4 * (i & 1)));
            }
            Buf q, sc, zp;
            q.dt = bits == 8 ? DType::I8 : kU4;
            q.shape = Shape{K, N};
            q.data = bits == 8 ? static_cast<void*>(q8.data()) : static_cast<void*>(q4.data());
            sc.dt = DType::F32;
            sc.shape = block ? Shape{nb, N} : Shape{N};
            sc.data = s.data();
            zp = sc;
            zp.dt = q.dt;
            zp.data = bits == 8 ? static_cast<void*>(z8.data()) : static_cast<void*>(z4.data());
            auto pw = packDequantize(q, sc, withZp ? &zp : nullptr, block ? 0 : 1, block);
            REQUIRE(pw);
            CHECK(pw->kind == (bits == 8 ? PackedWeight::Q8 : PackedWeight::Q4));
            std::vector<double> dense(K * N);
            for (int64_t k = 0; k < K; ++k)
              for (int64_t n = 0; n < N; ++n) {
                const int64_t si = block ? (k / block) * N + n : n;
                dense[k * N + n] = (qv[k * N + n] - zv[si]) * static_cast<double>(s[si]);
              }
            checkAll(*pw, dense, K, N);
            // Rearranged into Q8P / Q4P panels, as exact compute runs them: int8 in one block per row, int4 in one
            // block or in blocks of a multiple of 32 (int8 in blocks, int4 in blocks of 16 keep rows).
            auto panels = packDequantize(q, sc, withZp ? &zp : nullptr, block ? 0 : 1, block);
            const bool takes = panels->nblk == 1 || (bits == 4 && panels->block % 32 == 0);
            REQUIRE(panelize(*panels) == takes);
            if (takes) {
              CHECK(panels->kind == (bits == 8 ? PackedWeight::Q8P : PackedWeight::Q4P));
              CHECK(panels->w.size() == static_cast<size_t>((N + kPanel - 1) / kPanel * K * kPanel * bits / 8));
              const int sets = checkAll(*panels, dense, K, N);
              CHECK(sets == (avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0));
            }
          }
        }
      }
    }
  }
}

/// A com.microsoft MatMulNBits node with its K, N, bits and block_size attributes (what packMatMulNBits reads).
static Node matMulNBitsNode(int64_t K, int64_t N, int64_t bits, int64_t bs) {
  Node node;
  node.op = "MatMulNBits";
  node.domain = "com.microsoft";
  for (auto [key, v] : {std::pair<const char*, int64_t>{"K", K}, {"N", N}, {"bits", bits}, {"block_size", bs}}) {
    node.attrs[key].kind = Attr::Int;
    node.attrs[key].i = v;
  }
  return node;
}

TEST_CASE("MatMulNBits packing (2, 4, 8 bits, default and packed zero points) matches the reference", "[runtime][kernels]") {
  std::mt19937 rng(4);
  for (int bits : {2, 4, 8}) {
    for (int64_t K : {16, 40, 64, 100}) {
      for (int64_t bs : {16, 32}) {
        for (bool withZp : {false, true}) {
          const int64_t N = 7, nblk = (K + bs - 1) / bs, blob = bs * bits / 8, zrow = (nblk * bits + 7) / 8;
          std::vector<uint8_t> B(N * nblk * blob, 0), Z(N * zrow, 0);
          std::vector<float> S(N * nblk);
          std::vector<double> dense(K * N);
          for (auto& v : S) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
          std::vector<int> zs(N * nblk);
          for (int64_t n = 0; n < N; ++n)
            for (int64_t b = 0; b < nblk; ++b) {
              int z = withZp ? std::uniform_int_distribution<int>(0, (1 << bits) - 1)(rng) : 1 << (bits - 1);
              zs[n * nblk + b] = z;
              Z[n * zrow + b * bits / 8] |= static_cast<uint8_t>(z << ((b * bits) % 8));
            }
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) {
              int v = std::uniform_int_distribution<int>(0, (1 << bits) - 1)(rng);
              const int64_t b = k / bs, j = k % bs;
              B[(n * nblk + b) * blob + j * bits / 8] |= static_cast<uint8_t>(v << ((j * bits) % 8));
              dense[k * N + n] = (v - zs[n * nblk + b]) * static_cast<double>(S[n * nblk + b]);
            }
          const Node node = matMulNBitsNode(K, N, bits, bs);
          Buf b{DType::U8, Shape{N, nblk, blob}, B.data()}, s{DType::F32, Shape{N * nblk}, S.data()},
              z{DType::U8, Shape{N * zrow}, Z.data()};
          INFO("bits " << bits << " K " << K << " block " << bs << " zp " << withZp);
          auto pw = packMatMulNBits(node, b, s, withZp ? &z : nullptr);
          checkAll(*pw, dense, K, N);
          // as exact compute runs it: 2- and 4-bit blocks of 32 (or one block) in Q4P panels
          auto panels = packMatMulNBits(node, b, s, withZp ? &z : nullptr);
          if (panelize(*panels)) {
            CHECK(((bits < 8 && (bs == 32 || nblk == 1)) || (bits == 8 && nblk == 1)));
            checkAll(*panels, dense, K, N);
          }
        }
      }
    }
  }
}

TEST_CASE("the panel GEMMs give the same bits from tiled activation rows as from row-major ones, and as one row at a time", "[runtime][kernels]") {
  // PanelRows::tiled, as packedMatMul makes it from two tiles of rows on: dense fp32 panels, the sparse fp32 form
  // (expanded by each panel's first tile), and F16P / Q4P panels (converted by it), at row counts that end in every
  // tail tile; and the pairs layout (2:4), whose tiles read X as it is. Each row's sums are a GEMV's. K 37: the tiled
  // copy's last values one at a time, a partial last pairs group and quantization block.
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  int sets = 0;
  for (const int64_t K : {96, 37}) {
    const int64_t N = 72, P = (N + kPanel - 1) / kPanel, bs = 32, nblk = (K + bs - 1) / bs;
    std::vector<float> wf(K * N), w24(K * N);
    std::vector<uint16_t> wh(K * N);
    for (int64_t i = 0; i < K * N; ++i) {
      wf[i] = rng() % 2 ? nd(rng) : 0.f;  // half of them zero, anywhere: the sparse form's masks take it
      w24[i] = ((i / N) % 4 + i % N) % 4 < 2 ? nd(rng) : 0.f;  // 2:4 along K: the pairs layout
      wh[i] = floatToHalf(nd(rng));
    }
    auto f32 = packDense(Buf{DType::F32, Shape{K, N}, wf.data()});
    auto sparse = packDense(Buf{DType::F32, Shape{K, N}, wf.data()});
    auto pairs = packDense(Buf{DType::F32, Shape{K, N}, w24.data()});
    auto f16p = packDense(Buf{DType::F16, Shape{K, N}, wh.data()});
    REQUIRE((f32 && sparse && pairs && f16p && panelize(*f16p)));
    sparse->sparse = makeSparse(*sparse);
    pairs->sparse = makeSparse(*pairs);
    REQUIRE((sparse->sparse && !sparse->sparse->pairs && pairs->sparse && pairs->sparse->pairs));
    std::vector<uint8_t> B(N * nblk * bs / 2);
    std::vector<float> S(N * nblk), Z(N * nblk);
    for (auto& b : B) b = static_cast<uint8_t>(std::uniform_int_distribution<int>(0, 255)(rng));
    for (auto& v : S) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
    for (auto& z : Z) z = static_cast<float>(std::uniform_int_distribution<int>(0, 15)(rng));
    Buf b{DType::U8, Shape{N, nblk, bs / 2}, B.data()}, s{DType::F32, Shape{N * nblk}, S.data()},
        z{DType::F32, Shape{N * nblk}, Z.data()};
    auto q4p = packMatMulNBits(matMulNBitsNode(K, N, 4, bs), b, s, &z);
    REQUIRE((q4p && panelize(*q4p)));
    for (const Kernels* k : kernelSets()) {
      const int R = k->tile_rows;
      if (R == 0) continue;
      ++sets;
      for (int64_t M : {2 * R, 2 * R + 1, 4 * R - 1, 10 * R + 8}) {
        std::vector<float> x(M * K), tiled(M * K), buf(panelBufferFloats(*pairs) + 1);
        for (auto& v : x) v = nd(rng);
        tileRows(x.data(), K, K, R, 0, M / R, tiled.data());
        const PanelRows rowMajor{x.data(), K}, withTiles{x.data(), K, tiled.data()};
        auto run = [&](const PackedWeight& w, const PanelRows& rows, int64_t m) {
          std::vector<float> y(m * N, -1.f);
          if (w.kind == PackedWeight::F32 && !w.sparse)
            k->gemm_panels(rows, m, static_cast<const float*>(w.w.data()), K, 0, P, y.data(), N, N);
          // (buf one float in: the pairs GEMM aligns what it keeps there itself)
          else if (w.kind == PackedWeight::F32) k->sparse_gemm_panels(w, rows, m, 0, P, buf.data() + 1, y.data(), N, N);
          else k->converting_gemm_panels(w, rows, m, 0, P, buf.data() + 1, y.data(), N, N);
          return y;
        };
        for (const PackedWeight* w : {f32.get(), sparse.get(), pairs.get(), f16p.get(), q4p.get()}) {
          INFO("kernels " << k->isa << " M=" << M << " kind " << w->kind << (w->sparse ? " sparse" : ""));
          const auto a = run(*w, rowMajor, M), t = run(*w, withTiles, M);
          CHECK(std::memcmp(a.data(), t.data(), a.size() * 4) == 0);
          int64_t rowsDiffer = 0;
          for (int64_t m = 0; m < M; ++m) {
            const auto one = run(*w, PanelRows{x.data() + m * K, K}, 1);
            rowsDiffer += std::memcmp(one.data(), t.data() + m * N, N * 4) != 0;
          }
          CHECK(rowsDiffer == 0);
        }
      }
    }
  }
  CHECK(sets == 2 * ((avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0)));
}

TEST_CASE("Q4P panels keep byte zero points and fp16 scales in their small forms, with the same results", "[runtime][kernels]") {
  // MatMulNBits with float zero points: integers in [0, 255] (what quantizers write) go to zp8, a byte each instead
  // of a float, fractional ones stay floats; scales that are all fp16 values (scale_dtype: float16) go to scale16.
  // Either way the panel form gives the reference's values.
  std::mt19937 rng(9);
  const int64_t K = 96, N = 40, bs = 32, nblk = K / bs, blob = bs / 2;
  for (bool fractional : {false, true})
    for (bool halfScales : {false, true}) {
      std::vector<uint8_t> B(N * nblk * blob, 0);
      std::vector<float> S(N * nblk), Z(N * nblk);
      for (auto& v : S) {
        v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
        if (halfScales) v = halfToFloat(floatToHalf(v));
      }
      if (!halfScales) S[5] = 0.0123456789f;  // (not an fp16 value: the scales stay floats)
      for (auto& z : Z) z = static_cast<float>(std::uniform_int_distribution<int>(0, 15)(rng)) + (fractional ? 0.25f : 0.f);
      std::vector<double> dense(K * N);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const int v = std::uniform_int_distribution<int>(0, 15)(rng);
          const int64_t b = k / bs, j = k % bs;
          B[(n * nblk + b) * blob + j / 2] |= static_cast<uint8_t>(v << (4 * (j % 2)));
          dense[k * N + n] = (v - static_cast<double>(Z[n * nblk + b])) * S[n * nblk + b];
        }
      const Node node = matMulNBitsNode(K, N, 4, bs);
      Buf b{DType::U8, Shape{N, nblk, blob}, B.data()}, s{DType::F32, Shape{N * nblk}, S.data()},
          z{DType::F32, Shape{N * nblk}, Z.data()};
      INFO("fractional zero points " << fractional << ", fp16 scales " << halfScales);
      auto panels = packMatMulNBits(node, b, s, &z);
      REQUIRE(panelize(*panels));
      CHECK(panels->kind == PackedWeight::Q4P);
      const int64_t params = (N + kPanel - 1) / kPanel * nblk * kPanel;  // per panel, block and column
      CHECK(panels->zp.size() == static_cast<size_t>(fractional ? params : 0));
      CHECK(panels->zp8.size() == static_cast<size_t>(fractional ? 0 : params));
      CHECK(panels->scale.size() == static_cast<size_t>(halfScales ? 0 : params));
      CHECK(panels->scale16.size() == static_cast<size_t>(halfScales ? params : 0));
      CHECK(panels->bytes() == panels->rowBytes() * N + params * (halfScales ? 2 : 4) + params * (fractional ? 4 : 1));
      const int sets = checkAll(*panels, dense, K, N);
      CHECK(sets == (avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0));
    }
}

TEST_CASE("fp16 conversion is exact both ways and rounds to nearest even", "[runtime][kernels]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = halfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    REQUIRE(floatToHalf(f) == h);
  }
  CHECK(floatToHalf(1.0f + 1.0f / 2048) == floatToHalf(1.0f));            // tie -> even
  CHECK(floatToHalf(1.0f + 3.0f / 2048) == floatToHalf(1.0f) + 2);        // tie -> even (up)
  CHECK(floatToHalf(70000.f) == 0x7c00);                                  // overflow -> inf
  CHECK(halfToFloat(0x0001) == Approx(5.960464477539063e-08));            // smallest subnormal
  CHECK(std::isnan(halfToFloat(floatToHalf(NAN))));
}

TEST_CASE("softmax and sigmoid kernels match std::exp, including -inf masks", "[runtime][kernels]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0, 4);
  for (const Kernels* k : kernelSets()) {
    for (int64_t n : {1, 7, 16, 33, 128}) {
      INFO(k->isa << " n " << n);
      std::vector<float> x(3 * n), y(3 * n);
      for (auto& v : x) v = nd(rng);
      if (n > 1) x[0] = -INFINITY;  // a masked position (a fully masked row is NaN, as in ORT)
      k->softmax(x.data(), y.data(), 3, n);
      for (int64_t r = 0; r < 3; ++r) {
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < n; ++j) m = std::max<double>(m, x[r * n + j]);
        for (int64_t j = 0; j < n; ++j) s += std::exp(x[r * n + j] - m);
        for (int64_t j = 0; j < n; ++j) CHECK(y[r * n + j] == Approx(std::exp(x[r * n + j] - m) / s).margin(1e-7).epsilon(1e-5));
      }
      if (n > 1) CHECK(y[0] == 0.f);
      k->sigmoid(x.data() + 1, y.data(), n);
      for (int64_t j = 0; j < n; ++j) CHECK(y[j] == Approx(1.0 / (1.0 + std::exp(-double(x[j + 1])))).margin(1e-7).epsilon(1e-5));
    }
  }
}

TEST_CASE("every kernel set's fp16 conversions give the portable conversion's bits", "[runtime][kernels]") {
  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::mt19937 rng(31);
  std::vector<float> xs;
  for (int i = 0; i < 200000; ++i) {  // every exponent fp16 can reach and beyond, ties included
    const float m = std::uniform_real_distribution<float>(1.f, 2.f)(rng);
    xs.push_back((i & 1 ? -1 : 1) * std::ldexp(m, std::uniform_int_distribution<int>(-30, 20)(rng)));
  }
  for (int i = 0; i < 2048; ++i) xs.push_back(std::ldexp(static_cast<float>(2 * i + 1), -25));  // halfway cases
  for (float v : {0.f, -0.f, 65504.f, 65520.f, 1e9f, -1e9f, INFINITY, -INFINITY, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f})
    xs.push_back(v);
  for (const Kernels* k : kernelSets()) {
    INFO("kernels " << k->isa);
    REQUIRE(k->half_to_float);
    REQUIRE(k->float_to_half);
    std::vector<float> f(all.size());
    k->half_to_float(all.data(), f.data(), static_cast<int64_t>(all.size()));
    int bad = 0;
    for (int i = 0; i < 65536; ++i) {
      const float want = halfToFloat(all[i]);
      bad += std::isnan(want) ? !std::isnan(f[i]) : std::memcmp(&want, &f[i], 4) != 0;
    }
    CHECK(bad == 0);
    std::vector<uint16_t> h(xs.size());
    k->float_to_half(xs.data(), h.data(), static_cast<int64_t>(xs.size()));
    bad = 0;
    for (size_t i = 0; i < xs.size(); ++i) bad += h[i] != floatToHalf(xs[i]);
    CHECK(bad == 0);
    uint16_t hn;
    const float nan = std::nanf("");
    k->float_to_half(&nan, &hn, 1);
    CHECK(std::isnan(halfToFloat(hn)));
  }
}

TEST_CASE("decode attention over fp32, fp16 and int8 cache rows (kv_dot, kv_axpy) matches a double reference on every kernel set", "[runtime][kernels][kv]") {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd;
  for (int64_t D : {1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 80, 128, 129, 300})
    for (int64_t T : {1, 2, 15, 16, 17, 100}) {
      std::vector<float> q(D), p(T), f32(T * D), scales(T);
      std::vector<uint16_t> f16(T * D);
      std::vector<int8_t> i8(T * D);
      for (auto& e : q) e = nd(rng);
      for (auto& e : p) e = std::abs(nd(rng));
      for (int64_t i = 0; i < T * D; ++i) {
        f32[i] = nd(rng);
        f16[i] = floatToHalf(f32[i]);
        i8[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
      }
      for (auto& e : scales) e = 0.01f + 0.001f * static_cast<float>(rng() % 100);
      for (int kind : {0, 1, 2}) {
        const void* rows = kind == 0 ? static_cast<const void*>(f32.data()) : kind == 1 ? static_cast<const void*>(f16.data()) : i8.data();
        const auto at = [&](int64_t i) {
          return kind == 0 ? f32[i] : kind == 1 ? halfToFloat(f16[i]) : static_cast<float>(i8[i]) * scales[i / D];
        };
        std::vector<double> dot(T, 0.0), axpy(D, 0.0), dmag(T, 0.0), amag(D, 0.0);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t d = 0; d < D; ++d) {
            dot[t] += static_cast<double>(q[d]) * at(t * D + d), dmag[t] += std::abs(static_cast<double>(q[d]) * at(t * D + d));
            axpy[d] += static_cast<double>(p[t]) * at(t * D + d), amag[d] += std::abs(static_cast<double>(p[t]) * at(t * D + d));
          }
        for (const Kernels* k : kernelSets()) {
          INFO("kernels " << k->isa << ", kind " << kind << ", D " << D << ", T " << T);
          REQUIRE(k->kv_dot);
          REQUIRE(k->kv_axpy);
          std::vector<float> y(T, NAN), z(D, NAN);
          k->kv_dot(q.data(), rows, scales.data(), kind, T, D, y.data());
          k->kv_axpy(p.data(), rows, scales.data(), kind, T, D, z.data());
          for (int64_t t = 0; t < T; ++t) CHECK(std::abs(y[t] - dot[t]) <= 1e-5 * std::max(dmag[t], 1e-3));
          for (int64_t d = 0; d < D; ++d) CHECK(std::abs(z[d] - axpy[d]) <= 1e-5 * std::max(amag[d], 1e-3));
        }
      }
    }
}

TEST_CASE("strided copies (transposes, slices, broadcasts) equal an element-by-element reference", "[runtime][kernels]") {
  // Transposes of every rank pass through the tiled copy (sizes around its 8-row band and below its 4-element
  // threshold); slices with steps and broadcasts (stride 0) take the element loop. Both element sizes it tiles.
  std::mt19937 rng(53);
  int tiled = 0, checked = 0;
  for (int rank : {2, 3, 4}) {
    for (int trial = 0; trial < 60; ++trial) {
      Shape in;
      in.rank = rank;
      for (int i = 0; i < rank; ++i) in.d[i] = std::uniform_int_distribution<int64_t>(1, rank == 2 ? 40 : 17)(rng);
      int64_t ist[kMaxRank];
      for (int64_t i = rank - 1, acc = 1; i >= 0; --i) ist[i] = acc, acc *= in.d[i];
      int perm[kMaxRank];
      for (int i = 0; i < rank; ++i) perm[i] = i;
      std::shuffle(perm, perm + rank, rng);
      Shape os;
      os.rank = rank;
      int64_t st[kMaxRank];
      for (int i = 0; i < rank; ++i) os.d[i] = in.d[perm[i]], st[i] = ist[perm[i]];
      if (trial % 5 == 4) st[0] = 0;  // a broadcast dim (as Expand makes)
      const int64_t n = in.numel(), total = os.numel();
      for (size_t es : {size_t{4}, size_t{2}}) {
        std::vector<uint8_t> src(static_cast<size_t>(n) * es), got(static_cast<size_t>(total) * es, 0xEE), want(got.size(), 0xDD);
        for (auto& b : src) b = static_cast<uint8_t>(rng());
        stridedCopy(src.data(), st, os, got.data(), es);
        for (int64_t o = 0; o < total; ++o) {  // the reference: every output index's source offset
          int64_t rem = o, off = 0;
          for (int i = rank - 1; i >= 0; --i) off += (rem % os.d[i]) * st[i], rem /= os.d[i];
          std::memcpy(want.data() + o * es, src.data() + off * es, es);
        }
        INFO("rank " << rank << " trial " << trial << " es " << es);
        CHECK(got == want);
        tiled += tilePartner(st, os) >= 0;
        ++checked;
      }
    }
  }
  CHECK(checked == 3 * 60 * 2);
  CHECK(tiled >= 40);  // the tiled path ran, not only the element loop
}

