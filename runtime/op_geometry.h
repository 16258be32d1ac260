// op_geometry.h — the shapes and index maps of data-movement ops and MatMul, computed once for every backend:
// the CPU ops (ops.cpp, matmul.cpp) and the CUDA kernels (runtime/cuda/) read the same geometry, so the two
// cannot disagree about an attribute, a negative index or a broadcast. No LibTorch, no CUDA headers.
#pragma once

#include <vector>

#include "runtime/internal.h"

namespace crt::detail {

/// out[idx] = in[offset + sum idx[d] * st[d]] over the output shape `os` (elements).
struct StridedView {
  Shape os;
  int64_t st[kMaxRank] = {};
  int64_t offset = 0;
};
StridedView transposeView(const OpCtx& c, const Buf& x);
/// Whether v reads its input's elements in their memory order from its start (a transpose that moves only axes of
/// size 1, as a decode step's head transposes do; a slice or expand that keeps everything): a reshape, no copy.
bool viewKeepsOrder(const StridedView& v);
/// Slice of x with the node's starts/ends/axes/steps inputs (host integers).
StridedView sliceView(const OpCtx& c, const Buf& x);
/// Expand of x to the node's shape input (host integers): broadcast dims read with stride 0.
StridedView expandView(const OpCtx& c, const Buf& x);
/// Gather of x at the node's one index (input 1, host integers; checked in range): the selected slab, a strided view.
StridedView gatherView(const OpCtx& c, const Buf& x);

/// Concat: the output shape, and the output as [outer, os[axis] * inner] rows that each input fills a column
/// range of.
struct ConcatLayout {
  Shape os;
  int axis = 0;
  int64_t outer = 1, inner = 1;
};
ConcatLayout concatLayout(const OpCtx& c);

/// MatMul of two tensors (numpy.matmul): Y[batch][M, N] = A[batch][M, K] B[batch][K, N], with the batch dims
/// broadcast; sa/sb are each operand's element offset per unit of each batch dim (0 where broadcast).
struct MatMulGeometry {
  Shape os, batch;
  int64_t M = 0, N = 0, K = 0;
  int64_t sa[kMaxRank] = {}, sb[kMaxRank] = {};
  /// Offsets of batch i into A and B.
  void offsets(int64_t i, int64_t& oa, int64_t& ob) const {
    oa = 0, ob = 0;
    for (int d = batch.rank - 1; d >= 0; --d) {
      const int64_t idx = i % batch[d];
      i /= batch[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
  }
};
MatMulGeometry matmulGeometry(const OpCtx& c, const Buf& a, const Buf& b);

/// Split: each output's view of the input (checked: sizes from input 1 or the attribute, or equal parts; each in
/// [0, axis length], adding up to it).
std::vector<StridedView> splitViews(const OpCtx& c);

/// LayerNormalization: `outer` rows of `n` values (the axes from the node's axis on), epsilon, and whether the scale
/// (input 1) and bias (input 2, optional) hold one value for all (else one per value of a row); both checked.
struct LayerNormRows {
  int64_t outer = 1, n = 1;
  float eps = 1e-5f;
  bool scalarScale = false, hasBias = false, scalarBias = false;
};
LayerNormRows layerNormRows(const OpCtx& c);

}  // namespace crt::detail
