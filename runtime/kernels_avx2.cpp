// kernels_avx2.cpp — AVX2 + FMA + F16C kernels (compiled with those flags; used only when the CPU has them).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "runtime/int8_acts.h"
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
// A centered Q4P weight (internal.h): VZ holds W zero points as int32 (U8TOZ: from W bytes), and NIBBLES_LESS is
// NIBBLES with zlo taken from each low nibble and zhi from each high one, in integers (exact) before the conversion.
// (Or-ing the nibbles into the mantissa of 2^23 and subtracting 2^23 + z as floats instead, with no conversion: 5%
// slower on Zen 3.)
using VZ = __m256i;
inline VZ U8TOZ(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
inline void NIBBLES_LESS(const uint8_t* p, VZ zlo, VZ zhi, VF& lo, VF& hi) {
  const __m256i v = U8TOZ(p);
  lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, _mm256_set1_epi32(15)), zlo));
  hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), zhi));
}
inline VF H2F(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void F2H(uint16_t* p, VF v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline VF I8TOF(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
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
  return _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_castsi256_ps(idx));  // a clear lane's index is -1: its sign
}
// The pairs layout (runtime/sparse.h): VP holds lane j's index nibble in its low bits; X4(p) the 4 floats at p in each
// 128-bit lane; PAIRIDX(words) the nibbles of W lanes (word j / 8, bits 4 * (j % 8)); PICK(x4, c) lane j = x4[c_j & 3]
// (vpermilps: within the lane, one cheap operation); NEXTIDX(c) plane b's index in the low bits.
using VP = __m256i;
inline VF X4(const float* p) { return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p)); }
inline VP PAIRIDX(const uint32_t* words) {
  return _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(*words)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
}
inline VF PICK(VF x4, VP c) { return _mm256_permutevar_ps(x4, c); }
inline VP NEXTIDX(VP c) { return _mm256_srli_epi32(c, 2); }
// 16 bytes -> 16 / W float vectors.
inline void B16TOF(__m128i v, VF* out) {
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
}
#include "runtime/kernels_simd.inc"

// Integer dot products (kernels_int8.inc) with maddubs: its int16 pair sums saturate above 32767, so bytes of 128
// and more are split into nibbles (each nibble's products are then at most 2 * 15 * 127).
using VI = __m256i;
inline VI ZEROI() { return _mm256_setzero_si256(); }
inline VI LOADI(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline VI LOADI_PART(const void* p, int64_t bytes) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_epi32(static_cast<const int*>(p), _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(bytes / 4)), lane));
}
// Both nibbles of a step at once: each maddubs pair sum is at most 2 * 15 * 128, so the two add in int16 before one
// madd widens them (two operations fewer than a madd each).
inline VI DOT_NIBBLES(VI acc, VI lo, VI xa, VI hi, VI xb) {
  const VI pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
inline VI NIBLO(VI v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
inline VI NIBHI(VI v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
inline VI DOT_U8(VI acc, VI u, VI s) {
  const VI lo = _mm256_maddubs_epi16(NIBLO(u), s), hi = _mm256_maddubs_epi16(NIBHI(u), s);
  return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_set1_epi16(1)),
                                                _mm256_madd_epi16(hi, _mm256_set1_epi16(16))));
}
// Q8 weights without the nibble split: the stored byte u minus 128 as a signed byte w, and w * s as |w| * sign(s, w):
// |w| <= 128 is a valid unsigned operand and sign(s, w) cannot overflow (|s| <= 127), so maddubs' pair sums stay
// within 2 * 128 * 127 < 32767, exact. Three operations per 32 products instead of DOT_U8's eight; the zero-point
// terms take z - kQ8Shift for the 128 taken off every weight. Zen 3, 1 thread, 128-token prefill of the synthetic
// model with int8 weights and int8 activations: see docs/benchmarks.md (eleventh session).
struct WQ8 {
  VI mag, sgn;
};
constexpr int kQ8Shift = 128;
inline WQ8 PREP_Q8(VI u) {
  const VI w = _mm256_xor_si256(u, _mm256_set1_epi8(-128));
  return {_mm256_abs_epi8(w), w};
}
inline VI DOT_Q8(VI acc, const WQ8& w, VI s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w.mag, _mm256_sign_epi8(s, w.sgn)), _mm256_set1_epi16(1)));
}
inline VF CVTI(VI v) { return _mm256_cvtepi32_ps(v); }
inline VF HALVES(const uint16_t* p) { return H2F(p); }
inline VF ABSF(VF v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }
inline VF MAXF(VF a, VF b) { return _mm256_max_ps(a, b); }
inline float HMAXF(VF v) { return HMAX(v); }
inline bool ANYNAN(VF v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
inline VI ROUNDI(VF v) { return _mm256_cvtps_epi32(v); }
inline VI ADDI(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline int SUMI(VI v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
inline void STOREQ(int8_t* p, const VI* q) {  // packs interleave 128-bit halves; the permute puts them in order
  const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}
inline VF FNMA(VF a, VF b, VF c) { return _mm256_fnmadd_ps(a, b, c); }
inline void HSUM4(VF a, VF b, VF c, VF d, float* out) {
  const VF t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // per 128-bit half: a b c d partial sums
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
inline float HALF1(uint16_t h) { return _cvtsh_ss(h); }
inline VF HALVES4(const uint16_t* p) {
  return _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VF BYTESF(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VI LANEIDX(int l) {
  return _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), __builtin_ctz(static_cast<unsigned>(l)));
}
inline VF PERMF(VF v, VI idx) { return _mm256_permutevar8x32_ps(v, idx); }
inline VF DIVF(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF MINF(VF a, VF b) { return _mm256_min_ps(a, b); }
inline VF NONAN(VF v) { return _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); }  // NaN lanes -> 0
inline __m128i HSUM4I(VI a, VI b, VI c, VI d) {  // the lane sums of four int32 vectors
  const VI t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}
// t + the int16 pair sums of unsigned bytes u and the 4 signed bytes at p broadcast to every lane (maddubs, with no
// widening: the Q4 lane-major prefill adds a whole chunk's pairs in int16, kernels_int8.inc), and the widening.
// One volatile asm: with intrinsics GCC 12 hoisted every maddubs of a chunk above the adds and spilled them all.
inline VI ADD_PAIRS16(VI t, VI u, const int8_t* p) {
  VI tmp;
  __asm__ volatile("vpbroadcastd %[x], %[tmp]\n\tvpmaddubsw %[tmp], %[u], %[tmp]\n\tvpaddw %[tmp], %[t], %[t]"
                   : [t] "+x"(t), [tmp] "=&x"(tmp)
                   : [u] "x"(u), [x] "m"(*reinterpret_cast<const int32_t*>(p)));
  return t;
}
inline VI WIDEN16(VI t) { return _mm256_madd_epi16(t, _mm256_set1_epi16(1)); }
// Both nibble halves of Q8 bytes against one broadcast: lo += lo-nibble pairs, hi += hi-nibble pairs; and their
// widening, 16 hi + lo.
inline void ADD_PAIRS16X2(VI& lo, VI& hi, VI ulo, VI uhi, const int8_t* p) {
  VI b, t;
  __asm__ volatile(
      "vpbroadcastd %[x], %[b]\n\tvpmaddubsw %[b], %[ulo], %[t]\n\tvpaddw %[t], %[lo], %[lo]\n\t"
      "vpmaddubsw %[b], %[uhi], %[b]\n\tvpaddw %[b], %[hi], %[hi]"
      : [lo] "+x"(lo), [hi] "+x"(hi), [b] "=&x"(b), [t] "=&x"(t)
      : [ulo] "x"(ulo), [uhi] "x"(uhi), [x] "m"(*reinterpret_cast<const int32_t*>(p)));
}
inline VI WIDEN16X2(VI hi, VI lo) {
  return _mm256_add_epi32(_mm256_madd_epi16(hi, _mm256_set1_epi16(16)), _mm256_madd_epi16(lo, _mm256_set1_epi16(1)));
}
#define CRT_INT8_PAIRS16
#include "runtime/kernels_int8.inc"
#undef CRT_INT8_PAIRS16
}  // namespace avx2

void gemmInt8Avx2(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  avx2::gemmInt8Simd(w, a, n0, n1, Y, ldy);
}
void quantizeChunkAvx2(const float* x, int n, int8_t* v, float* d, int* sum) { avx2::quantizeChunkSimd(x, n, v, d, sum); }
void quantizeChunkScaledAvx2(const float* x, int n, float s, int8_t* v, int* sum) {
  avx2::quantizeChunkScaledSimd(x, n, s, v, sum);
}

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
    s.tile_rows = avx2::kTileRows;
    s.converting_reads_tiled = avx2::kFirstTileRows == avx2::kTileRows;
    s.sparse_gemv = avx2::sparseGemvSimd;
    s.sparse_unpack_rows = avx2::sparseUnpackRowsSimd;
    s.sparse_gemm_panels = avx2::sparseGemmPanelsSimd;
    s.converting_gemm_panels = avx2::convertingGemmPanelsSimd;
    // bench/sparse.sh (Zen 3, 2 Dec 2026): fp32 at 50% nonzero decodes in 0.81-0.87x the dense time (the only
    // density measured, so nothing above it); int8 and int4 are slower sparse (their dense GEMVs are compute-bound
    // here and AVX2 has no byte expand), so auto never picks them.
    s.sparse_crossover[PackedWeight::F32] = 0.5f;
    s.gemm_i8 = gemmInt8Avx2;
    s.i8_width = avx2::W;
    s.i8_isa = "avx2";
    s.quantize_i8 = quantizeChunkAvx2;
    s.quantize_i8_scaled = quantizeChunkScaledAvx2;
    s.softmax = avx2::softmaxSimd;
    s.sigmoid = avx2::sigmoidSimd;
    s.kv_dot = avx2::kvDotSimd;
    s.kv_axpy = avx2::kvAxpySimd;
    s.half_to_float = avx2::halfToFloatSimd;
    s.float_to_half = avx2::floatToHalfSimd;
    return &s;
  }();
  return k;
}

}  // namespace crt::detail
