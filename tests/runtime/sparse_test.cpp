// sparse_test.cpp — the sparse weight form (runtime/sparse.h): for every kernel set, pattern (none, 50%
// unstructured, 2:4 along K, 90%, all zero), format (fp32 panels, int8 per channel and blocked, int4 blocked,
// with and without zero points) and size around the chunk/panel/tile boundaries, GEMV and GEMM on the sparse
// form give exactly the bits of the dense form; the conversion round-trips; the load-time choice follows
// SessionOptions::sparse and the kernel set's crossover.
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <random>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/int8_acts.h"
#include "runtime/sparse.h"
#include "runtime/thread_pool.h"
#include "kernel_sets.h"

using namespace crt;
using namespace crt::detail;

namespace {

using testutil::HeapAlloc;
using testutil::kernelSets;

enum class Pattern { None, Half, TwoFour, Ninety, All };
const char* name(Pattern p) {
  static const char* const names[] = {"none", "50%", "2:4", "90%", "all"};
  return names[static_cast<int>(p)];
}

/// Whether element (k, n) of a [K, N] weight is pruned.
bool pruned(Pattern p, int64_t k, int64_t n, std::mt19937& rng) {
  switch (p) {
    case Pattern::None: return false;
    case Pattern::Half: return rng() % 2 == 0;
    case Pattern::TwoFour: return ((k % 4) + n) % 4 < 2;  // two of every four consecutive k, varying with n
    case Pattern::Ninety: return rng() % 10 != 0;
    case Pattern::All: return true;
  }
  return false;
}


/// Whether this CPU runs the VBMI2 sparse int8 kernels, and their AMX prefill.
bool vbmi2Sparse() { return avx512Kernels() && avx512Kernels()->gemm_i8_sparse; }
bool amxSparse() { return vbmi2Sparse() && amxKernels(); }

/// A Q4 weight packed twice, the second copy in the int8-lanes form (int4 with int8 activations): it converts back
/// to the dense bytes, and every int8 kernel set that runs it gives the dense int8 kernel's bits.
template <typename Pack>
void checkInt8LanesEqualsDense(Pack pack, int64_t K, double wantStored) {
  auto dense = pack();
  auto sparse = pack();
  auto form = makeSparseInt8Lanes(*sparse);
  REQUIRE(form);
  CHECK((form->int8Lanes && !form->pairs));
  CHECK(form->stored == static_cast<int64_t>(wantStored));
  sparse->sparse = form;
  sparse->w = AlignedBytes();
  REQUIRE(enableInt8(*dense));
  REQUIRE(enableInt8(*sparse));
  std::vector<uint8_t> row(static_cast<size_t>(dense->rowBytes()));
  for (int64_t n = 0; n < dense->N; ++n) {
    sparseToDense(*sparse, n, row.data());
    REQUIRE(std::memcmp(row.data(), static_cast<const uint8_t*>(dense->w.data()) + n * row.size(), row.size()) == 0);
  }
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  int sets = 0;
  for (int64_t M : {1, 2, 5, 13, 29}) {
    std::vector<float> x(M * K);
    for (auto& v : x) v = nd(rng);
    for (const Kernels* k : testutil::int8KernelSets()) {
      if (!int8Capable(*sparse, *k)) continue;  // (AVX2: no sparse int8 kernel)
      INFO("int4 int8-lanes form, int8 activations, kernels " << k->i8_isa << " M=" << M);
      const auto yd = testutil::runPacked(*k, *dense, x, M), ys = testutil::runPacked(*k, *sparse, x, M);
      CHECK(std::memcmp(yd.data(), ys.data(), yd.size() * 4) == 0);
      ++sets;
    }
  }
  CHECK(sets == 5 * (1 + vbmi2Sparse() + amxSparse()));
}

/// Packs the weight twice with `pack` and turns the second copy sparse; then every kernel set must give the
/// same bits from both at decode and prefill row counts.
template <typename Pack>
void checkSparseEqualsDense(Pack pack, int64_t K, double wantStored) {
  auto dense = pack();
  auto sparse = pack();
  REQUIRE(dense);
  auto form = makeSparse(*sparse);
  REQUIRE(form);
  CHECK(form->stored == static_cast<int64_t>(wantStored));
  CHECK(storedFraction(*dense) == Approx(wantStored / static_cast<double>(dense->N * K)));
  sparse->sparse = form;
  sparse->w = AlignedBytes();
  // the conversion round-trips
  const bool f32 = dense->kind == PackedWeight::F32;
  const int64_t units = f32 ? (dense->N + kPanel - 1) / kPanel : dense->N;
  const int64_t unitBytes = f32 ? K * kPanel * 4 : dense->rowBytes();
  std::vector<uint8_t> unit(static_cast<size_t>(unitBytes));
  for (int64_t u = 0; u < units; ++u) {
    sparseToDense(*sparse, u, unit.data());
    const uint8_t* want = static_cast<const uint8_t*>(dense->w.data()) + u * unitBytes;
    if (!f32) {
      REQUIRE(std::memcmp(unit.data(), want, unit.size()) == 0);
      continue;
    }
    for (int64_t i = 0; i < K * kPanel; ++i)  // as values: -0.0 comes back as +0.0
      REQUIRE(reinterpret_cast<const float*>(unit.data())[i] == reinterpret_cast<const float*>(want)[i]);
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (int64_t M : {1, 2, 3, 4, 5, 12, 13, 20, 27}) {  // GEMV; the GEMM tiles of 12, 8, 4, 2 and 1 rows
    std::vector<float> x(M * K);
    for (auto& v : x) v = nd(rng);
    for (const Kernels* k : kernelSets()) {
      INFO("kernels " << k->isa << " M=" << M);
      const auto yd = testutil::runPacked(*k, *dense, x, M), ys = testutil::runPacked(*k, *sparse, x, M);
      // the same bits, except that F32's -0.0 weights expand as +0.0 (an exactly-zero output may change sign)
      int64_t differ = 0;
      for (size_t i = 0; i < yd.size(); ++i) {
        uint32_t a, b;
        std::memcpy(&a, &yd[i], 4), std::memcpy(&b, &ys[i], 4);
        differ += a != b && !(f32 && yd[i] == 0.f && ys[i] == 0.f);
      }
      CHECK(differ == 0);
    }
  }
  if (dense->kind == PackedWeight::Q4) return checkInt8LanesEqualsDense(pack, K, wantStored);
  if (dense->kind != PackedWeight::Q8) return;
  // int8 activations: the sparse form (vpexpandb over the zero points) gives the dense int8 kernel's bits
  REQUIRE(enableInt8(*dense));
  REQUIRE(enableInt8(*sparse));
  int sets = 0;
  for (int64_t M : {1, 2, 5, 13, 29}) {  // (29: AMX tiles' prefill, 16 rows and more)
    std::vector<float> x(M * K);
    for (auto& v : x) v = nd(rng);
    for (const Kernels* k : testutil::int8KernelSets()) {
      if (!int8Capable(*sparse, *k)) continue;  // no byte expansion: such kernel sets keep sparse weights exact
      INFO("int8 activations, kernels " << k->i8_isa << " M=" << M);
      const auto yd = testutil::runPacked(*k, *dense, x, M), ys = testutil::runPacked(*k, *sparse, x, M);
      CHECK(std::memcmp(yd.data(), ys.data(), yd.size() * 4) == 0);
      ++sets;
    }
  }
  const bool vbmi2 = vbmi2Sparse(), amx = amxSparse();
  CHECK(sets == 5 * (1 + vbmi2 + amx));  // the scalar reference, and the VBMI2 kernels (VNNI, AMX) where the CPU has them
  if (dense->nblk != 1) return;
  // row-scaled activations (SmoothQuant's W8A8, one scale per row) on a per-channel weight: the integer tiles of a
  // few rows and the repacked 64-row blocks of a prefill (16+ rows) give the dense form's bits too
  int rowScaled = 0;
  for (int64_t M : {3, 37}) {
    std::vector<float> x(M * K), scale(M);
    for (auto& v : x) v = nd(rng);
    for (int64_t m = 0; m < M; ++m) scale[m] = 0.01f + 0.002f * static_cast<float>(m);
    for (const Kernels* k : testutil::int8KernelSets()) {
      if (!int8Capable(*sparse, *k)) continue;
      INFO("row-scaled int8 activations, kernels " << k->i8_isa << " M=" << M);
      AlignedBytes mem(static_cast<size_t>(int8ActsBytes(*dense, k->i8_width, M)));  // 64-byte aligned, zeroed
      Int8Acts a = int8ActsView(*dense, k->i8_width, M, mem.data());
      quantizeInt8RowsScaled(*dense, a, x.data(), 0, M, scale.data(), 1);
      a.rowScale = true;
      std::vector<float> yd(M * dense->N, -1.f), ys(M * dense->N, -2.f);
      k->gemm_i8(*dense, a, 0, dense->N, yd.data(), dense->N);
      k->gemm_i8_sparse(*sparse, a, 0, dense->N, ys.data(), dense->N);
      CHECK(std::memcmp(yd.data(), ys.data(), yd.size() * 4) == 0);
      ++rowScaled;
    }
  }
  CHECK(rowScaled == 2 * (1 + vbmi2 + amx));
}

}  // namespace

TEST_CASE("sparse fp32 weights give the dense kernels' bits (GEMV and GEMM, every pattern and kernel set)", "[runtime][sparse]") {
  for (Pattern p : {Pattern::None, Pattern::Half, Pattern::TwoFour, Pattern::Ninety, Pattern::All}) {
    for (int64_t K : {1, 2, 31, 32, 33, 100}) {  // (2:4 takes the pairs layout from K = 2: a partial group of 4 k)
      for (int64_t N : {1, 31, 32, 33, 96, 160, 257}) {  // (the GEMVs take 2 or 4 panels at a time: 160 and 257 do)
        INFO("pattern " << name(p) << " K=" << K << " N=" << N);
        std::mt19937 rng(11);
        std::normal_distribution<float> nd;
        std::vector<float> w(K * N);
        int64_t stored = 0;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t n = 0; n < N; ++n) {
            w[k * N + n] = pruned(p, k, n, rng) ? 0.f : nd(rng);
            stored += w[k * N + n] != 0.f;
          }
        if (K * N > 3 && w[3] == 0.f) w[3] = -0.f;  // a pruned negative weight: a zero, not stored
        Buf b{DType::F32, Shape{K, N}, w.data()};
        checkSparseEqualsDense([&] { return packDense(b); }, K, static_cast<double>(stored));
      }
    }
  }
}

TEST_CASE("2:4 fp32 weights take the pairs layout, other patterns and sparser ones the masks", "[runtime][sparse]") {
  // what each layout's GEMV reads: the pairs layout two values per 4 k and 4 bits of indices per output, whatever
  // the fill; masks 4 bytes per nonzero and a bit per weight
  struct Case {
    const char* what;
    int64_t K;
    bool (*pruned)(int64_t k, int64_t n);
    bool pairs;
  };
  const Case cases[] = {
      {"2:4", 64, [](int64_t k, int64_t n) { return ((k % 4) + n) % 4 < 2; }, true},
      {"2:4, K = 33 (a partial last group)", 33, [](int64_t k, int64_t n) { return ((k % 4) + n) % 4 < 2; }, true},
      {"2:4 with some pairs at one nonzero", 64, [](int64_t k, int64_t n) { return ((k % 4) + n) % 4 < 2 || (k + n) % 16 == 0; }, true},
      {"1:4 (half the slots empty)", 64, [](int64_t k, int64_t n) { return (k + n) % 4 != 0; }, false},
      {"3:4", 64, [](int64_t k, int64_t n) { return (k + n) % 4 == 0; }, false},
      {"50% in blocks", 64, [](int64_t k, int64_t n) { return (k / 4 + n) % 2 == 0; }, false},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const int64_t N = 96;
    std::vector<float> w(c.K * N);
    int64_t nz = 0;
    for (int64_t k = 0; k < c.K; ++k)
      for (int64_t n = 0; n < N; ++n) nz += (w[k * N + n] = c.pruned(k, n) ? 0.f : 1.f + static_cast<float>(k + n)) != 0.f;
    Buf b{DType::F32, Shape{c.K, N}, w.data()};
    auto dense = packDense(b);
    auto form = makeSparse(*dense);
    REQUIRE(form);
    CHECK(form->pairs == c.pairs);
    CHECK(form->stored == nz);
    const int64_t groups = (c.K + 3) / 4, panels = N / kPanel;
    if (c.pairs) CHECK(form->bytes() == panels * (groups * 2 * kPanel * 4 + groups * kPanel / 2 + 8) + 8);
    dense->sparse = form;
    std::vector<float> panel(c.K * kPanel);
    for (int64_t p = 0; p < panels; ++p) {  // back to the dense layout
      sparseToDense(*dense, p, panel.data());
      for (int64_t k = 0; k < c.K; ++k)
        for (int64_t j = 0; j < kPanel; ++j) REQUIRE(panel[k * kPanel + j] == w[k * N + p * kPanel + j]);
    }
  }
}

TEST_CASE("sparse int8 and int4 weights give the dense kernels' bits (per channel, blocked, zero points)", "[runtime][sparse]") {
  for (Pattern p : {Pattern::None, Pattern::Half, Pattern::TwoFour, Pattern::Ninety, Pattern::All}) {
    for (int bits : {8, 4}) {
      for (int64_t K : {16, 33, 64, 100, 300}) {  // (300: rows of several int8 steps)
        for (int64_t bs : {int64_t{0}, int64_t{16}, int64_t{32}}) {  // 0: one block per row (per channel)
          for (bool withZp : {false, true}) {
            const int64_t N = 37;
            INFO("pattern " << name(p) << " bits " << bits << " K=" << K << " block " << bs << " zp " << withZp);
            std::mt19937 rng(13);
            const int64_t block = bs ? bs : K, nblk = (K + block - 1) / block;
            const int top = (1 << bits) - 1;
            // q and zp as the packed stored values (unsigned), the weight (q - zp) * s
            std::vector<uint8_t> q(K * N);
            std::vector<uint8_t> zp(nblk * N);
            std::vector<float> s(nblk * N);
            for (auto& v : s) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
            for (auto& z : zp) z = static_cast<uint8_t>(withZp ? rng() % (top + 1) : (top + 1) / 2);
            int64_t stored = 0;
            for (int64_t k = 0; k < K; ++k)
              for (int64_t n = 0; n < N; ++n) {
                const uint8_t z = zp[(k / block) * N + n];
                q[k * N + n] = pruned(p, k, n, rng) ? z : static_cast<uint8_t>(rng() % (top + 1));
                stored += q[k * N + n] != z;
              }
            // as DequantizeLinear of uint8 (8 bits) or uint4 (4 bits) [K, N]
            std::vector<uint8_t> qb(bits == 8 ? K * N : (K * N + 1) / 2, 0), zb(bits == 8 ? nblk * N : (nblk * N + 1) / 2, 0);
            for (int64_t i = 0; i < K * N; ++i) {
              if (bits == 8) qb[i] = q[i];
              else qb[i / 2] |= static_cast<uint8_t>(q[i] << (4 * (i & 1)));
            }
            for (int64_t i = 0; i < nblk * N; ++i) {
              if (bits == 8) zb[i] = zp[i];
              else zb[i / 2] |= static_cast<uint8_t>(zp[i] << (4 * (i & 1)));
            }
            const DType dt = bits == 8 ? DType::U8 : kU4;
            Buf qbuf{dt, Shape{K, N}, qb.data()};
            Buf sbuf{DType::F32, bs ? Shape{nblk, N} : Shape{N}, s.data()};
            Buf zbuf{dt, sbuf.shape, zb.data()};
            checkSparseEqualsDense([&] { return packDequantize(qbuf, sbuf, &zbuf, bs ? 0 : 1, bs); }, K,
                                   static_cast<double>(stored));
          }
        }
      }
    }
  }
}

namespace {

/// A per-channel 8-bit weight [K, N] as DequantizeLinear holds it: signed int8 with zero points 0 (symmetric), or
/// uint8 with zero point z in every channel and values in [lo, hi]; pruned elements are the zero point.
std::shared_ptr<PackedWeight> int8PerChannel(int64_t K, int64_t N, bool symmetric, int z, int lo, int hi,
                                             bool (*prune)(int64_t, int64_t), std::vector<uint8_t>& q,
                                             std::vector<float>& s, std::vector<uint8_t>& zp) {
  std::mt19937 rng(static_cast<uint32_t>(K * 1000 + N));
  q.assign(K * N, 0), s.assign(N, 0.f), zp.assign(N, static_cast<uint8_t>(symmetric ? 0 : z));
  for (auto& v : s) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      int v = prune(k, n) ? z : lo + static_cast<int>(rng() % static_cast<uint32_t>(hi - lo + 1));
      if (!prune(k, n) && v == z) v = z + 1;  // a kept weight is nonzero
      q[k * N + n] = static_cast<uint8_t>(symmetric ? static_cast<int8_t>(v) : v);
    }
  const DType dt = symmetric ? DType::I8 : DType::U8;
  Buf qb{dt, Shape{K, N}, q.data()}, sb{DType::F32, Shape{N}, s.data()}, zb{dt, Shape{N}, zp.data()};
  return packDequantize(qb, sb, &zb, 1, 0);
}

bool twoFour(int64_t k, int64_t n) { return ((k % 4) + n) % 4 < 2; }
bool twoFourSomeOne(int64_t k, int64_t n) { return twoFour(k, n) || (k + n) % 16 == 0; }

}  // namespace

namespace {

/// Runs M = 1, 2, 3, 5, 13 and 27 rows of random activations through a dense panel weight and its pairs form on every
/// kernel set with panel kernels (the GEMV, and the GEMM's tiles of 4 (AVX2) or 8 (AVX-512) rows and single rows), and
/// checks the same bits, up to the sign of an exactly-zero output. Returns the (M, kernel set) cases run.
int pairsGiveDenseBits(const PackedWeight& dense, const PackedWeight& sparse, int64_t K) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  int cases = 0;
  for (int64_t M : {1, 2, 3, 5, 13, 27}) {
    std::vector<float> x(M * K);
    for (auto& v : x) v = nd(rng);
    for (const Kernels* k : kernelSets()) {
      if (!k->converting_gemm_panels) continue;  // (no panel kernels: quantized weights keep rows)
      INFO("kernels " << k->isa << " M=" << M);
      const auto yd = testutil::runPacked(*k, dense, x, M), ys = testutil::runPacked(*k, sparse, x, M);
      int64_t differ = 0;
      for (size_t i = 0; i < yd.size(); ++i) {
        uint32_t a, b;
        std::memcpy(&a, &yd[i], 4), std::memcpy(&b, &ys[i], 4);
        differ += a != b && !(yd[i] == 0.f && ys[i] == 0.f);
      }
      CHECK(differ == 0);
      ++cases;
    }
  }
  return cases;
}

/// An int4 weight [K, N] as DequantizeLinear of uint4 holds it, in blocks of `block` along K (0: per channel), with a
/// random zero point in [0, 15] per block and output; pruned elements are the zero point, kept ones differ from it.
std::shared_ptr<PackedWeight> int4Weight(int64_t K, int64_t N, int64_t block, bool (*prune)(int64_t, int64_t),
                                         int64_t& nonzeros) {
  std::mt19937 rng(static_cast<uint32_t>(K * 977 + N * 31 + block));
  const int64_t bs = block ? block : K, nblk = (K + bs - 1) / bs;
  std::vector<uint8_t> q((K * N + 1) / 2, 0), zq((nblk * N + 1) / 2, 0), z(nblk * N);
  std::vector<float> s(nblk * N);
  for (auto& v : s) v = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
  for (auto& v : z) v = static_cast<uint8_t>(rng() % 16);
  auto put = [](std::vector<uint8_t>& v, int64_t i, int x) { v[i / 2] |= static_cast<uint8_t>(x << (4 * (i & 1))); };
  for (int64_t i = 0; i < nblk * N; ++i) put(zq, i, z[i]);
  nonzeros = 0;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const int zk = z[(k / bs) * N + n];
      int v = prune(k, n) ? zk : static_cast<int>(rng() % 16);
      if (!prune(k, n) && v == zk) v = (zk + 1) % 16;
      nonzeros += v != zk;
      put(q, k * N + n, v);
    }
  Buf qb{kU4, Shape{K, N}, q.data()}, sb{DType::F32, block ? Shape{nblk, N} : Shape{N}, s.data()},
      zb{kU4, sb.shape, zq.data()};
  return packDequantize(qb, sb, &zb, block ? 0 : 1, block);
}

bool halfUnstructured(int64_t k, int64_t n) { return (k * 7 + n * 13 + (k * n) % 5) % 2 == 0; }

}  // namespace

TEST_CASE("2:4 int4 weights take the Q4 pairs layout: the centered dense Q4P kernels' bits", "[runtime][sparse]") {
  int sets = 0;
  for (auto prune : {twoFour, twoFourSomeOne}) {
    for (int64_t block : {int64_t{0}, int64_t{32}, int64_t{64}}) {  // 0: per channel
      for (int64_t K : {4, 7, 31, 32, 33, 100}) {  // (7, 33: a partial last group of 4; 33, 100: a partial last block)
        if (block && K < 8) continue;
        for (int64_t N : {1, 31, 32, 33, 96, 160, 257}) {
          INFO((prune == twoFour ? "2:4" : "2:4, some groups at one") << " block " << block << " K=" << K << " N=" << N);
          int64_t nz = 0;
          auto dense = int4Weight(K, N, block, prune, nz), sparse = int4Weight(K, N, block, prune, nz);
          REQUIRE(panelize(*dense));
          REQUIRE(panelize(*sparse));
          REQUIRE(dense->kind == PackedWeight::Q4P);
          CHECK(dense->centered);  // (2:4, integral zero points)
          auto form = makeSparse(*sparse);
          REQUIRE(form);
          CHECK(form->pairs);
          CHECK(form->stored == nz);
          sparse->sparse = form;
          sparse->w = AlignedBytes();
          const int64_t groups = (K + 3) / 4, panels = (N + kPanel - 1) / kPanel;
          CHECK(form->bytes() == panels * (groups * kPanel + groups * kPanel / 2 + 8) + 8);  // 1.5 bytes per 4 k
          std::vector<uint8_t> panel(K * kPanel / 2);
          for (int64_t p = 0; p < panels; ++p) {  // back to the dense panel bytes
            sparseToDense(*sparse, p, panel.data());
            REQUIRE(std::memcmp(panel.data(), static_cast<const uint8_t*>(dense->w.data()) + p * panel.size(), panel.size()) == 0);
          }
          sets += pairsGiveDenseBits(*dense, *sparse, K);
        }
      }
    }
  }
  const int sizes = 6 * 7 + 2 * 4 * 7;  // per channel: every K; blocked: K of 8 or more
  CHECK(sets == 2 * sizes * 6 * ((avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0)));
}

TEST_CASE("Only 2:4 int4 weights are centered: the others keep the faster uncentered kernels", "[runtime][sparse]") {
  int64_t nz = 0;
  auto unstructured = int4Weight(64, 64, 32, halfUnstructured, nz);
  REQUIRE(panelize(*unstructured));
  CHECK_FALSE(unstructured->centered);
  CHECK(rowPairsNonzeros(*int4Weight(64, 64, 32, halfUnstructured, nz)) == -1);
  auto pairs = int4Weight(64, 64, 32, twoFour, nz);
  CHECK(rowPairsNonzeros(*pairs) == nz);
  REQUIRE(panelize(*pairs));
  CHECK(pairs->centered);
  CHECK(pairs->zp8.size() >= 2 * 2 * kPanel);  // (its zero points stay: the kernels take them off the nibbles)
}

TEST_CASE("2:4 int8 weights per channel take the Q8 pairs layout: the dense Q8P kernels' bits", "[runtime][sparse]") {
  int sets = 0;
  for (auto prune : {twoFour, twoFourSomeOne}) {
    for (bool symmetric : {true, false}) {
      for (int64_t K : {4, 7, 31, 32, 33, 100}) {  // (K = 7, 33: a partial last group of 4)
        for (int64_t N : {1, 31, 32, 33, 96, 160, 257}) {
          INFO((prune == twoFour ? "2:4" : "2:4, some groups at one") << (symmetric ? " int8" : " uint8, zero point 100")
               << " K=" << K << " N=" << N);
          std::vector<uint8_t> q, zp;
          std::vector<float> s;
          const int z = symmetric ? 0 : 100;
          auto make = [&] { return int8PerChannel(K, N, symmetric, z, symmetric ? -128 : 0, symmetric ? 127 : 227, prune, q, s, zp); };
          auto dense = make(), sparse = make();
          REQUIRE(panelize(*dense));
          REQUIRE(panelize(*sparse));
          CHECK(dense->centered);  // (values less their zero points fit a signed byte)
          auto form = makeSparse(*sparse);
          REQUIRE(form);
          CHECK(form->pairs);
          int64_t nz = 0;
          for (int64_t i = 0; i < K * N; ++i) nz += (symmetric ? static_cast<int>(static_cast<int8_t>(q[i])) : q[i]) != z;
          CHECK(form->stored == nz);
          sparse->sparse = form;
          sparse->w = AlignedBytes();
          CHECK(storedFraction(*sparse) == Approx(static_cast<double>(nz) / static_cast<double>(K * N)));
          const int64_t groups = (K + 3) / 4, panels = (N + kPanel - 1) / kPanel;
          CHECK(form->bytes() == panels * (groups * 2 * kPanel + groups * kPanel / 2 + 8) + 8);  // 2.5 bytes per 4 k
          std::vector<uint8_t> panel(K * kPanel);
          for (int64_t p = 0; p < panels; ++p) {  // back to the dense panel bytes
            sparseToDense(*sparse, p, panel.data());
            REQUIRE(std::memcmp(panel.data(), static_cast<const uint8_t*>(dense->w.data()) + p * K * kPanel, panel.size()) == 0);
          }
          sets += pairsGiveDenseBits(*dense, *sparse, K);
        }
      }
    }
  }
  CHECK(sets == 2 * 2 * 6 * 7 * 6 * ((avx512Kernels() ? 1 : 0) + (avx2Kernels() ? 1 : 0)));
}

TEST_CASE("Q8 pairs need values that fit a signed byte less their zero point, and the 2:4 fill", "[runtime][sparse]") {
  std::vector<uint8_t> q, zp;
  std::vector<float> s;
  // uint8 with zero point 100 and a value of 255: 155 does not fit a signed byte, so the panels keep unsigned bytes
  // and their zero points, and a 2:4 weight keeps them dense (its GEMV sums x * 100 for every pruned weight)
  int8PerChannel(64, 32, false, 100, 0, 227, twoFour, q, s, zp);
  q[2 * 32 + 0] = 255;  // (k 2 of output 0 is kept)
  Buf qb{DType::U8, Shape{64, 32}, q.data()}, sb{DType::F32, Shape{32}, s.data()}, zb{DType::U8, Shape{32}, zp.data()};
  auto wide = packDequantize(qb, sb, &zb, 1, 0);
  CHECK_FALSE(centerable(*wide));
  REQUIRE(panelize(*wide));
  CHECK_FALSE(wide->centered);
  CHECK(makeSparse(*wide) == nullptr);
  // centered, but 1:4: half the slots empty, which the pairs layout does not take (and panels have no masks)
  auto sparse14 = int8PerChannel(64, 32, true, 0, -128, 127, [](int64_t k, int64_t n) { return (k + n) % 4 != 0; }, q, s, zp);
  REQUIRE(panelize(*sparse14));
  CHECK(sparse14->centered);
  CHECK(makeSparse(*sparse14) == nullptr);
  // a dense symmetric weight: centered, no sparse form
  auto full = int8PerChannel(64, 32, true, 0, -128, 127, [](int64_t, int64_t) { return false; }, q, s, zp);
  REQUIRE(panelize(*full));
  CHECK(full->centered);
  CHECK(makeSparse(*full) == nullptr);
}

TEST_CASE("a zero point that no stored value can equal has no sparse form", "[runtime][sparse]") {
  PackedWeight w;
  w.kind = PackedWeight::Q8;
  w.N = 1, w.K = 32, w.block = 32, w.nblk = 1, w.P = 32, w.bits = 8;
  w.w.resize(32);
  w.scale = {0.1f};
  w.zp = {3.5f};  // MatMulNBits float zero points may be fractional: q == zp never holds
  CHECK(makeSparse(w) == nullptr);
  CHECK(storedFraction(w) == 1.0);
  w.zp = {3.f};
  CHECK(makeSparse(w) != nullptr);
  CHECK(storedFraction(w) == 1.0);  // every stored 0 differs from zero point 3
}

TEST_CASE("the load-time choice follows SessionOptions::sparse and the kernel set's crossover", "[runtime][sparse]") {
  constexpr int64_t D = 512;  // 1 MiB as fp32: Auto leaves smaller (cache-resident) weights dense
  std::vector<float> half(D * D, 0.f), full(D * D, 1.f), small(64 * 64, 0.f);
  for (size_t i = 0; i < half.size(); i += 2) half[i] = 1.f;
  Graph g;
  for (auto* w : {&half, &full, &small}) {
    Node n;
    n.op = "MatMul";
    const int64_t d = w == &small ? 64 : D;
    n.packed = packDense(Buf{DType::F32, Shape{d, d}, w->data()});
    g.nodes.push_back(std::move(n));
  }
  Kernels k = scalarKernels();
  CHECK(chooseSparseForms(g, SparseMode::Off, k) == 0);
  CHECK(chooseSparseForms(g, SparseMode::Auto, k) == 0);  // no crossover: the scalar kernels never pick it
  k.sparse_crossover[PackedWeight::F32] = 0.4f;
  CHECK(chooseSparseForms(g, SparseMode::Auto, k) == 0);  // 50% nonzero is above this crossover
  k.sparse_crossover[PackedWeight::F32] = 0.6f;
  CHECK(chooseSparseForms(g, SparseMode::Auto, k) == 1);
  CHECK(g.nodes[0].packed->sparse);
  CHECK(g.nodes[0].packed->w.size() == 0);
  CHECK(g.nodes[0].packed->bytes() < D * D * 4 * 6 / 10);
  CHECK_FALSE(g.nodes[2].packed->sparse);               // all zero, but small
  CHECK(chooseSparseForms(g, SparseMode::On, k) == 1);  // the small one; the full weight has no zero
  CHECK(g.nodes[2].packed->sparse);
  CHECK_FALSE(g.nodes[1].packed->sparse);
}

TEST_CASE("auto takes smaller weights too when the model's weights do not fit in the last-level cache", "[runtime][sparse]") {
  // a 512 KiB weight (half zeros) next to 1 MiB ones: below the in-cache minimum, above the streaming one
  std::vector<float> mid(256 * 512, 0.f), big(512 * 512, 0.f), tiny(32 * 32, 0.f);
  for (auto* w : {&mid, &big})
    for (size_t i = 0; i < w->size(); i += 2) (*w)[i] = 1.f;
  auto graph = [&] {
    Graph g;
    for (auto* w : {&mid, &big, &tiny}) {
      Node n;
      n.op = "MatMul";
      const int64_t rows = w == &mid ? 256 : w == &big ? 512 : 32;
      n.packed = packDense(Buf{DType::F32, Shape{rows, static_cast<int64_t>(w->size()) / rows}, w->data()});
      g.nodes.push_back(std::move(n));
    }
    return g;
  };
  Kernels k = scalarKernels();
  k.sparse_crossover[PackedWeight::F32] = 0.6f;
  Graph cached = graph();  // 1.5 MiB of weights in a 64 MiB cache: the 512 KiB one stays dense
  CHECK(chooseSparseForms(cached, SparseMode::Auto, k, Int8Activations::Off, int64_t{64} << 20) == 1);
  CHECK_FALSE(cached.nodes[0].packed->sparse);
  CHECK(cached.nodes[1].packed->sparse);
  Graph streamed = graph();  // the same weights against a 1 MiB cache: both pay
  CHECK(chooseSparseForms(streamed, SparseMode::Auto, k, Int8Activations::Off, int64_t{1} << 20) == 2);
  CHECK(streamed.nodes[0].packed->sparse);
  CHECK_FALSE(streamed.nodes[2].packed->sparse);  // 4 KiB, all zero: still too small to pay
}

TEST_CASE("auto takes fp32 2:4 weights of every size: the pairs layout expands nothing", "[runtime][sparse]") {
  std::vector<float> twoFour(64 * 96), half(64 * 96);  // [K = 64, N = 96], 24 KiB each
  for (int64_t k = 0; k < 64; ++k)
    for (int64_t n = 0; n < 96; ++n) {
      twoFour[k * 96 + n] = ((k % 4) + n) % 4 < 2 ? 0.f : 1.f;
      half[k * 96 + n] = (k + n) % 2 == 0 && (k / 4) % 2 == 0 ? 0.f : 1.f;  // 3 or 4 nonzeros in each 4 k: masks
    }
  auto graph = [&] {
    Graph g;
    for (auto* w : {&twoFour, &half}) {
      Node n;
      n.op = "MatMul";
      n.packed = packDense(Buf{DType::F32, Shape{64, 96}, w->data()});
      g.nodes.push_back(std::move(n));
    }
    return g;
  };
  Kernels k = scalarKernels();
  Graph none = graph();  // a kernel set without a measured crossover never picks a sparse form
  CHECK(chooseSparseForms(none, SparseMode::Auto, k, Int8Activations::Off, int64_t{64} << 20) == 0);
  k.sparse_crossover[PackedWeight::F32] = 0.8f;
  Graph g = graph();  // in cache, far below 1 MiB: only the 2:4 one
  CHECK(chooseSparseForms(g, SparseMode::Auto, k, Int8Activations::Off, int64_t{64} << 20) == 1);
  REQUIRE(g.nodes[0].packed->sparse);
  CHECK(g.nodes[0].packed->sparse->pairs);
  CHECK_FALSE(g.nodes[1].packed->sparse);
}

namespace {

/// The scalar kernel set with a (never called) panel GEMM: what chooseSparseForms asks of a set for the Q8 / Q4 pairs.
Kernels scalarWithPanelKernels() {
  Kernels k = scalarKernels();
  k.converting_gemm_panels = [](const PackedWeight&, const PanelRows&, int64_t, int64_t, int64_t, float*, float*, int64_t,
                                int64_t) {};
  return k;
}

/// A graph of two quantized weights from make(0) (2:4) and make(1) (not 2:4), both far below 1 MiB and in cache, with no
/// crossover for their kind: the scalar set (no panel kernels: the weights keep rows) takes neither; a set with panel
/// kernels takes the 2:4 one alone, in the pairs layout, centered, without its dense form, and leaves the other in
/// rows (`kind`, for choosePanelForms later); weights headed for int8 activations are left to their kernels (which have
/// no pairs layout). Returns the graph chosen with panel kernels.
Graph autoTakesQuantPairs(const std::function<std::shared_ptr<PackedWeight>(int)>& make, PackedWeight::Kind kind) {
  auto graph = [&] {
    Graph g;
    for (int i = 0; i < 2; ++i) {
      Node n;
      n.op = "MatMul";
      n.packed = make(i);
      g.nodes.push_back(std::move(n));
    }
    return g;
  };
  Graph rows = graph();
  CHECK(chooseSparseForms(rows, SparseMode::Auto, scalarKernels(), Int8Activations::Off, int64_t{64} << 20) == 0);
  const Kernels k = scalarWithPanelKernels();
  Graph g = graph();
  CHECK(chooseSparseForms(g, SparseMode::Auto, k, Int8Activations::Off, int64_t{64} << 20) == 1);
  const PackedWeight& w = *g.nodes[0].packed;
  REQUIRE(w.sparse);
  CHECK(w.sparse->pairs);
  CHECK(w.centered);
  CHECK(w.w.size() == 0);
  CHECK_FALSE(g.nodes[1].packed->sparse);
  CHECK(g.nodes[1].packed->kind == kind);
  Graph acts = graph();
  CHECK(chooseSparseForms(acts, SparseMode::Auto, k, Int8Activations::On, int64_t{64} << 20) == 0);
  return g;
}

}  // namespace

TEST_CASE("auto takes int8 2:4 weights per channel as Q8 pairs where the kernel set has panel kernels", "[runtime][sparse]") {
  std::vector<uint8_t> q, zp;
  std::vector<float> s;
  // 2:4, and about 50% with 3 or 4 nonzeros in some groups of 4 k; 6 KiB each
  auto some34 = +[](int64_t k, int64_t n) { return (k + n) % 2 == 0 && (k / 4) % 2 == 0; };
  const Graph g = autoTakesQuantPairs(
      [&](int i) { return int8PerChannel(64, 96, true, 0, -128, 127, i == 0 ? twoFour : some34, q, s, zp); }, PackedWeight::Q8);
  const PackedWeight& w = *g.nodes[0].packed;
  CHECK(w.kind == PackedWeight::Q8P);
  CHECK(w.bytes() < 64 * 96 * 3 / 4);  // 2.5 bytes per 4 weights, the scales and zero points, against 1 byte per weight
}

TEST_CASE("auto takes int4 2:4 weights as Q4 pairs where the kernel set has panel kernels", "[runtime][sparse]") {
  auto make = [](int i) {  // 2:4, and 50% unstructured; 3 KiB each
    int64_t nz = 0;
    return int4Weight(64, 96, 32, i == 0 ? twoFour : halfUnstructured, nz);
  };
  const Graph g = autoTakesQuantPairs(make, PackedWeight::Q4);
  const PackedWeight& w = *g.nodes[0].packed;
  CHECK(w.kind == PackedWeight::Q4P);
  // per panel and group of 4 k: 32 bytes of nibble pairs and 16 of indices, 1.5 bytes per 4 weights against 2
  CHECK(w.sparse->bytes() == 3 * (16 * 32 + 16 * 16 + 8) + 8);
  CHECK(w.sparse->bytes() < 64 * 96 / 2);
  Graph off;  // off: nothing sparse, and the 2:4 weight's dense panels centered all the same (the same bits)
  for (int i = 0; i < 2; ++i) {
    Node n;
    n.op = "MatMul";
    n.packed = make(i);
    off.nodes.push_back(std::move(n));
  }
  const Kernels k = scalarWithPanelKernels();
  CHECK(chooseSparseForms(off, SparseMode::Off, k, Int8Activations::Off, int64_t{64} << 20) == 0);
  CHECK(choosePanelForms(off, k) == 2);
  CHECK(off.nodes[0].packed->centered);
  CHECK_FALSE(off.nodes[1].packed->centered);
}

namespace {

/// Whether chooseSparseForms' pairs of `rows` (a Q8 / Q4 weight still in rows: the load's path) equal makeSparse's
/// form of the panelized `reference` (the same weight), byte for byte, with the same panel parameters.
void pairsFromRowsEqualPanels(std::shared_ptr<PackedWeight> rows, std::shared_ptr<PackedWeight> reference, int64_t nz, PackedWeight::Kind kind) {
  REQUIRE(panelize(*reference));
  REQUIRE(reference->kind == kind);
  auto form = makeSparse(*reference);
  REQUIRE(form);
  REQUIRE(form->pairs);
  Graph g;
  Node n;
  n.op = "MatMul";
  n.packed = std::move(rows);
  g.nodes.push_back(std::move(n));
  REQUIRE(chooseSparseForms(g, SparseMode::On, scalarWithPanelKernels(), Int8Activations::Off, int64_t{64} << 20) == 1);
  const PackedWeight& w = *g.nodes[0].packed;
  CHECK(w.kind == kind);
  CHECK(w.centered);
  CHECK(w.w.size() == 0);
  CHECK(w.scale == reference->scale);
  CHECK(w.scale16 == reference->scale16);
  CHECK(w.zp == reference->zp);
  CHECK(w.zp8 == reference->zp8);
  REQUIRE(w.sparse);
  const SparseForm& s = *w.sparse;
  CHECK(s.pairs);
  CHECK(s.stored == nz);
  CHECK(s.stored == form->stored);
  CHECK(s.elements == form->elements);
  CHECK(s.start == form->start);
  CHECK(s.mask == form->mask);
  REQUIRE(s.values.size() == form->values.size());
  CHECK(std::memcmp(s.values.data(), form->values.data(), s.values.size()) == 0);
}

}  // namespace

TEST_CASE("the load builds int8 and int4 2:4 pairs straight from the rows: the panelized weight's form, byte for byte", "[runtime][sparse]") {
  int compared = 0;
  for (auto prune : {twoFour, twoFourSomeOne}) {
    for (int64_t K : {4, 7, 31, 32, 33, 100}) {  // (7, 33: a partial last group of 4; 33, 100: a partial last block)
      for (int64_t N : {1, 31, 32, 33, 96, 160, 257}) {
        for (int64_t block : {int64_t{0}, int64_t{32}, int64_t{64}}) {  // int4; 0: per channel
          if (block && K < 8) continue;
          INFO("int4, " << (prune == twoFour ? "2:4" : "2:4, some groups at one") << " block " << block << " K=" << K << " N=" << N);
          int64_t nz = 0;
          auto rows = int4Weight(K, N, block, prune, nz), reference = int4Weight(K, N, block, prune, nz);
          pairsFromRowsEqualPanels(rows, reference, nz, PackedWeight::Q4P);
          ++compared;
        }
        for (bool symmetric : {true, false}) {  // int8 per channel (uint8 with a zero point of 100)
          INFO("int8, " << (prune == twoFour ? "2:4" : "2:4, some groups at one") << (symmetric ? " symmetric" : " zero point 100") << " K=" << K << " N=" << N);
          std::vector<uint8_t> q, zp;
          std::vector<float> s;
          const int z = symmetric ? 0 : 100;
          auto make = [&] { return int8PerChannel(K, N, symmetric, z, symmetric ? -128 : 0, symmetric ? 127 : 227, prune, q, s, zp); };
          auto rows = make(), reference = make();
          int64_t nz = 0;
          for (int64_t k = 0; k < K; ++k)
            for (int64_t n = 0; n < N; ++n) nz += !prune(k, n);
          pairsFromRowsEqualPanels(rows, reference, nz, PackedWeight::Q8P);
          ++compared;
        }
      }
    }
  }
  CHECK(compared == 2 * (6 * 7 + 2 * 4 * 7) + 2 * 6 * 7 * 2);
}

TEST_CASE("weights headed for int8 activations are judged by the int8 kernels' crossover", "[runtime][sparse][int8]") {
  constexpr int64_t D = 1024;  // 1 MiB as int8
  std::vector<int8_t> q8(D * D, 0);
  for (size_t i = 0; i < q8.size(); i += 2) q8[i] = 5;  // 50% nonzero (zero point 0)
  std::vector<uint8_t> q4(D * D, 0);  // [D, 2D] int4: 1 MiB
  for (size_t i = 0; i < q4.size(); ++i) q4[i] = 0x05;  // every other int4 nonzero
  std::vector<float> s(D, 0.01f), s4(D / 32 * 2 * D, 0.01f);
  auto graph = [&] {
    Graph g;
    Node a;
    a.op = "MatMul";
    a.packed = packDequantize(Buf{DType::I8, Shape{D, D}, q8.data()}, Buf{DType::F32, Shape{D}, s.data()}, nullptr, 1, 0);
    g.nodes.push_back(std::move(a));
    Node b;
    b.op = "MatMul";
    b.packed = packDequantize(Buf{kU4, Shape{D, 2 * D}, q4.data()}, Buf{DType::F32, Shape{D / 32, 2 * D}, s4.data()},
                              nullptr, 0, 32);
    g.nodes.push_back(std::move(b));
    return g;
  };
  Kernels k = scalarKernels();
  k.sparse_crossover[PackedWeight::Q8] = 0.f;
  k.sparse_crossover[PackedWeight::Q4] = 0.6f;
  k.sparse_crossover_i8[PackedWeight::Q8] = k.sparse_crossover_i8[PackedWeight::Q4] = 0.6f;
  Graph exact = graph();  // exact compute: the int4 weight pays by the exact crossover, the int8 one does not
  CHECK(chooseSparseForms(exact, SparseMode::Auto, k, Int8Activations::Off) == 1);
  CHECK(exact.nodes[1].packed->sparse);
  Graph i8 = graph();  // int8 activations: both by sparse_crossover_i8, the int4 one in the int8-lanes form
  CHECK(chooseSparseForms(i8, SparseMode::Auto, k, Int8Activations::On) == 2);
  REQUIRE((i8.nodes[0].packed->sparse && i8.nodes[1].packed->sparse));
  CHECK_FALSE(i8.nodes[0].packed->sparse->int8Lanes);
  CHECK(i8.nodes[1].packed->sparse->int8Lanes);
  CHECK(chooseInt8Activations(i8, Int8Activations::On, k) == 2);  // both keep int8 activations
  // the int8-lanes form only where the int8 kernels will surely run it: a scale outside fp16's normal range (no int8
  // activations for that weight) keeps the int4 weight dense
  s4[7] = 1e-6f;
  Graph tiny = graph();
  CHECK(chooseSparseForms(tiny, SparseMode::Auto, k, Int8Activations::On) == 1);
  CHECK_FALSE(tiny.nodes[1].packed->sparse);
  CHECK(chooseInt8Activations(tiny, Int8Activations::On, k) == 1);  // the int4 weight keeps exact compute
  s4[7] = 0.01f;
  Kernels noSparseI8 = k;  // a kernel set without a sparse int8 kernel (AVX2) keeps both dense under auto
  noSparseI8.gemm_i8_sparse = nullptr;
  Graph plain = graph();
  CHECK(chooseSparseForms(plain, SparseMode::Auto, noSparseI8, Int8Activations::On) == 0);
  k.sparse_crossover_i8[PackedWeight::Q8] = k.sparse_crossover_i8[PackedWeight::Q4] = 0.f;
  Graph none = graph();
  CHECK(chooseSparseForms(none, SparseMode::Auto, k, Int8Activations::On) == 0);
}
