// fmapeak — this machine's fp32 FMA peak (GFLOPS) with N threads: independent fused multiply-add chains in
// registers (AVX-512 where the CPU has it, else AVX2+FMA), best of 3. bench/w8a8.sh rates fp32 prefill against it:
// a GEMM cannot beat it, which bounds what "x times ONNX Runtime's time" can reach when both are near it.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr long kIters = 50000000;

// Twelve independent chains: enough to cover the FMA latency on both pipes.
#define CHAINS(V, FMA, SET)                                                                                             \
  V a0 = SET(1.f), a1 = SET(1.1f), a2 = SET(1.2f), a3 = SET(1.3f), a4 = SET(1.4f), a5 = SET(1.5f), a6 = SET(1.6f),       \
    a7 = SET(1.7f), a8 = SET(1.8f), a9 = SET(1.9f), a10 = SET(2.f), a11 = SET(2.1f);                                     \
  const V b = SET(0.999999f), c = SET(1e-7f);                                                                           \
  for (long k = 0; k < kIters; ++k) {                                                                                   \
    a0 = FMA(a0, b, c), a1 = FMA(a1, b, c), a2 = FMA(a2, b, c), a3 = FMA(a3, b, c), a4 = FMA(a4, b, c);                  \
    a5 = FMA(a5, b, c), a6 = FMA(a6, b, c), a7 = FMA(a7, b, c), a8 = FMA(a8, b, c), a9 = FMA(a9, b, c);                  \
    a10 = FMA(a10, b, c), a11 = FMA(a11, b, c);                                                                         \
  }                                                                                                                     \
  volatile float sink = 0;                                                                                              \
  V s = FMA(a0, a1, FMA(a2, a3, FMA(a4, a5, FMA(a6, a7, FMA(a8, a9, FMA(a10, a11, c))))));                               \
  float out[sizeof(V) / 4];                                                                                             \
  std::memcpy(out, &s, sizeof(V));                                                                                      \
  sink = out[0];                                                                                                        \
  (void)sink;

__attribute__((target("avx512f"))) void chains512() { CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps) }
__attribute__((target("avx2,fma"))) void chains256() { CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps) }

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) return 1;
  const bool avx512 = __builtin_cpu_supports("avx512f");
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) ts.emplace_back([&] { avx512 ? chains512() : chains256(); });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, threads * kIters * 12.0 * 2 * (avx512 ? 16 : 8) / s / 1e9);
  }
  std::printf("%.1f\n", best);
}
