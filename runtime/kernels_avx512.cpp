// kernels_avx512.cpp — AVX-512 (F/BW/DQ/VL) kernels (compiled with those flags; used only when the CPU has them).
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/sparse.h"

namespace crt::detail {
namespace gemm_avx512 {
void gemm_nt(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
void gemm_nn(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
}  // namespace gemm_avx512

void gemmInt8Vnni512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy);  // kernels_vnni.cpp
void gemmInt8Amx512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy);   // kernels_amx.cpp
void gemmInt8Avx2(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy);  // kernels_avx2.cpp
void quantizeChunkAvx512(const float* x, int n, int8_t* v, float* d, int* sum);  // kernels_vnni.cpp
void gemmInt8SparseVnni512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy);  // kernels_vnni_sparse.cpp
void gemmInt8SparseAmx512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy);  // kernels_amx_sparse.cpp
void quantizeChunkAvx2(const float* x, int n, int8_t* v, float* d, int* sum);    // kernels_avx2.cpp
void quantizeChunkScaledAvx512(const float* x, int n, float s, int8_t* v, int* sum);  // kernels_vnni.cpp
void quantizeChunkScaledAvx2(const float* x, int n, float s, int8_t* v, int* sum);    // kernels_avx2.cpp

namespace avx512 {
using VF = __m512;
constexpr int W = 16;
inline VF ZERO() { return _mm512_setzero_ps(); }
inline VF SET1(float f) { return _mm512_set1_ps(f); }
inline VF LOADF(const float* p) { return _mm512_loadu_ps(p); }
inline void STOREF(float* p, VF v) { _mm512_storeu_ps(p, v); }
inline VF FMA(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VF ADD(VF a, VF b) { return _mm512_add_ps(a, b); }
inline float HSUM(VF v) { return _mm512_reduce_add_ps(v); }
inline VF U8TOF(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline void NIBBLES(const uint8_t* p, VF& lo, VF& hi) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}
// A centered Q4P weight (kernels_avx2.cpp says what these do).
using VZ = __m512i;
inline VZ U8TOZ(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void NIBBLES_LESS(const uint8_t* p, VZ zlo, VZ zhi, VF& lo, VF& hi) {
  const __m512i v = U8TOZ(p);
  lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(15)), zlo));
  hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), zhi));
}
inline VF H2F(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline void F2H(uint16_t* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline VF I8TOF(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VF MUL(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF SUB(VF a, VF b) { return _mm512_sub_ps(a, b); }
inline VF DIV(VF a, VF b) { return _mm512_div_ps(a, b); }
inline VF MAXV(VF a, VF b) { return _mm512_max_ps(a, b); }
inline VF MINV(VF a, VF b) { return _mm512_min_ps(a, b); }
inline VF ROUND(VF a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline VF POW2N(VF p, VF n) {  // p * 2^n for integral n in [-127, 127]
  __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
inline float HMAX(VF v) { return _mm512_reduce_max_ps(v); }
inline VF ZERO_BELOW(VF x, VF t, VF v) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, t, _CMP_GE_OQ), v); }
inline VF EXPANDF(uint32_t m, const float* p, const ExpandTables&) {
  // The register form: a memory-operand vexpandps (which GCC folds the load into) is microcoded on AMD Zen 4/5 (the
  // sparse fp32 GEMV ran at 2x the dense time with it). And in place: Zen 5 runs a zero-masked vexpandps as if it
  // merged into its destination, so with GCC's choice of destination each expansion waited on the last one that
  // wrote the same register (a GEMV step of 4 panels in L1: 6.3 ns with that chain, 3.7 ns in place).
  VF v = _mm512_loadu_ps(p);
  __asm__("vexpandps %0, %0%{%1%}%{z%}" : "+v"(v) : "Yk"(static_cast<__mmask16>(m)));
  return v;
}
// The pairs layout: as kernels_avx2.cpp's (the two index words of 16 lanes spread over their halves).
using VP = __m512i;
inline VF X4(const float* p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
inline VP PAIRIDX(const uint32_t* words) {
  const __m512i w = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                             _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(words))));
  return _mm512_srlv_epi32(w, _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28));
}
inline VF PICK(VF x4, VP c) { return _mm512_permutevar_ps(x4, c); }
inline VP NEXTIDX(VP c) { return _mm512_srli_epi32(c, 2); }
inline void B16TOF(__m128i v, VF* out) { out[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
#include "runtime/kernels_simd.inc"
}  // namespace avx512

const Kernels* avx512Kernels() {
  static const Kernels* k = [] () -> const Kernels* {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl"))
      return nullptr;
    static Kernels s;
    s.isa = "avx512";
    s.gemm_nt = gemm_avx512::gemm_nt;
    s.gemm_nn = gemm_avx512::gemm_nn;
    s.gemv = avx512::gemvSimd;
    s.unpack_rows = avx512::unpackSimd;
    s.gemm_panels = avx512::gemmPanelsSimd;
    s.tile_rows = avx512::kTileRows;
    s.converting_reads_tiled = avx512::kFirstTileRows == avx512::kTileRows;
    s.sparse_gemv = avx512::sparseGemvSimd;
    s.sparse_unpack_rows = avx512::sparseUnpackRowsSimd;
    s.sparse_gemm_panels = avx512::sparseGemmPanelsSimd;
    s.converting_gemm_panels = avx512::convertingGemmPanelsSimd;
    // Exact compute: fp32 at 50% decodes in about 0.6-0.8x the dense time since the expansion reads its values from
    // a register (bench/sparse.sh, Zen 5, third session of 6 Dec 2026; 2x before); int8 and int4 stay dense (1.7-2.3x
    // and 2.3-4.2x with 1 thread: AVX-512 without VBMI2's byte expansion emulates it), so auto keeps them dense.
    s.sparse_crossover[PackedWeight::F32] = 0.5f;
    // Integer dot products: AVX-512 VNNI where the CPU has it (Zen 4/5, Ice Lake and later), else AVX2's maddubs.
    if (__builtin_cpu_supports("avx512vnni")) {
      s.gemm_i8 = gemmInt8Vnni512;
      s.i8_width = 16;
      s.i8_isa = "avx512-vnni";
      s.quantize_i8 = quantizeChunkAvx512;
      s.quantize_i8_scaled = quantizeChunkScaledAvx512;
      if (__builtin_cpu_supports("avx512vbmi2")) {  // byte expansion
        s.gemm_i8_sparse = gemmInt8SparseVnni512;
        // bench/sparse.sh (Zen 5, 6 Dec 2026): int8 at 50% and 2:4 with int8 activations decodes in about 0.7x the
        // dense int8 time (the only density measured, so nothing above it). Int4 in the int8-lanes form does not pay
        // at decode (50% and 2:4: 1.03-1.05x the dense int4 time with 1 and 2 threads on the Intel Xeon VM, 8 Dec 2026:
        // two byte expansions and a fill per 128 weights cost what the 16-20% fewer bytes save), so auto keeps int4
        // dense; `--sparse on` takes it (a fifth less memory).
        s.sparse_crossover_i8[PackedWeight::Q8] = 0.5f;
      }
    } else {
      s.gemm_i8 = gemmInt8Avx2;
      s.i8_width = 8;
      s.i8_isa = "avx2";
      s.quantize_i8 = quantizeChunkAvx2;
      s.quantize_i8_scaled = quantizeChunkScaledAvx2;
    }
    s.softmax = avx512::softmaxSimd;
    s.sigmoid = avx512::sigmoidSimd;
    s.kv_dot = avx512::kvDotSimd;
    s.kv_axpy = avx512::kvAxpySimd;
    s.half_to_float = avx512::halfToFloatSimd;
    s.float_to_half = avx512::floatToHalfSimd;
    return &s;
  }();
  return k;
}

namespace {

/// Whether this process may use the AMX tile data: Linux grants it on request (arch_prctl ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA, once per process; a kernel before 5.16 or a hypervisor that hides the state refuses).
/// CRT_AMX=0 in the environment keeps the VNNI kernels (A/B measurements).
bool amxUsable() {
  // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8 (read directly: clang 14's __builtin_cpu_supports has no
  // names for them)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  constexpr unsigned kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
  if ((edx & kAmxTile) == 0 || (edx & kAmxInt8) == 0) return false;
  if (const char* env = std::getenv("CRT_AMX"); env && std::strcmp(env, "0") == 0) return false;
#ifdef SYS_arch_prctl
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

}  // namespace

const Kernels* amxKernels() {
  static const Kernels* k = [] () -> const Kernels* {
    const Kernels* base = avx512Kernels();
    if (!base || base->gemm_i8 != gemmInt8Vnni512 || !amxUsable()) return nullptr;
    static Kernels s = *base;
    s.isa = "avx512-amx";
    // Prefill with int8 activations on AMX tiles (kernels_amx.cpp), the rest as the VNNI set (the same bits: the
    // tiles' integer sums are VNNI's and are scaled in the VNNI kernels' order).
    s.gemm_i8 = gemmInt8Amx512;
    // The sparse form's prefill on the tiles too, where the CPU has VBMI2's byte expansion (its VNNI prefill had
    // become 1.34-1.41x the dense one once the dense one took the tiles; the same bits either way).
    if (base->gemm_i8_sparse == gemmInt8SparseVnni512) s.gemm_i8_sparse = gemmInt8SparseAmx512;
    s.i8_isa = "avx512-amx";
    return &s;
  }();
  return k;
}

}  // namespace crt::detail
