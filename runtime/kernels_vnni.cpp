// kernels_vnni.cpp — the int8-activation kernel with AVX-512 VNNI (vpdpbusd: 64 unsigned x signed byte products
// per instruction), compiled with those flags alone and used only when the CPU has them (kernels_avx512.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"

namespace crt::detail {
namespace vnni512 {
#include "runtime/kernels_vnni_isa.h"
#include "runtime/kernels_int8.inc"
}  // namespace vnni512

void gemmInt8Vnni512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  vnni512::gemmInt8Simd(w, a, n0, n1, Y, ldy);
}
void quantizeChunkAvx512(const float* x, int n, int8_t* v, float* d, int* sum) { vnni512::quantizeChunkSimd(x, n, v, d, sum); }
void quantizeChunkScaledAvx512(const float* x, int n, float s, int8_t* v, int* sum) {
  vnni512::quantizeChunkScaledSimd(x, n, s, v, sum);
}

}  // namespace crt::detail
