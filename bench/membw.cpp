// membw — this machine's sustained memory read bandwidth (GB/s) with N threads: each thread sums its share
// of a 1 GiB buffer with AVX2 loads (SSE2 fallback); best of 5. Used by bench/runtime.sh to rate decode
// (GEMV) speed as a fraction of what the memory can deliver.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

__attribute__((target("avx2"))) static float sumAvx2(const char* p, size_t n) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  for (size_t i = 0; i < n; i += 64) {
    a = _mm256_add_ps(a, _mm256_load_ps(reinterpret_cast<const float*>(p + i)));
    b = _mm256_add_ps(b, _mm256_load_ps(reinterpret_cast<const float*>(p + i + 32)));
  }
  float o[8];
  _mm256_storeu_ps(o, _mm256_add_ps(a, b));
  return o[0];
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const size_t n = size_t(1) << 30;
  char* p = static_cast<char*>(std::aligned_alloc(64, n));
  if (!p || threads < 1) return 1;
  std::memset(p, 1, n);
  double best = 1e9;
  volatile float sink = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] { sink = sink + sumAvx2(p + n / threads * t, n / threads); });
    for (auto& t : ts) t.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("%.2f\n", n / best / 1e9);
  std::free(p);
  return 0;
}
