// sparse_kernels.cpp — the fp32 sparse kernels alone against the dense ones, on one synthetic weight, one thread:
// the decode GEMV (1 row) and the prefill GEMM (128 rows) through this CPU's kernel set (runtime/kernels.h), dense
// and in the sparse form (runtime/sparse.h) for a pattern: 50% unstructured (the mask form) or 2:4 along K (the pairs
// layout). Best of several timed loops, so that the machine's noise shows less than in a whole model.
// Usage: sparse_kernels [50|2:4] [K] [N]   (default 2:4 2048 2048; K = N = 512 keeps the weight in L2)
#include <algorithm>
#include <chrono>
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

int main(int argc, char** argv) {
  const std::string pattern = argc > 1 ? argv[1] : "2:4";
  const int64_t K = argc > 2 ? std::atoll(argv[2]) : 2048, N = argc > 3 ? std::atoll(argv[3]) : 2048;
  if ((pattern != "50" && pattern != "2:4") || K < 4 || N < 1 || K * N > (int64_t{1} << 28)) {
    std::fprintf(stderr, "usage: sparse_kernels [50|2:4] [K >= 4] [N >= 1]  (K * N at most 2^28)\n");
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
  Buf buf{DType::F32, Shape{K, N}, b.data()};
  auto dense = packDense(buf), sparse = packDense(buf);
  sparse->sparse = makeSparse(*sparse);
  sparse->w = AlignedBytes();
  const Kernels& kk = kernelsFor(true);
  std::vector<float> x(K), y(N);
  for (auto& v : x) v = nd(rng);
  const int reps = static_cast<int>(std::max<int64_t>(1, (int64_t{1} << 24) / (K * N)));
  double gd = 1e30, gs = 1e30;
  for (int r = 0; r < 3; ++r) {  // interleaved
    gd = std::min(gd, bestMs([&] { kk.gemv(*dense, x.data(), nullptr, 0, N, y.data()); }, 40, reps));
    gs = std::min(gs, bestMs([&] { kk.sparse_gemv(*sparse, x.data(), nullptr, 0, N, y.data()); }, 40, reps));
  }
  const int64_t M = 128, P = (N + kPanel - 1) / kPanel;
  std::vector<float> X(M * K), Y(M * N), panel(K * kPanel);
  for (auto& v : X) v = nd(rng);
  const float* panels = static_cast<const float*>(dense->w.data());
  double md = 1e30, ms = 1e30;
  for (int r = 0; r < 3; ++r) {
    md = std::min(md, bestMs([&] { kk.gemm_panels(X.data(), K, M, panels, K, 0, P, Y.data(), N, N); }, 3, 1));
    ms = std::min(ms, bestMs([&] { kk.sparse_gemm_panels(*sparse, X.data(), K, M, 0, P, panel.data(), Y.data(), N, N); }, 3, 1));
  }
  std::printf("kernels %s, pattern %s (%s), K %lld, N %lld, 1 thread\n", kk.isa, pattern.c_str(),
              sparse->sparse->pairs ? "pairs layout" : "mask form", static_cast<long long>(K), static_cast<long long>(N));
  std::printf("GEMV [1,K]:   dense %.4f ms (%.1f GB/s), sparse %.4f ms (%.1f GB/s, %.1f ps per weight), "
              "sparse / dense %.3f\n",
              gd, static_cast<double>(dense->bytes()) / gd / 1e6, gs, static_cast<double>(sparse->bytes()) / gs / 1e6,
              gs * 1e9 / static_cast<double>(K * N), gs / gd);
  std::printf("GEMM [128,K]: dense %.3f ms (%.1f GFLOPS), sparse %.3f ms, sparse / dense %.3f\n", md,
              2.0 * M * K * N / md / 1e6, ms, ms / md);
  return 0;
}
