// kernels_avx2.cpp — AVX2 + FMA + F16C kernels (compiled with those flags; used only when the CPU has them).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/sparse.h"

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
inline void F2H(uint16_t* p, VF v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline VF MUL(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF SUB(VF a, VF b) { return _mm256_sub_ps(a, b); }
inline VF DIV(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF MAXV(VF a, VF b) { return _mm256_max_ps(a, b); }
inline VF MINV(VF a, VF b) { return _mm256_min_ps(a, b); }
inline VF ROUND(VF a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline VF POW2N(VF p, VF n) {  // p * 2^n for integral n in [-127, 127]
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline float HMAX(VF v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline VF ZERO_BELOW(VF x, VF t, VF v) { return _mm256_and_ps(v, _mm256_cmp_ps(x, t, _CMP_GE_OQ)); }
// Sparse forms: W floats from packed p, lane i taking the next value when bit i of m is set, else 0.
inline VF EXPANDF(uint32_t m, const float* p, const ExpandTables& t) {
  const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.lanes[m & 255]));
  const VF v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), idx);
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1))));
}
// 16 bytes -> 16 / W float vectors.
inline void B16TOF(__m128i v, VF* out) {
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
}
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
    s.gemm_panels = avx2::gemmPanelsSimd;
    s.sparse_gemv = avx2::sparseGemvSimd;
    s.sparse_unpack_rows = avx2::sparseUnpackRowsSimd;
    s.sparse_unpack_panel = avx2::sparseUnpackPanelSimd;
    // bench/sparse.sh (Zen 3, 2 Dec 2026): fp32 at 50% nonzero decodes in 0.81-0.87x the dense time (the only
    // density measured, so nothing above it); int8 and int4 are slower sparse (their dense GEMVs are compute-bound
    // here and AVX2 has no byte expand), so auto never picks them.
    s.sparse_crossover[PackedWeight::F32] = 0.5f;
    s.softmax = avx2::softmaxSimd;
    s.sigmoid = avx2::sigmoidSimd;
    s.half_to_float = avx2::halfToFloatSimd;
    s.float_to_half = avx2::floatToHalfSimd;
    return &s;
  }();
  return k;
}

}  // namespace crt::detail
