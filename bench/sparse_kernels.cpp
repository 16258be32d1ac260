// sparse_kernels.cpp — the sparse kernels alone against the dense ones, on one synthetic weight, one thread: the
// decode GEMV (1 row) and the prefill GEMM (128 rows) through this CPU's kernel set (runtime/kernels.h), dense and in
// the sparse form (runtime/sparse.h) for a pattern: 50% unstructured (the mask form) or 2:4 along K (the pairs
// layout), of an fp32 weight or a symmetric int8 one with exact compute. Best of several timed loops, so that the
// machine's noise shows less than in a whole model.
// Usage: sparse_kernels [50|2:4] [K] [N] [fp32|int8|int4]   (default 2:4 2048 2048 fp32; K = N = 512 keeps the weight in L2)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/sparse.h"

using namespace crt;
using namespace crt::detail;

namespace {

/// Best time in ms of `reps` calls of f, over `loops` loops.
template <typename F>
double bestMs(F&& f, int loops, int reps) {
  double best = 1e30;
  for (int l = 0; l < loops; ++l) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) f();
    const std::chrono::duration<double, std::milli> t = std::chrono::steady_clock::now() - t0;
    best = std::min(best, t.count() / reps);
  }
  return best;
}

}  // namespace

/// The two forms of one pruned weight [K, N] (MatMul's B) and how to run them.
struct Forms {
  std::shared_ptr<PackedWeight> dense, sparse;
  int64_t Kp = 0;  // the activations' padded length (Q8: the block layout)
};

/// int4 in blocks of 32 along K, asymmetric (as the rtn and GPTQ passes write MatMulNBits): per block s = range / 15
/// and an integral zero point, a pruned weight stored as its block's zero point.
std::shared_ptr<PackedWeight> int4Blocked(const std::vector<float>& b, int64_t K, int64_t N) {
  constexpr int64_t B = 32;
  const int64_t nblk = (K + B - 1) / B;
  std::vector<uint8_t> q((K * N + 1) / 2, 0), zq((nblk * N + 1) / 2, 0);
  std::vector<float> s(nblk * N);
  auto put = [](std::vector<uint8_t>& v, int64_t i, int x) { v[i / 2] |= static_cast<uint8_t>(x << (4 * (i & 1))); };
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t n = 0; n < N; ++n) {
      float lo = 0, hi = 0;
      for (int64_t k = blk * B; k < std::min(K, blk * B + B); ++k) lo = std::min(lo, b[k * N + n]), hi = std::max(hi, b[k * N + n]);
      const float sc = hi > lo ? (hi - lo) / 15 : 1;
      const int z = std::clamp(static_cast<int>(std::lround(-lo / sc)), 0, 15);
      s[blk * N + n] = sc;
      put(zq, blk * N + n, z);
      for (int64_t k = blk * B; k < std::min(K, blk * B + B); ++k)
        put(q, k * N + n, b[k * N + n] == 0.f ? z : std::clamp(static_cast<int>(std::lround(b[k * N + n] / sc)) + z, 0, 15));
    }
  Buf qb{kU4, Shape{K, N}, q.data()}, sb{DType::F32, Shape{nblk, N}, s.data()}, zb{kU4, Shape{nblk, N}, zq.data()};
  return packDequantize(qb, sb, &zb, 0, B);
}

/// fp32: the F32 panels, and their sparse form (2:4: pairs; 50: masks). int8: per-channel symmetric int8 (as an
/// int8 QDQ file holds) as crun's exact kernels run it: centered Q8P panels, and 2:4 as Q8 pairs (50: Q8 rows with
/// masks, as `--sparse on` stores them). int4: int4Blocked as centered Q4P panels, and 2:4 as Q4 pairs (50: Q4 rows
/// with masks).
Forms makeForms(const std::vector<float>& b, int64_t K, int64_t N, const std::string& dtype, bool pairs) {
  Forms f;
  if (dtype == "fp32") {
    Buf buf{DType::F32, Shape{K, N}, const_cast<float*>(b.data())};
    f.dense = packDense(buf), f.sparse = packDense(buf);
    f.Kp = K;
  } else if (dtype == "int4") {
    f.dense = int4Blocked(b, K, N), f.sparse = int4Blocked(b, K, N);
    f.Kp = f.dense->nblk * f.dense->P;
    panelize(*f.dense);
    if (pairs) panelize(*f.sparse);
  } else {
    std::vector<int8_t> q(K * N);
    std::vector<float> s(N);
    for (int64_t n = 0; n < N; ++n) {
      float top = 0;
      for (int64_t k = 0; k < K; ++k) top = std::max(top, std::abs(b[k * N + n]));
      s[n] = top > 0 ? top / 127 : 1;
      for (int64_t k = 0; k < K; ++k) q[k * N + n] = static_cast<int8_t>(std::lround(b[k * N + n] / s[n]));
    }
    Buf qb{DType::I8, Shape{K, N}, q.data()}, sb{DType::F32, Shape{N}, s.data()};
    f.dense = packDequantize(qb, sb, nullptr, 1, 0), f.sparse = packDequantize(qb, sb, nullptr, 1, 0);
    f.Kp = f.dense->nblk * f.dense->P;
    panelize(*f.dense);
    if (pairs) panelize(*f.sparse);
  }
  f.sparse->sparse = makeSparse(*f.sparse);
  f.sparse->w = AlignedBytes();
  return f;
}

int main(int argc, char** argv) {
  const std::string pattern = argc > 1 ? argv[1] : "2:4";
  const int64_t K = argc > 2 ? std::atoll(argv[2]) : 2048, N = argc > 3 ? std::atoll(argv[3]) : 2048;
  const std::string dtype = argc > 4 ? argv[4] : "fp32";
  if ((pattern != "50" && pattern != "2:4") || (dtype != "fp32" && dtype != "int8" && dtype != "int4") || K < 4 || N < 1 ||
      K * N > (int64_t{1} << 28)) {
    std::fprintf(stderr, "usage: sparse_kernels [50|2:4] [K >= 4] [N >= 1] [fp32|int8|int4]  (K * N at most 2^28)\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> b(K * N);  // [K, N] as MatMul's B
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const bool pruned = pattern == "50" ? rng() % 2 == 0 : ((k % 4) + n) % 4 < 2;
      const float v = nd(rng);
      b[k * N + n] = pruned ? 0.f : v;
    }
  const Forms f = makeForms(b, K, N, dtype, pattern == "2:4");
  const PackedWeight& dense = *f.dense;
  const PackedWeight& sparse = *f.sparse;
  if (!sparse.sparse) {
    std::fprintf(stderr, "sparse_kernels: this weight has no sparse form\n");
    return 1;
  }
  const Kernels& kk = kernelsFor(true);
  std::vector<float> x(f.Kp, 0.f), y(N);
  for (int64_t k = 0; k < K; ++k) x[k] = nd(rng);
  std::vector<float> xsum(dense.nblk, 0.f);  // per block (the GEMVs' zero-point terms)
  for (int64_t k = 0; k < K; ++k) xsum[k / std::max<int64_t>(dense.block, 1) % dense.nblk] += x[k];
  const int reps = static_cast<int>(std::max<int64_t>(1, (int64_t{1} << 24) / (K * N)));
  // A centered Q4P weight keeps its stored nibbles and zero points, so the same panels also time the uncentered
  // kernels (gu: what the centering costs the dense GEMV and GEMM).
  PackedWeight& flip = *f.dense;
  const bool centeredQ4 = dense.kind == PackedWeight::Q4P && dense.centered;
  double gd = 1e30, gs = 1e30, gu = 1e30;
  for (int r = 0; r < 3; ++r) {  // interleaved
    gd = std::min(gd, bestMs([&] { kk.gemv(dense, x.data(), xsum.data(), 0, N, y.data()); }, 40, reps));
    gs = std::min(gs, bestMs([&] { kk.sparse_gemv(sparse, x.data(), xsum.data(), 0, N, y.data()); }, 40, reps));
    if (centeredQ4) {
      flip.centered = false;
      gu = std::min(gu, bestMs([&] { kk.gemv(dense, x.data(), xsum.data(), 0, N, y.data()); }, 40, reps));
      flip.centered = true;
    }
  }
  const int64_t M = 128, P = (N + kPanel - 1) / kPanel;
  std::vector<float> X(M * f.Kp, 0.f), Y(M * N), panel(std::max(panelBufferFloats(dense), panelBufferFloats(sparse)));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) X[m * f.Kp + k] = nd(rng);
  // The GEMM of each form as packedMatMul runs it (int8 50%: rows with masks go through Eigen, not timed here), with
  // X's tiled rows where the kernel set reads them.
  std::vector<float> Xt(M * K);
  if (kk.tile_rows) tileRows(X.data(), f.Kp, K, kk.tile_rows, 0, M / kk.tile_rows, Xt.data());
  const PanelRows xr{X.data(), f.Kp, kk.tile_rows ? Xt.data() : nullptr};
  auto gemm = [&](const PackedWeight& w) {
    if (w.kind == PackedWeight::F32 && !w.sparse)
      kk.gemm_panels(xr, M, static_cast<const float*>(w.w.data()), K, 0, P, Y.data(), N, N);
    else if (w.kind == PackedWeight::F32) kk.sparse_gemm_panels(w, xr, M, 0, P, panel.data(), Y.data(), N, N);
    else kk.converting_gemm_panels(w, xr, M, 0, P, panel.data(), Y.data(), N, N);
  };
  const bool gemmBoth = sparse.kind != PackedWeight::Q8;
  double md = 1e30, ms = 1e30, mu = 1e30;
  for (int r = 0; r < 3; ++r) {
    md = std::min(md, bestMs([&] { gemm(dense); }, 3, 1));
    if (gemmBoth) ms = std::min(ms, bestMs([&] { gemm(sparse); }, 3, 1));
    if (centeredQ4) {
      flip.centered = false;
      mu = std::min(mu, bestMs([&] { gemm(dense); }, 3, 1));
      flip.centered = true;
    }
  }
  std::printf("kernels %s, %s, pattern %s (%s), K %lld, N %lld, 1 thread\n", kk.isa, dtype.c_str(), pattern.c_str(),
              sparse.sparse->pairs ? "pairs layout" : "mask form", static_cast<long long>(K), static_cast<long long>(N));
  std::printf("GEMV [1,K]:   dense %.4f ms (%.1f GB/s), sparse %.4f ms (%.1f GB/s, %.1f ps per weight), "
              "sparse / dense %.3f\n",
              gd, static_cast<double>(dense.bytes()) / gd / 1e6, gs, static_cast<double>(sparse.bytes()) / gs / 1e6,
              gs * 1e9 / static_cast<double>(K * N), gs / gd);
  if (gemmBoth)
    std::printf("GEMM [128,K]: dense %.3f ms (%.1f GFLOPS), sparse %.3f ms, sparse / dense %.3f\n", md,
                2.0 * M * K * N / md / 1e6, ms, ms / md);
  if (centeredQ4)
    std::printf("dense Q4P centered / as stored: GEMV %.4f / %.4f ms (%.3f), GEMM %.3f / %.3f ms (%.3f)\n", gd, gu,
                gd / gu, md, mu, md / mu);
  return 0;
}
