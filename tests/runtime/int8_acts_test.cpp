// int8_acts_test.cpp — int8 activations with integer dot products (runtime/int8_acts.h): every kernel set's
// gemm_i8 against the scalar reference on the same quantized activations, at sizes below, at, above and a multiple
// of the 32-value chunk, the kernels' step (4 or 2 chunks) and the 4-row group; every result within the stated
// error bound of exact fp32 compute; the load-time choice; NaN reaching the output.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "runtime/int8_acts.h"
#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/thread_pool.h"
#include "kernel_sets.h"

using namespace crt;
using namespace crt::detail;

namespace {

using testutil::HeapAlloc;
using testutil::int8KernelSets;

/// A random Q8/Q4 weight [K, N] packed from DequantizeLinear inputs, with its dense values in double.
struct QuantWeight {
  std::shared_ptr<PackedWeight> pw;
  std::vector<double> dense;  // [K][N]
};

QuantWeight makeWeight(int bits, int64_t K, int64_t N, int64_t block, bool withZp, std::mt19937& rng) {
  const int64_t nb = block ? (K + block - 1) / block : 1, ns = block ? nb * N : N;
  std::vector<uint8_t> q8(K * N), q4((K * N + 1) / 2), z8(ns), z4((ns + 1) / 2);
  std::vector<float> s(ns);
  std::vector<int> qv(K * N), zv(ns);
  for (auto& v : s) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
  const int top = bits == 8 ? 255 : 15;
  for (int64_t i = 0; i < K * N; ++i) {
    qv[i] = std::uniform_int_distribution<int>(0, top)(rng);
    if (bits == 8) q8[i] = static_cast<uint8_t>(qv[i]);
    else q4[i / 2] |= static_cast<uint8_t>(qv[i] << (4 * (i & 1)));
  }
  for (int64_t i = 0; i < ns; ++i) {
    zv[i] = withZp ? std::uniform_int_distribution<int>(0, top)(rng) : 0;
    if (bits == 8) z8[i] = static_cast<uint8_t>(zv[i]);
    else z4[i / 2] |= static_cast<uint8_t>(zv[i] << (4 * (i & 1)));
  }
  Buf q{bits == 8 ? DType::U8 : kU4, Shape{K, N}, bits == 8 ? static_cast<void*>(q8.data()) : static_cast<void*>(q4.data())};
  Buf sc{DType::F32, block ? Shape{nb, N} : Shape{N}, s.data()};
  Buf zp{q.dt, sc.shape, bits == 8 ? static_cast<void*>(z8.data()) : static_cast<void*>(z4.data())};
  QuantWeight w;
  w.pw = packDequantize(q, sc, withZp ? &zp : nullptr, block ? 0 : 1, block);
  w.dense.resize(K * N);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const int64_t si = block ? (k / block) * N + n : n;
      w.dense[k * N + n] = (qv[k * N + n] - zv[si]) * static_cast<double>(s[si]);
    }
  return w;
}

/// The stated bound on |int8 result - exact| for output (m, n): sum over chunks of d_c / 2 * sum |w|, where d_c is
/// the chunk's max |x| / 127, plus 2^-11 of sum |x w| for the fp16 scales (and float rounding, 1e-5 of it).
double bound(const std::vector<float>& x, const QuantWeight& w, int64_t m, int64_t n, int64_t K, int64_t N) {
  const PackedWeight& p = *w.pw;
  double b = 0, mag = 0;
  for (int64_t blk = 0; blk < p.nblk; ++blk)
    for (int64_t c0 = 0; c0 < p.block; c0 += 32) {
      double amax = 0, wsum = 0;
      for (int64_t j = c0; j < std::min(c0 + 32, p.block); ++j) {
        const int64_t k = blk * p.block + j;
        if (k >= K) break;
        amax = std::max(amax, std::abs(static_cast<double>(x[m * K + k])));
        wsum += std::abs(w.dense[k * N + n]);
        mag += std::abs(x[m * K + k] * w.dense[k * N + n]);
      }
      b += amax / 127.0 / 2.0 * wsum;
    }
  return b * (1 + 1e-5) + (std::ldexp(1.0, -11) + 1e-5) * mag + 1e-6;
}

/// Runs k's gemm_i8 on weight rows [n0, N) and checks every output against `want` (the scalar reference's, to
/// float rounding of the sum of |x w|) and every output outside the range untouched.
void checkRowRange(const Kernels& k, const QuantWeight& w, const Int8Acts& a, const std::vector<float>& x,
                   const std::vector<float>& want, int64_t M, int64_t N, int64_t K, int64_t n0) {
  std::vector<float> got(M * N, -3.f);
  k.gemm_i8(*w.pw, a, n0, N, got.data(), N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      if (n < n0) {
        REQUIRE(got[m * N + n] == -3.f);  // outside the range: untouched
        continue;
      }
      double mag = 0;
      for (int64_t kk = 0; kk < K; ++kk) mag += std::abs(x[m * K + kk] * w.dense[kk * N + n]);
      CHECK_THAT(got[m * N + n], Catch::WithinAbs(want[m * N + n], 2e-6 * mag + 1e-6));
    }
}

}  // namespace

TEST_CASE("int8-activation kernels match the scalar reference and stay within the error bound of exact", "[runtime][kernels][int8]") {
  std::mt19937 rng(15);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (int bits : {8, 4}) {
    for (int64_t K : {16, 31, 32, 33, 64, 100, 128, 160, 256, 300}) {
      for (int64_t N : {1, 3, 4, 5, 33}) {
        for (int64_t block : {int64_t{0}, int64_t{16}, int64_t{32}, int64_t{64}, int64_t{128}}) {
          for (bool withZp : {false, true}) {
            QuantWeight w = makeWeight(bits, K, N, block, withZp, rng);
            REQUIRE(w.pw);
            for (int64_t M : {1, 2, 5, 13}) {
              std::vector<float> x(M * K);
              for (auto& v : x) v = nd(rng);
              if (K > 40) x[7] = 25.f;  // an outlier in one chunk
              std::vector<float> ref;
              for (const Kernels* k : int8KernelSets()) {
                INFO("kernels " << k->isa << " (" << k->i8_isa << ") bits " << bits << " K " << K << " N " << N
                                << " block " << block << " zp " << withZp << " M " << M);
                REQUIRE(int8Capable(*w.pw, *k));
                REQUIRE(enableInt8(*w.pw));
                const std::vector<float> y = testutil::runPacked(*k, *w.pw, x, M);
                // the same quantized activations through the scalar reference
                AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
                const Int8Acts a = quantizeInt8Acts(*w.pw, k->i8_width, x.data(), M, mem.data());
                std::vector<float> want(M * N, -2.f);
                scalarKernels().gemm_i8(*w.pw, a, 0, N, want.data(), N);
                for (int64_t m = 0; m < M; ++m)
                  for (int64_t n = 0; n < N; ++n) {
                    double exact = 0, mag = 0;
                    for (int64_t kk = 0; kk < K; ++kk) {
                      exact += x[m * K + kk] * w.dense[kk * N + n];
                      mag += std::abs(x[m * K + kk] * w.dense[kk * N + n]);
                    }
                    const float got = y[m * N + n];
                    CHECK_THAT(got, Catch::WithinAbs(want[m * N + n], 2e-6 * mag + 1e-6));
                    CHECK(std::abs(got - exact) <= bound(x, w, m, n, K, N));
                  }
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  CHECK(checked >= 2 * 10 * 5 * 5 * 2 * 4);
}

TEST_CASE("the SIMD activation quantizers give the portable one's bits", "[runtime][kernels][int8]") {
  std::mt19937 rng(19);
  std::normal_distribution<float> nd;
  int compared = 0;
  for (const Kernels* k : int8KernelSets()) {
    if (!k->quantize_i8) continue;
    INFO("kernels " << k->isa);
    for (int trial = 0; trial < 2000; ++trial) {
      float x[32];
      const float scale = std::ldexp(1.f, std::uniform_int_distribution<int>(-130, 100)(rng));  // denormals to huge
      for (float& v : x) v = nd(rng) * scale;
      const int n = trial % 5 == 0 ? std::uniform_int_distribution<int>(0, 31)(rng) : 32;
      if (trial % 7 == 0) x[trial % 32] = std::nanf("");
      if (trial % 11 == 0) x[(trial / 11) % 32] = (trial & 1 ? 1 : -1) * INFINITY;
      if (trial % 13 == 0) std::fill(x, x + 32, 0.f);
      if (trial % 17 == 0) x[3] = 127.5f * x[5];  // ties
      int8_t want[32], got[32];
      float dw, dg;
      int sw, sg;
      quantizeInt8Chunk(x, n, want, &dw, &sw);
      k->quantize_i8(x, n, got, &dg, &sg);
      INFO("trial " << trial << " n " << n);
      CHECK(std::memcmp(want, got, 32) == 0);
      CHECK(sw == sg);
      CHECK((dw == dg || (std::isnan(dw) && std::isnan(dg))));
      ++compared;
    }
  }
  CHECK(compared >= 2000);
}

TEST_CASE("prefill tiles across slabs of gathered chunks match the scalar reference (long rows)", "[runtime][kernels][int8]") {
  std::mt19937 rng(37);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (int bits : {4, 8}) {
    for (int64_t K : {2080, 4100}) {  // more than one 64-chunk slab; a block of 128 split across a slab boundary
      for (int64_t block : {int64_t{0}, int64_t{32}, int64_t{128}}) {
        QuantWeight w = makeWeight(bits, K, 35, block, true, rng);
        REQUIRE(enableInt8(*w.pw));
        for (int64_t M : {8, 11, 17}) {  // (17: AMX tiles of 16 rows and a padded one)
          std::vector<float> x(M * K);
          for (auto& v : x) v = nd(rng);
          for (bool rowScale : {false, true}) {
            for (const Kernels* k : int8KernelSets()) {
              INFO("kernels " << k->i8_isa << " bits " << bits << " K " << K << " block " << block << " M " << M << " rowScale " << rowScale);
              AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
              Int8Acts a = int8ActsView(*w.pw, k->i8_width, M, mem.data());
              std::vector<float> scale(M, 0.02f);
              if (rowScale) quantizeInt8RowsScaled(*w.pw, a, x.data(), 0, M, scale.data(), 1);
              else quantizeInt8Rows(*w.pw, a, x.data(), 0, M);
              a.rowScale = rowScale;
              std::vector<float> got(M * 35, -3.f), want(M * 35, -2.f);
              k->gemm_i8(*w.pw, a, 0, 35, got.data(), 35);
              scalarKernels().gemm_i8(*w.pw, a, 0, 35, want.data(), 35);
              for (int64_t i = 0; i < M * 35; ++i) {
                double mag = 0;
                for (int64_t kk = 0; kk < K; ++kk) mag += std::abs(x[(i / 35) * K + kk] * w.dense[kk * 35 + i % 35]);
                CHECK_THAT(got[i], Catch::WithinAbs(want[i], 2e-6 * mag + 1e-6));
              }
              ++checked;
            }
          }
        }
      }
    }
  }
  CHECK(checked >= 2 * 2 * 3 * 2 * 2);
}

TEST_CASE("the SIMD QuantizeLinear quantizers give the portable one's bits", "[runtime][kernels][int8]") {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd;
  int compared = 0;
  for (const Kernels* k : int8KernelSets()) {
    if (!k->quantize_i8_scaled) continue;
    INFO("kernels " << k->isa);
    for (int trial = 0; trial < 2000; ++trial) {
      float x[32];
      const float mag = std::ldexp(1.f, std::uniform_int_distribution<int>(-130, 100)(rng));
      for (float& v : x) v = nd(rng) * mag;
      float s = mag * std::uniform_real_distribution<float>(0.001f, 0.05f)(rng);
      const int n = trial % 5 == 0 ? std::uniform_int_distribution<int>(0, 31)(rng) : 32;
      if (trial % 7 == 0) x[trial % 32] = std::nanf("");
      if (trial % 11 == 0) x[(trial / 11) % 32] = (trial & 1 ? 1 : -1) * INFINITY;
      if (trial % 13 == 0) s = 0.f;  // x / 0: saturates (0 / 0 is NaN: 0)
      if (trial % 17 == 0) x[3] = 2.5f * s, x[4] = -3.5f * s, x[5] = 200.f * s;  // ties, saturation
      int8_t want[32], got[32];
      int sw, sg;
      quantizeInt8ChunkScaled(x, n, s, want, &sw);
      k->quantize_i8_scaled(x, n, s, got, &sg);
      INFO("trial " << trial << " n " << n << " s " << s);
      CHECK(std::memcmp(want, got, 32) == 0);
      CHECK(sw == sg);
      ++compared;
    }
  }
  CHECK(compared >= 2000);
  int8_t v[32];
  int sum;
  const float ties[4] = {2.5f, -2.5f, 3.5f, 1000.f};
  quantizeInt8ChunkScaled(ties, 4, 1.f, v, &sum);
  CHECK((v[0] == 2 && v[1] == -2 && v[2] == 4 && v[3] == 127));  // half to even, saturated
}

TEST_CASE("row-scaled activations (QuantizeLinear's) on per-channel weights: integer kernels match the reference",
          "[runtime][kernels][int8]") {
  std::mt19937 rng(29);
  std::normal_distribution<float> nd;
  int checked = 0, withMin128[2] = {0, 0};
  for (int bits : {8, 4}) {
    for (int64_t K : {16, 31, 32, 33, 64, 100, 128, 300, 1000}) {
      for (int64_t N : {1, 3, 4, 5, 9, 33}) {
        QuantWeight w = makeWeight(bits, K, N, 0, bits == 4, rng);
        REQUIRE(enableInt8(*w.pw));
        for (int64_t M : {1, 2, 3, 4, 5, 13}) {
          std::vector<float> x(M * K), scale(M);
          for (auto& v : x) v = nd(rng);
          for (int64_t m = 0; m < M; ++m) {
            float amax = 0;
            for (int64_t j = 0; j < K; ++j) amax = std::max(amax, std::abs(x[m * K + j]));
            scale[m] = amax / 127.f;
          }
          for (int64_t stride : {int64_t{1}, int64_t{0}}) {  // per row, per tensor
            for (const Kernels* k : int8KernelSets()) {
              INFO("kernels " << k->isa << " (" << k->i8_isa << ") bits " << bits << " K " << K << " N " << N << " M " << M
                              << " stride " << stride);
              AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
              Int8Acts a = int8ActsView(*w.pw, k->i8_width, M, mem.data());
              quantizeInt8RowsScaled(*w.pw, a, x.data(), 0, M, scale.data(), stride);
              a.rowScale = true;
              ++withMin128[!a.noMin128(0, M)];  // a row with a -128 stays off the kernels' shifted Q8 form
              std::vector<float> got(M * N, -3.f), want(M * N, -2.f);
              k->gemm_i8(*w.pw, a, 0, N, got.data(), N);
              scalarKernels().gemm_i8(*w.pw, a, 0, N, want.data(), N);
              for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                  // QuantizeLinear -> DequantizeLinear by hand, times the dense weight: the value the model means
                  const float sm = scale[m * stride];
                  double qdq = 0, mag = 0;
                  for (int64_t kk = 0; kk < K; ++kk) {
                    const double xq = std::clamp(std::nearbyint(x[m * K + kk] / sm), -128.f, 127.f) * static_cast<double>(sm);
                    qdq += xq * w.dense[kk * N + n];
                    mag += std::abs(xq * w.dense[kk * N + n]);
                  }
                  CHECK_THAT(got[m * N + n], Catch::WithinAbs(want[m * N + n], 2e-6 * mag + 1e-6));
                  CHECK_THAT(got[m * N + n], Catch::WithinAbs(qdq, (std::ldexp(1.0, -11) + 1e-5) * mag + 1e-6));  // fp16 scales
                }
              ++checked;
            }
          }
        }
      }
    }
  }
  CHECK(checked >= 2 * 9 * 6 * 6 * 2);
  CHECK(withMin128[0] > 0);  // per-row scales of max |x| / 127: no -128
  CHECK(withMin128[1] > 0);  // one row's scale for every row: the others saturate
}

TEST_CASE("integer prefill tiles across activation and weight blocks match the reference", "[runtime][kernels][int8]") {
  // 37 activation rows: blocks of 16, 16 and 5 (tiles of 4 and 1); 130 weight rows of ~4 KiB: 256 KiB blocks of 60
  // rows, 4-row groups, and 2 rows past the last group.
  std::mt19937 rng(41);
  std::normal_distribution<float> nd;
  constexpr int64_t K = 4100, N = 130, M = 37;
  int checked = 0;
  for (int bits : {8, 4}) {
    QuantWeight w = makeWeight(bits, K, N, 0, bits == 4, rng);
    REQUIRE(enableInt8(*w.pw));
    std::vector<float> x(M * K), scale(M, 0.03f);
    for (auto& v : x) v = nd(rng);
    for (const Kernels* k : int8KernelSets()) {
      INFO("kernels " << k->i8_isa << " bits " << bits);
      AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
      Int8Acts a = int8ActsView(*w.pw, k->i8_width, M, mem.data());
      quantizeInt8RowsScaled(*w.pw, a, x.data(), 0, M, scale.data(), 1);
      a.rowScale = true;
      std::vector<float> got(M * N, -3.f), want(M * N, -2.f);
      k->gemm_i8(*w.pw, a, 0, N, got.data(), N);
      scalarKernels().gemm_i8(*w.pw, a, 0, N, want.data(), N);
      for (int64_t i = 0; i < M * N; ++i) {
        double mag = 0;
        for (int64_t kk = 0; kk < K; ++kk) mag += std::abs(x[(i / N) * K + kk] * w.dense[kk * N + i % N]);
        CHECK_THAT(got[i], Catch::WithinAbs(want[i], 2e-6 * mag + 1e-6));
      }
      ++checked;
    }
  }
  CHECK(checked >= 2 * 2);
}

TEST_CASE("W8A8 prefill tiles with the outputs in lanes match the reference across weight blocks and row tiles",
          "[runtime][kernels][int8]") {
  // At 16+ activation rows a per-channel Q8 weight with row-scaled activations takes the repacked 64-row blocks
  // (AVX-512 VNNI) with tiles of 6 activation rows, or with AMX tiles of 16 rows in pairs (a last block of fewer
  // rows zero padded); sizes around the 16-group transpose, the 64-row block and both tiles, on sub-ranges of rows
  // as the pool's tasks take them.
  std::mt19937 rng(43);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (int64_t K : {32, 60, 64, 100, 1000, 2080}) {
    for (int64_t N : {16, 63, 64, 65, 130, 200}) {
      QuantWeight w = makeWeight(8, K, N, 0, K % 64 == 0, rng);
      REQUIRE(enableInt8(*w.pw));
      for (int64_t M : {16, 17, 23, 24, 32, 37, 48}) {
        std::vector<float> x(M * K), scale(M);
        for (auto& v : x) v = nd(rng);
        for (int64_t m = 0; m < M; ++m) scale[m] = 0.02f + 0.001f * static_cast<float>(m);
        for (const Kernels* k : int8KernelSets()) {
          AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
          Int8Acts a = int8ActsView(*w.pw, k->i8_width, M, mem.data());
          quantizeInt8RowsScaled(*w.pw, a, x.data(), 0, M, scale.data(), 1);
          a.rowScale = true;
          std::vector<float> want(M * N, -2.f);
          scalarKernels().gemm_i8(*w.pw, a, 0, N, want.data(), N);
          for (int64_t n0 : {int64_t{0}, int64_t{16}}) {
            if (n0 >= N) continue;
            INFO("kernels " << k->i8_isa << " K " << K << " N " << N << " M " << M << " rows from " << n0);
            checkRowRange(*k, w, a, x, want, M, N, K, n0);
            ++checked;
          }
          if (k == amxKernels()) {  // the same integer sums and scaling as the VNNI tiles: the same bits
            std::vector<float> vnni(M * N), amx(M * N);
            avx512Kernels()->gemm_i8(*w.pw, a, 0, N, vnni.data(), N);
            k->gemm_i8(*w.pw, a, 0, N, amx.data(), N);
            INFO("AMX against VNNI: K " << K << " N " << N << " M " << M);
            CHECK(std::memcmp(vnni.data(), amx.data(), vnni.size() * sizeof(float)) == 0);
          }
        }
      }
    }
  }
  CHECK(checked >= 6 * 6 * 7 * 2);
}

TEST_CASE("int8 activations are chosen per weight at load: where asked, for capable layouts only", "[runtime][int8]") {
  std::mt19937 rng(16);
  const Kernels& k = kernelsFor(true);
  // A block whose 32-value chunks do not tile the vector (96 = 3 chunks) has no int8 path on SIMD kernels.
  QuantWeight odd = makeWeight(4, 192, 8, 96, true, rng);
  QuantWeight g32 = makeWeight(4, 64, 8, 32, true, rng);
  QuantWeight ch8 = makeWeight(8, 64, 8, 0, false, rng);
  CHECK(int8Capable(*g32.pw, k));
  CHECK(int8Capable(*ch8.pw, k));
  CHECK_FALSE(int8Capable(*odd.pw, k));

  Graph g;
  auto add = [&](const std::string& op, std::shared_ptr<PackedWeight> w, int64_t level) {
    Node n;
    n.op = op;
    n.packed = std::move(w);
    if (level >= 0) n.attrs["accuracy_level"].kind = Attr::Int, n.attrs["accuracy_level"].i = level;
    g.nodes.push_back(std::move(n));
  };
  add("MatMulNBits", g32.pw, 4);
  add("MatMulNBits", makeWeight(4, 64, 8, 32, false, rng).pw, 0);
  add("MatMul", ch8.pw, -1);
  CHECK(chooseInt8Activations(g, Int8Activations::Off, k) == 0);
  CHECK(chooseInt8Activations(g, Int8Activations::Model, k) == 1);
  CHECK(g.nodes[0].packed->int8);
  CHECK_FALSE(g.nodes[1].packed->int8);
  CHECK_FALSE(g.nodes[2].packed->int8);
  CHECK(chooseInt8Activations(g, Int8Activations::On, k) == 3);
  CHECK(g.nodes[2].packed->int8);
  // The compact parameters: 3 bytes per block instead of 8, the fp32 ones released.
  CHECK(g32.pw->bytes() == 8 * 64 / 2 + 8 * 2 * 3);
  CHECK(g32.pw->scale.empty());
}

TEST_CASE("weights whose parameters fp16 and bytes cannot hold keep exact compute", "[runtime][int8][hostile]") {
  std::mt19937 rng(18);
  QuantWeight tiny = makeWeight(8, 64, 4, 0, true, rng);
  tiny.pw->scale[2] = 1e-7f;  // below fp16's normal range: more than 2^-11 would be lost
  QuantWeight frac = makeWeight(4, 64, 4, 32, true, rng);
  frac.pw->zp[1] = 3.5f;  // MatMulNBits float zero points may be fractional
  QuantWeight huge = makeWeight(4, 64, 4, 32, true, rng);
  huge.pw->scale[0] = 1e6f;
  for (QuantWeight* w : {&tiny, &frac, &huge}) {
    const std::vector<float> before = w->pw->scale;
    CHECK_FALSE(enableInt8(*w->pw));
    CHECK_FALSE(w->pw->int8);
    CHECK(w->pw->scale == before);  // unchanged, still exact
  }
  Graph g;
  Node n;
  n.op = "MatMul";
  n.packed = frac.pw;
  g.nodes.push_back(std::move(n));
  CHECK(chooseInt8Activations(g, Int8Activations::On, kernelsFor(true)) == 0);
}

TEST_CASE("a NaN activation reaches the int8 path's output as NaN", "[runtime][int8][hostile]") {
  std::mt19937 rng(17);
  QuantWeight w = makeWeight(4, 64, 4, 32, true, rng);
  std::vector<float> x(64, 0.5f);
  x[40] = std::nanf("");
  for (const Kernels* k : int8KernelSets()) {
    INFO("kernels " << k->isa);
    REQUIRE(enableInt8(*w.pw));
    const std::vector<float> y = testutil::runPacked(*k, *w.pw, x, 1);
    for (float v : y) CHECK(std::isnan(v));
  }
}

TEST_CASE("prefill tiles with the outputs in lanes match the reference across slabs, row tiles and blocks",
          "[runtime][kernels][int8]") {
  // At 16 (Q4) or 32 (Q8) activation rows and more the weights take the lane-major tiles (AVX2: 8 weight rows per
  // group, chunks unpacked 32 (Q4) or 16 (Q8) at a time, tiles of 6 (Q4) or 4 (Q8) activation rows then halves;
  // AVX-512 VNNI: from 8 rows, groups of 16, slabs of 64): odd chunk counts, slab boundaries (33 and 65 chunks), groups and tail rows,
  // sub-ranges of rows as the pool's tasks take them, and activations from QuantizeLinear's quantizer that saturate
  // at -128 (the widest int16 pair sums; chunk scales, so the float tiles).
  std::mt19937 rng(47);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (int bits : {4, 8}) {
    for (int64_t K : {32, 96, 1056, 2080}) {
      for (int64_t block : {int64_t{0}, int64_t{32}, int64_t{64}, int64_t{128}}) {
        for (int64_t N : {8, 17, 33, 48}) {
          QuantWeight w = makeWeight(bits, K, N, block, N != 17, rng);
          REQUIRE(enableInt8(*w.pw));
          const std::vector<int64_t> rowCounts = bits == 4 ? std::vector<int64_t>{16, 17, 19, 21, 23}   // AVX2: 6-row tiles
                                                           : std::vector<int64_t>{32, 33, 35, 37, 38};  // from 32 rows, 4-row tiles
          for (int64_t M : rowCounts) {
            for (bool saturated : {false, true}) {
              std::vector<float> x(M * K), scale(M, 0.01f);
              for (auto& v : x) v = nd(rng);
              for (int64_t m = 0; m < M; ++m) x[m * K + m % K] = -5.f;  // -500 / 1: saturates to -128 when scaled
              for (const Kernels* k : int8KernelSets()) {
                AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*w.pw, k->i8_width, M)));  // 64-byte aligned, zeroed
                Int8Acts a = int8ActsView(*w.pw, k->i8_width, M, mem.data());
                if (saturated) quantizeInt8RowsScaled(*w.pw, a, x.data(), 0, M, scale.data(), 1);
                else quantizeInt8Rows(*w.pw, a, x.data(), 0, M);
                if (saturated) REQUIRE(!a.noMin128(0, M));
                std::vector<float> want(M * N, -2.f);
                scalarKernels().gemm_i8(*w.pw, a, 0, N, want.data(), N);
                for (int64_t n0 : {int64_t{0}, int64_t{3}}) {
                  INFO("kernels " << k->i8_isa << " bits " << bits << " K " << K << " block " << block << " N " << N
                                  << " M " << M << " saturated " << saturated << " rows from " << n0);
                  checkRowRange(*k, w, a, x, want, M, N, K, n0);
                  ++checked;
                }
                if (k == amxKernels()) {  // AMX's chunk sums scaled in lmTile's order: the VNNI kernels' bits
                  std::vector<float> vnni(M * N), amx(M * N);
                  avx512Kernels()->gemm_i8(*w.pw, a, 0, N, vnni.data(), N);
                  k->gemm_i8(*w.pw, a, 0, N, amx.data(), N);
                  INFO("AMX against VNNI: bits " << bits << " K " << K << " block " << block << " N " << N << " M " << M);
                  CHECK(std::memcmp(vnni.data(), amx.data(), vnni.size() * sizeof(float)) == 0);
                }
              }
            }
          }
        }
      }
    }
  }
  CHECK(checked >= 2 * 4 * 4 * 3 * 5 * 2 * 2);
}

TEST_CASE("integer sums over a row too long for one int32 take float sums", "[runtime][kernels][int8][hostile]") {
  // Every weight 255 and every activation QuantizeLinear's -128: a row of 66048 values sums to -2.15e9, past int32.
  // No kernel may sum it as integers (int8RowSumsFitInt32): not the tiles that keep an output's whole row in one
  // int32 lane (W8A8 prefill: AVX2 from 32 rows, AVX-512 VNNI from 16), nor the K-in-lanes integer tiles whose
  // horizontal sum ends in one int32 (decode and short prefill; that one wrapped on AVX-512 VNNI until the bound
  // was the row's). The result is the scalar reference's (int32 per chunk), for decode, a tile's rows plus a
  // remainder, and prefill, on 8 weight rows and on 16.
  constexpr int64_t K = 66048;
  int checked = 0;
  for (int64_t N : {8, 16}) {
    std::vector<uint8_t> q8(K * N, 255);
    std::vector<float> s(N, 0.01f);
    const Buf q{DType::U8, Shape{K, N}, q8.data()};
    const Buf sc{DType::F32, Shape{N}, s.data()};
    std::shared_ptr<PackedWeight> pw = packDequantize(q, sc, nullptr, 1, 0);
    REQUIRE(pw);
    REQUIRE(enableInt8(*pw));
    REQUIRE(int8Chunks(*pw) > kInt8RowIntegerChunks);
    REQUIRE_FALSE(int8RowSumsFitInt32(*pw));
    for (int64_t M : {1, 5, 32}) {
      std::vector<float> x(M * K, -1000.f), scale(M, 1.f);
      const double exact = K * 255 * 0.01 * -128.0;
      for (const Kernels* k : int8KernelSets()) {
        INFO("kernels " << k->i8_isa << " N " << N << " M " << M);
        AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*pw, k->i8_width, M)));  // 64-byte aligned, zeroed
        Int8Acts a = int8ActsView(*pw, k->i8_width, M, mem.data());
        quantizeInt8RowsScaled(*pw, a, x.data(), 0, M, scale.data(), 1);
        a.rowScale = true;
        std::vector<float> got(M * N, 0.f);
        k->gemm_i8(*pw, a, 0, N, got.data(), N);
        for (float v : got) CHECK_THAT(v, Catch::WithinRel(exact, 1e-5));
        ++checked;
      }
    }
  }
  CHECK(checked >= 2 * 3 * 2);
}
