// kernels_amx.cpp — the int8-activation kernels with AMX (Intel Sapphire Rapids and later: tdpbsud on 16 x 64-byte
// tiles) on top of AVX-512 VNNI: kernels_int8.inc compiled once more with the AMX flags, where gemmInt8From sends
// prefill of 16+ activation rows to the tiles (W8A8's row-scaled activations on per-channel int8 weights:
// gemmInt8Amx; per-chunk activation scales on int8/int4 weights: gemmInt8AmxChunks) and everything else to the VNNI
// kernels. Used only when the CPU has AMX and the kernel grants this process the tile state (kernels_avx512.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"

namespace crt::detail {
namespace amx512 {
#include "runtime/kernels_vnni_isa.h"
#include "runtime/kernels_int8.inc"
}  // namespace amx512

void gemmInt8Amx512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  amx512::gemmInt8Simd(w, a, n0, n1, Y, ldy);
}

}  // namespace crt::detail
