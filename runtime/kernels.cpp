// kernels.cpp — the portable scalar kernels (also the reference the SIMD ones are tested against) and
// the choice of kernel set by CPU features.
#include "runtime/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "runtime/int8_acts.h"
#include "runtime/internal.h"
#include "runtime/sparse.h"

namespace crt::detail {
namespace gemm_base {
void gemm_nt(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
void gemm_nn(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t);
}  // namespace gemm_base

namespace {

/// Stored value j (< P) of block b in a packed Q8/Q4 row.
inline int qAt(const PackedWeight& w, const uint8_t* row, int64_t b, int64_t j) {
  if (w.kind == PackedWeight::Q8) return row[b * w.P + j];
  const uint8_t* chunk = row + (b * w.P + (j / 32) * 32) / 2;
  const int c = static_cast<int>(j % 32);
  return c < 16 ? (chunk[c] & 0xF) : (chunk[c - 16] >> 4);
}

/// Output n of an F32 weight from its panel (the panel's column n % kPanel).
float dotPanelColumn(const float* panel, int64_t K, int64_t j, const float* x) {
  float s = 0;
  for (int64_t k = 0; k < K; ++k) s += x[k] * panel[k * kPanel + j];
  return s;
}

/// Output n of a Q8/Q4 weight from its packed row.
float dotQuantRow(const PackedWeight& w, const uint8_t* row, int64_t n, const float* x, const float* xsum) {
  float s = 0;
  for (int64_t b = 0; b < w.nblk; ++b) {
    float blk = 0;
    for (int64_t j = 0; j < w.P; ++j) blk += x[b * w.P + j] * static_cast<float>(qAt(w, row, b, j));
    s += w.scale[n * w.nblk + b] * (blk - w.zp[n * w.nblk + b] * xsum[b]);
  }
  return s;
}

void gemvScalar(const PackedWeight& w, const float* x, const float* xsum, int64_t n0, int64_t n1, float* y) {
  const int64_t K = w.K;
  for (int64_t n = n0; n < n1; ++n) {
    switch (w.kind) {
      case PackedWeight::F32:
        y[n] = dotPanelColumn(static_cast<const float*>(w.w.data()) + (n / kPanel) * K * kPanel, K, n % kPanel, x);
        break;
      case PackedWeight::F16: {
        const uint16_t* r = static_cast<const uint16_t*>(w.w.data()) + n * K;
        float s = 0;
        for (int64_t k = 0; k < K; ++k) s += x[k] * halfToFloat(r[k]);
        y[n] = s;
        break;
      }
      default:
        y[n] = dotQuantRow(w, static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes(), n, x, xsum);
    }
  }
}

/// Dequantizes one packed Q8/Q4 row into p (nblk * P floats, padding as zeros).
void unpackQuantRow(const PackedWeight& w, const uint8_t* row, int64_t n, float* p) {
  for (int64_t b = 0; b < w.nblk; ++b) {
    const int64_t valid = std::min(w.block, w.K - b * w.block);
    const float zp = w.zp[n * w.nblk + b], sc = w.scale[n * w.nblk + b];
    for (int64_t j = 0; j < w.P; ++j) p[b * w.P + j] = j < valid ? (static_cast<float>(qAt(w, row, b, j)) - zp) * sc : 0.f;
  }
}

void unpackScalar(const PackedWeight& w, int64_t n0, int64_t n1, float* panel, int64_t ldp) {
  for (int64_t n = n0; n < n1; ++n) {
    float* p = panel + (n - n0) * ldp;
    if (w.kind == PackedWeight::F32) {
      const float* src = static_cast<const float*>(w.w.data()) + (n / kPanel) * w.K * kPanel + n % kPanel;
      for (int64_t k = 0; k < w.K; ++k) p[k] = src[k * kPanel];
    } else if (w.kind == PackedWeight::F16) {
      const uint16_t* r = static_cast<const uint16_t*>(w.w.data()) + n * w.K;
      for (int64_t k = 0; k < w.K; ++k) p[k] = halfToFloat(r[k]);
    } else {
      unpackQuantRow(w, static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes(), n, p);
    }
  }
}

// The sparse form, as reference: each panel / row is converted back to the dense layout and then computed
// exactly as above.
void sparseGemvScalar(const PackedWeight& w, const float* x, const float* xsum, int64_t n0, int64_t n1, float* y) {
  std::vector<uint8_t> unit(static_cast<size_t>(w.kind == PackedWeight::F32 ? w.K * kPanel * 4 : w.rowBytes()));
  int64_t have = -1;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t u = w.kind == PackedWeight::F32 ? n / kPanel : n;
    if (u != have) sparseToDense(w, u, unit.data()), have = u;
    y[n] = w.kind == PackedWeight::F32 ? dotPanelColumn(reinterpret_cast<const float*>(unit.data()), w.K, n % kPanel, x)
                                       : dotQuantRow(w, unit.data(), n, x, xsum);
  }
}

void sparseUnpackRowsScalar(const PackedWeight& w, int64_t n0, int64_t n1, float* panel, int64_t ldp) {
  std::vector<uint8_t> row(static_cast<size_t>(w.rowBytes()));
  for (int64_t n = n0; n < n1; ++n) {
    sparseToDense(w, n, row.data());
    unpackQuantRow(w, row.data(), n, panel + (n - n0) * ldp);
  }
}


/// The int8-activation reference: per chunk an exact integer dot, scaled by the chunk's d, per block by s, less the
/// zero point's term (runtime/int8_acts.h's formula, term by term).
void gemmInt8Scalar(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) {
  const int64_t cpb = w.P / 32;
  const int lpc = int8LanesPerChunk(w.kind);
  std::vector<uint8_t> dense(w.sparse ? static_cast<size_t>(w.rowBytes()) : 0);
  for (int64_t m = 0; m < a.M; ++m) {
    const int8_t* q = a.qRow(m);
    const float* d = a.dRow(m);
    const float* bq = a.bqRow(m);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
      if (w.sparse) sparseToDense(w, n, dense.data()), row = dense.data();
      float y = 0.f;
      for (int64_t b = 0; b < w.nblk; ++b) {
        float bs = 0.f;
        for (int64_t cc = 0; cc < cpb; ++cc) {
          const int64_t c = b * cpb + cc;
          int32_t dot = 0;
          for (int j = 0; j < 32; ++j) dot += qAt(w, row, b, cc * 32 + j) * q[int8ActIndex(w.kind, a.W, c, j)];
          bs += d[c * lpc] * static_cast<float>(dot);
        }
        y += int8WeightScale(w, n, b) * (bs - static_cast<float>(w.zp8[n * w.nblk + b]) * bq[b]);
      }
      Y[m * ldy + n] = y;
    }
  }
}

void softmaxScalar(const float* x, float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = x + r * n;
    float* q = y + r * n;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j]);
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += (q[j] = std::exp(p[j] - m));
    const float inv = 1.f / s;
    for (int64_t j = 0; j < n; ++j) q[j] *= inv;
  }
}

void sigmoidScalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 1.f / (1.f + std::exp(-x[i]));
}

void panelsScalar(const PanelRows& rows, int64_t M, const float* panels, int64_t K, int64_t p0, int64_t p1, float* Y,
                  int64_t ldy, int64_t N) {
  const float* X = rows.x;
  const int64_t ldx = rows.ldx;
  for (int64_t p = p0; p < p1; ++p) {
    const float* P = panels + p * K * kPanel;
    const int64_t cols = std::min(kPanel, N - p * kPanel);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < cols; ++j) {
        float s = 0;
        for (int64_t k = 0; k < K; ++k) s += X[m * ldx + k] * P[k * kPanel + j];
        Y[m * ldy + p * kPanel + j] = s;
      }
  }
}

void sparsePanelsScalar(const PackedWeight& w, const PanelRows& X, int64_t M, int64_t p0, int64_t p1, float* buf, float* Y,
                        int64_t ldy, int64_t N) {
  for (int64_t p = p0; p < p1; ++p) {
    sparseToDense(w, p, buf);
    panelsScalar(X, M, buf, w.K, 0, 1, Y + p * kPanel, ldy, N - p * kPanel);
  }
}

void halfToFloatScalar(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = halfToFloat(x[i]);
}
void floatToHalfScalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = floatToHalf(x[i]);
}

void kvDotScalar(const float* q, const void* rows, const float* scales, int kind, int64_t T, int64_t D, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    float sum = 0.f;
    for (int64_t d = 0; d < D; ++d) sum += q[d] * kvRowValue(rows, kind, t * D + d);
    y[t] = kind == kKvRowsI8 ? sum * scales[t] : sum;
  }
}

void kvAxpyScalar(const float* p, const void* rows, const float* scales, int kind, int64_t T, int64_t D, float* y) {
  for (int64_t d = 0; d < D; ++d) y[d] = 0.f;
  for (int64_t t = 0; t < T; ++t) {
    const float w = kind == kKvRowsI8 ? p[t] * scales[t] : p[t];
    for (int64_t d = 0; d < D; ++d) y[d] += w * kvRowValue(rows, kind, t * D + d);
  }
}

Kernels makeScalar() {
  Kernels k;
  k.isa = "scalar";
  k.gemm_nt = gemm_base::gemm_nt;
  k.gemm_nn = gemm_base::gemm_nn;
  k.gemv = gemvScalar;
  k.unpack_rows = unpackScalar;
  k.gemm_panels = panelsScalar;
  k.sparse_gemv = sparseGemvScalar;
  k.sparse_unpack_rows = sparseUnpackRowsScalar;
  k.sparse_gemm_panels = sparsePanelsScalar;
  k.gemm_i8 = gemmInt8Scalar;
  k.gemm_i8_sparse = gemmInt8Scalar;
  k.i8_width = 16;
  k.i8_isa = "scalar";
  k.softmax = softmaxScalar;
  k.sigmoid = sigmoidScalar;
  k.kv_dot = kvDotScalar;
  k.kv_axpy = kvAxpyScalar;
  k.half_to_float = halfToFloatScalar;
  k.float_to_half = floatToHalfScalar;
  return k;
}

}  // namespace

float kvRowValue(const void* rows, int kind, int64_t i) {
  if (kind == kKvRowsF32) return static_cast<const float*>(rows)[i];
  if (kind == kKvRowsF16) return halfToFloat(static_cast<const uint16_t*>(rows)[i]);
  return static_cast<float>(static_cast<const int8_t*>(rows)[i]);
}

void tileRows(const float* X, int64_t ldx, int64_t K, int R, int64_t t0, int64_t t1, float* tiled) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* x = X + t * R * ldx;
    float* out = tiled + t * R * K;
    int64_t k = 0;
#if defined(__SSE2__)
    // four rows by four values at a time, transposed in registers: 2.4x the speed of the copy below (the synthetic
    // model's prefill packs 11.5 M values per run: 3.1 ms with that alone, 1 thread)
    if (R % 4 == 0)
      for (; k + 4 <= K; k += 4)
        for (int r = 0; r < R; r += 4) {
          __m128 a = _mm_loadu_ps(x + r * ldx + k), b = _mm_loadu_ps(x + (r + 1) * ldx + k),
                 c = _mm_loadu_ps(x + (r + 2) * ldx + k), d = _mm_loadu_ps(x + (r + 3) * ldx + k);
          _MM_TRANSPOSE4_PS(a, b, c, d);
          _mm_storeu_ps(out + k * R + r, a);
          _mm_storeu_ps(out + (k + 1) * R + r, b);
          _mm_storeu_ps(out + (k + 2) * R + r, c);
          _mm_storeu_ps(out + (k + 3) * R + r, d);
        }
#endif
    for (; k < K; ++k)
      for (int r = 0; r < R; ++r) out[k * R + r] = x[r * ldx + k];
  }
}

int64_t panelBufferFloats(const PackedWeight& w) {
  if (!w.sparse || !w.sparse->pairs) return w.K * kPanel;
  return pairGroups(w.K) * kPairGroup * kPanel + 64 / sizeof(float);
}

const Kernels& scalarKernels() {
  static const Kernels k = makeScalar();
  return k;
}

const Kernels& kernelsFor(bool simd) {
  if (simd) {
    if (const Kernels* k = amxKernels()) return *k;
    if (const Kernels* k = avx512Kernels()) return *k;
    if (const Kernels* k = avx2Kernels()) return *k;
  }
  return scalarKernels();
}

int64_t PackedWeight::bytes() const {
  const int64_t params = int8 ? N * nblk * 3 + static_cast<int64_t>(scale.size()) * 4  // (+ per-channel fp32 scales)
                              : static_cast<int64_t>((scale.size() + zp.size()) * 4 + scale16.size() * 2 + zp8.size());  // (Q8P/Q4P)
  return (sparse ? sparse->bytes() : rowBytes() * N) + params;
}

int64_t PackedWeight::rowBytes() const {
  switch (kind) {
    case F32: return K * 4;  // per output on average; the panels pad N to a multiple of kPanel
    case F16: return K * 2;
    case Q8: return nblk * P;
    case Q4: return nblk * P / 2;
    case Q8P: return K;  // per output on average, as F32
    case Q4P: return K / 2;
    case F16P: return K * 2;
  }
  return 0;
}

}  // namespace crt::detail
