// kernels_amx_sparse.cpp — int8 activations on int8 weights in the sparse form (runtime/sparse.h) on a CPU with AMX and
// VBMI2: kernels_int8.inc's sparse kernel compiled once more with both, so that a prefill expands the packed nonzeros
// (vpexpandb, as kernels_vnni_sparse.cpp does) into dense rows and multiplies them on the AMX tiles as the dense form's
// prefill does (kernels_amx.cpp). Decode reads the sparse form directly, as on VNNI. Used only when the CPU has AMX
// and VBMI2 and the kernel grants this process the tile state (kernels_avx512.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"
#include "runtime/sparse.h"

namespace crt::detail {
namespace amx512_sparse {
#include "runtime/kernels_vnni_isa.h"
#define CRT_INT8_SPARSE
#include "runtime/kernels_int8.inc"
#undef CRT_INT8_SPARSE
}  // namespace amx512_sparse

void gemmInt8SparseAmx512(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  amx512_sparse::gemmInt8Sparse(w, a, n0, n1, Y, ldy);
}

}  // namespace crt::detail
