// kernels_vnni_sparse.cpp — int8 activations on int8 weights kept in the sparse form (runtime/sparse.h): the packed
// nonzeros are expanded in registers with AVX-512 VBMI2 (vpexpandb, over the zero points) and meet the activations
// in vpdpbusd, so a decode step reads the mask and the nonzeros only and gives the dense int8 kernel's bits.
// Compiled with VNNI and VBMI2 (its own translation unit, so that nothing else picks VBMI2 up) and used only when
// the CPU has both (kernels_avx512.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"
#include "runtime/sparse.h"

namespace crt::detail {
namespace vnni512_sparse {
#include "runtime/kernels_vnni_isa.h"
#define CRT_INT8_SPARSE
#include "runtime/kernels_int8.inc"
#undef CRT_INT8_SPARSE
}  // namespace vnni512_sparse

void gemmInt8SparseVnni512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  vnni512_sparse::gemmInt8Sparse(w, a, n0, n1, Y, ldy);
}

}  // namespace crt::detail
