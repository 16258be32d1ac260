// kernels_vnni_isa.h — the vector primitives of kernels_int8.inc for AVX-512 with VNNI (16 int32 lanes, vpdpbusd),
// included inside a namespace by the translation units compiled with those flags (kernels_vnni.cpp, and
// kernels_vnni_sparse.cpp with VBMI2 on top). Not a standalone header.
using VF = __m512;
using VI = __m512i;
constexpr int W = 16;
inline VF ZERO() { return _mm512_setzero_ps(); }
inline VF SET1(float f) { return _mm512_set1_ps(f); }
inline VF LOADF(const float* p) { return _mm512_loadu_ps(p); }
inline VF FMA(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF MUL(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF SUB(VF a, VF b) { return _mm512_sub_ps(a, b); }
inline float HSUM(VF v) { return _mm512_reduce_add_ps(v); }
inline VI ZEROI() { return _mm512_setzero_si512(); }
inline VI LOADI(const void* p) { return _mm512_loadu_si512(p); }
inline VI LOADI_PART(const void* p, int64_t bytes) {
  return _mm512_maskz_loadu_epi8(static_cast<__mmask64>((1ull << bytes) - 1), p);
}
// vpdpbusd in inline asm: GCC 12 copies the accumulator of _mm512_dpbusd_epi32 into a fresh register and back on every
// call in a loop (two extra moves per dot product, measured: the W8A8 prefill tile at ~fp32 speed); "+v" keeps it
// in place.
inline VI DOT_U8(VI acc, VI u, VI s) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}
inline VI DOT_NIBBLES(VI acc, VI lo, VI xa, VI hi, VI xb) { return DOT_U8(DOT_U8(acc, lo, xa), hi, xb); }
// Q8 weight registers go to vpdpbusd as stored: no preparation, no shift of the zero points.
using WQ8 = VI;
constexpr int kQ8Shift = 0;
inline WQ8 PREP_Q8(VI u) { return u; }
inline VI DOT_Q8(VI acc, WQ8 w, VI s) { return DOT_U8(acc, w, s); }
// acc + u . (the 4 signed bytes at p, broadcast to every lane): the activation operand straight from memory.
inline VI DOT_BCAST(VI acc, VI u, const int8_t* p) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}
inline VI NIBLO(VI v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
inline VI NIBHI(VI v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15)); }
inline VF CVTI(VI v) { return _mm512_cvtepi32_ps(v); }
inline VF HALVES(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline VF ABSF(VF v) { return _mm512_abs_ps(v); }
inline VF MAXF(VF a, VF b) { return _mm512_max_ps(a, b); }
inline float HMAXF(VF v) { return _mm512_reduce_max_ps(v); }
inline bool ANYNAN(VF v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
inline VI ROUNDI(VF v) { return _mm512_cvtps_epi32(v); }
inline VI ADDI(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline int SUMI(VI v) { return _mm512_reduce_add_epi32(v); }
inline void STOREQ(int8_t* p, const VI* q) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(q[0]));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 16), _mm512_cvtsepi32_epi8(q[1]));
}
inline VF FNMA(VF a, VF b, VF c) { return _mm512_fnmadd_ps(a, b, c); }
inline void HSUM4(VF a, VF b, VF c, VF d, float* out) {
  const VF ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));  // a0+a2 a1+a3 b0+b2 b1+b3
  const VF cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  VF t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));     // one 128-bit lane each
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
  _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t)));
}
inline float HALF1(uint16_t h) { return _cvtsh_ss(h); }
inline VF HALVES4(const uint16_t* p) {
  return _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VF BYTESF(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VI LANEIDX(int l) {
  return _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           __builtin_ctz(static_cast<unsigned>(l)));  // l is a power of two (W % l == 0)
}
inline VF PERMF(VF v, VI idx) { return _mm512_permutexvar_ps(idx, v); }
inline VF DIVF(VF a, VF b) { return _mm512_div_ps(a, b); }
inline VF MINF(VF a, VF b) { return _mm512_min_ps(a, b); }
inline VF NONAN(VF v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); }  // NaN lanes -> 0
inline __m128i HSUM4I(VI a, VI b, VI c, VI d) {  // the lane sums of four int32 vectors (HSUM4's network)
  const VI ab = _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x44), _mm512_shuffle_i32x4(a, b, 0xEE));
  const VI cd = _mm512_add_epi32(_mm512_shuffle_i32x4(c, d, 0x44), _mm512_shuffle_i32x4(c, d, 0xEE));
  VI t = _mm512_add_epi32(_mm512_shuffle_i32x4(ab, cd, 0x88), _mm512_shuffle_i32x4(ab, cd, 0xDD));
  t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
  t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
  return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t));
}
