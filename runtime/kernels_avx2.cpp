// kernels_avx2.cpp — AVX2 + FMA + F16C kernels (compiled with those flags; used only when the CPU has them).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "runtime/internal.h"
#include "runtime/kernels.h"

namespace crt::detail {
namespace gemm_avx2 {
void gemm_nt(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
void gemm_nn(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
}  // namespace gemm_avx2

namespace avx2 {
using VF = __m256;
constexpr int W = 8;
inline VF ZERO() { return _mm256_setzero_ps(); }
inline VF SET1(float f) { return _mm256_set1_ps(f); }
inline VF LOADF(const float* p) { return _mm256_loadu_ps(p); }
inline void STOREF(float* p, VF v) { _mm256_storeu_ps(p, v); }
inline VF FMA(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF ADD(VF a, VF b) { return _mm256_add_ps(a, b); }
inline float HSUM(VF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline VF U8TOF(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline void NIBBLES(const uint8_t* p, VF& lo, VF& hi) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}
inline VF H2F(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#include "runtime/kernels_simd.inc"
}  // namespace avx2

const Kernels* avx2Kernels() {
  static const Kernels* k = [] () -> const Kernels* {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return nullptr;
    static Kernels s;
    s.isa = "avx2";
    s.gemm_nt = gemm_avx2::gemm_nt;
    s.gemm_nn = gemm_avx2::gemm_nn;
    s.gemv = avx2::gemvSimd;
    s.unpack_rows = avx2::unpackSimd;
    return &s;
  }();
  return k;
}

}  // namespace crt::detail
