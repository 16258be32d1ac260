// matmul.h — MatMul on packed weights (GEMV for 1-4 rows, panel GEMM above) and on two activations (batched,
// broadcast), plus the packing of ONNX weight encodings into PackedWeight at load.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "runtime/internal.h"

namespace crt::detail {

void opMatMul(OpCtx& c);        // dynamic B, or node.packed
void opMatMulNBits(OpCtx& c);   // always packed at load

/// Y[M,N] = A[M,K] * W^T with W [N,K] row-major; threaded over N.
void matmulNT(OpCtx& c, int64_t M, int64_t N, int64_t K, const float* A, const float* W, float* Y);
/// Y[M,N] = A[M,K] * B[K,N]; threaded over N.
void matmulNN(OpCtx& c, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* Y);

/// Rows [r0, r0 + count) of a 2-D source tensor, contiguous (valid until the next call).
using SourceRows = std::function<const uint8_t*(int64_t r0, int64_t count)>;
/// Packs a constant B [K, N] (float32 or float16) for MatMul; with `transposed`, b is B's transpose W [N, K] (the
/// input of a weight's Transpose, packed without the transposed copy). With a `source`, b has only its type and
/// shape, and its rows come from source (a weight still in the model file, loader.cpp).
std::shared_ptr<PackedWeight> packDense(const Buf& b, bool transposed = false, const SourceRows& source = {});
/// Packs DequantizeLinear(q, scale, zp; axis, block_size) when q is [K, N] with per-tensor, per-output-column
/// (axis 1) or blocked-along-K (axis 0, block_size) parameters; nullptr for other layouts (the caller folds).
std::shared_ptr<PackedWeight> packDequantize(const Buf& q, const Buf& scale, const Buf* zp, int64_t axis,
                                             int64_t block_size);
/// Packs com.microsoft MatMulNBits constants; throws Failure(ModelError) on inconsistent inputs.
std::shared_ptr<PackedWeight> packMatMulNBits(const Node& n, const Buf& b, const Buf& scales, const Buf* zp);

/// Rearranges a dense Q8 weight per channel into Q8P panels, a Q4 weight per channel or in blocks of a multiple of
/// 32 into Q4P, or an F16 weight into F16P (internal.h), for exact compute; false (and nothing changed) for any other.
/// Centered where `centered` says, when the caller has checked centerable(w); else where centerable(w) is.
bool panelize(PackedWeight& w, std::optional<bool> centered = std::nullopt);
/// panelize's last step, also the Q8 / Q4 pairs' (which build their values from the rows: sparse.cpp, pairsFromRows): a
/// Q8 (one block) or Q4 weight still in rows takes `values` (its panel rows, or nothing) and its scales and zero points
/// in the panel layout, centered or not.
void setPanelForm(PackedWeight& w, AlignedBytes values, bool centered);
/// Whether panelize centers dense weight w (internal.h): a Q8 weight per channel whose values less their row's zero
/// point fit a signed byte, or a Q4 weight whose zero points are integers.
bool centerable(const PackedWeight& w);
/// At load, after the sparse and int8-activation choices: every weight that panelize takes, where the kernel set
/// has the kernels (Kernels::converting_gemm_panels). Returns the number converted. With a pool, over its threads.
int choosePanelForms(Graph& g, const Kernels& k, ThreadPool* pool = nullptr);
/// The nodes holding a packed weight, each weight once (its first node): the units of per-weight load work.
std::vector<Node*> weightNodes(Graph& g);

/// The GEMV/GEMM driver on packed weights: Y[rows, N] = X[rows, K] * W^T. Public for the kernel tests.
void packedMatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, float* Y);

}  // namespace crt::detail
