#include "runtime/matmul.h"
#include "runtime/op_geometry.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"
#include "runtime/sparse.h"
#include "runtime/thread_pool.h"

namespace crt::detail {
namespace {

constexpr int64_t kParallelMacs = 1 << 15;  // below this much work a MatMul runs on the calling thread
constexpr int64_t kGemvRows = 4;            // up to this many activation rows use the GEMV kernels
constexpr int64_t kGemmRows = 64;           // quantized/fp16 weight rows dequantized at a time for GEMM

int64_t tasksFor(const OpCtx& c, int64_t macs, int64_t maxTasks) {
  if (macs < kParallelMacs) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(c.env.pool->size(), maxTasks));
}

/// [begin, end) of part t of n split in `parts`, aligned to `align`.
void range(int64_t n, int64_t parts, int64_t t, int64_t align, int64_t& b, int64_t& e) {
  const int64_t chunks = (n + align - 1) / align;
  b = std::min(n, chunks * t / parts * align);
  e = std::min(n, chunks * (t + 1) / parts * align);
}

/// Splits N over the pool in 16-column ranges and calls gemm(b, e) for each.
template <typename F>
void splitColumns(OpCtx& c, int64_t M, int64_t N, int64_t K, F gemm) {
  const int64_t tasks = tasksFor(c, M * N * K, N / 16);
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(N, tasks, t, 16, b, e);
    if (e > b) gemm(b, e);
  });
}
}  // namespace

void matmulNT(OpCtx& c, int64_t M, int64_t N, int64_t K, const float* A, const float* W, float* Y) {
  splitColumns(c, M, N, K, [&](int64_t b, int64_t e) { c.env.k->gemm_nt(M, e - b, K, A, K, W + b * K, K, Y + b, N); });
}

void matmulNN(OpCtx& c, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* Y) {
  splitColumns(c, M, N, K, [&](int64_t b, int64_t e) { c.env.k->gemm_nn(M, e - b, K, A, K, B + b, N, Y + b, N); });
}

namespace {

/// X's rows for the panel GEMMs, with their whole tiles in the kernel set's tiled layout (PanelRows) where it has one
/// and X has two tiles or more: made once per MatMul, split over the pool, and then read by every task. Below two
/// tiles, with one weight panel, or where w's GEMM would not read them, the tiles read X directly.
PanelRows panelRowsFor(OpCtx& c, const PackedWeight& w, const float* X, int64_t ldx, int64_t rows, int64_t npanels) {
  const Kernels& k = *c.env.k;
  const int R = k.tile_rows;
  const int64_t K = w.K;
  // which GEMMs read them: the dense fp32 one, and those that convert their panels where the set's do (the pairs
  // layout's tiles read X in groups of 4 k)
  const bool reads = w.sparse ? !w.sparse->pairs && k.converting_reads_tiled
                              : w.kind == PackedWeight::F32 || k.converting_reads_tiled;
  if (R == 0 || !reads || rows < 2 * R || npanels < 2) return PanelRows{X, ldx};
  const int64_t tiles = rows / R;
  float* tiled = static_cast<float*>(c.scratch(tiles * R * K * sizeof(float)));
  const int64_t tasks = tasksFor(c, rows * K * kPanel, tiles);
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(tiles, tasks, t, 1, b, e);
    tileRows(X, ldx, K, R, b, e, tiled);
  });
  return PanelRows{X, ldx, tiled};
}

/// F32 weights: the panels serve GEMV (1 row) and GEMM alike; a sparse weight is read in its packed form for GEMV
/// and, for GEMM, expanded one panel at a time into the task's buffer by the panel's first row tile.
void panelMatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, float* Y) {
  const Kernels& k = *c.env.k;
  const int64_t N = w.N, K = w.K;
  const int64_t npanels = (N + kPanel - 1) / kPanel;
  const int64_t tasks = tasksFor(c, rows * N * K, npanels);
  const bool expand = w.sparse && rows > kGemvRows;
  const int64_t bufFloats = panelBufferFloats(w);
  float* bufs = expand ? static_cast<float*>(c.scratch(tasks * bufFloats * sizeof(float))) : nullptr;
  const PanelRows xr = panelRowsFor(c, w, X, K, rows, npanels);  // (a GEMV's few rows are never tiled)
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(npanels, tasks, t, w.sparse && !expand ? kMaskGroup : 1, b, e);  // (the sparse GEMV's mask groups whole)
    if (!w.sparse) return k.gemm_panels(xr, rows, static_cast<const float*>(w.w.data()), K, b, e, Y, N, N);
    if (expand) return k.sparse_gemm_panels(w, xr, rows, b, e, bufs + t * bufFloats, Y, N, N);
    // the task's whole panel range at once (the sparse GEMV interleaves panels)
    for (int64_t r = 0; r < rows; ++r) k.sparse_gemv(w, X + r * K, nullptr, b * kPanel, std::min(N, e * kPanel), Y + r * N);
  });
}

/// Q8P / Q4P / F16P weights, many rows: as a sparse F32 weight, each panel converted into the task's buffer by its first
/// row tile (Kernels::converting_gemm_panels). X has row stride ldx (its tiles read k < K of each row).
void convertingPanelMatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t ldx, int64_t rows, float* Y) {
  const Kernels& k = *c.env.k;
  const int64_t N = w.N, K = w.K;
  const int64_t npanels = (N + kPanel - 1) / kPanel;
  const int64_t tasks = tasksFor(c, rows * N * K, npanels);
  const int64_t bufFloats = panelBufferFloats(w);
  float* bufs = static_cast<float*>(c.scratch(tasks * bufFloats * sizeof(float)));
  const PanelRows xr = panelRowsFor(c, w, X, ldx, rows, npanels);
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(npanels, tasks, t, 1, b, e);
    if (e > b) k.converting_gemm_panels(w, xr, rows, b, e, bufs + t * bufFloats, Y, N, N);
  });
}

/// Q8/Q4 weights with int8 activations (runtime/int8_acts.h): the rows are quantized once (split over the pool),
/// then every task multiplies its range of weight rows with all of them in integer dot products. The rows are
/// quantized per 32-value chunk, or with the model's own scales (act_scale[m * stride], fuseQuantizedInputs).
void int8MatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, float* Y, const float* act_scale = nullptr,
                int64_t stride = 0) {
  const Kernels& k = *c.env.k;
  const auto gemm = w.sparse ? k.gemm_i8_sparse : k.gemm_i8;  // chooseInt8Activations checked it exists
  const int64_t N = w.N, K = w.K;
  Int8Acts a = int8ActsView(w, k.i8_width, rows, c.scratch(static_cast<size_t>(int8ActsBytes(w, k.i8_width, rows))));
  a.rowScale = act_scale != nullptr;
  const int64_t qtasks = rows >= 8 ? std::min<int64_t>(c.env.pool->size(), rows / 4) : 1;
  c.env.pool->parallelFor(qtasks, [&](int64_t t) {
    int64_t b, e;
    range(rows, qtasks, t, 1, b, e);
    if (act_scale) quantizeInt8RowsScaled(w, a, X, b, e, act_scale, stride, k.quantize_i8_scaled);
    else quantizeInt8Rows(w, a, X, b, e, k.quantize_i8);
  });
  const int64_t tasks = tasksFor(c, rows * N * K, N / 16);
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(N, tasks, t, 16, b, e);
    if (e > b) gemm(w, a, b, e, Y, N);
  });
}

/// X's rows in a quantized weight's padded block layout (row stride nblk * P, each block's padding zero) in scratch
/// memory, with the per-block sums of each row in *xsum where xsum is not null (the GEMV's zero-point term).
const float* paddedRows(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, float** xsum) {
  const int64_t K = w.K, Kp = w.nblk * w.P;
  float* xp = static_cast<float*>(c.scratch(rows * Kp * sizeof(float)));
  float* sums = xsum ? *xsum = static_cast<float*>(c.scratch(rows * w.nblk * sizeof(float))) : nullptr;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < w.nblk; ++b) {
      const int64_t valid = std::min(w.block, K - b * w.block);
      const float* src = X + r * K + b * w.block;
      float* dst = xp + r * Kp + b * w.P;
      std::copy(src, src + valid, dst);
      std::fill(dst + valid, dst + w.P, 0.f);
      if (!sums) continue;
      float s = 0;
      for (int64_t j = 0; j < valid; ++j) s += src[j];
      sums[r * w.nblk + b] = s;
    }
  return xp;
}

}  // namespace

void packedMatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, float* Y) {
  const Kernels& k = *c.env.k;
  const int64_t N = w.N, K = w.K;
  const bool quant = w.kind != PackedWeight::F16 && w.kind != PackedWeight::F16P;  // (F32 returned above)
  if (w.kind == PackedWeight::F32) return panelMatMul(c, w, X, rows, Y);
  if (w.int8) return int8MatMul(c, w, X, rows, Y);  // its fp32 scales are gone: never the exact kernels
  // The panel GEMM converts each panel whole (dequantized: no zero-point term) and reads k < K of each row: X as it is.
  if (rows > kGemvRows && w.panelOrdered()) return convertingPanelMatMul(c, w, X, K, rows, Y);
  const auto gemv = w.sparse ? k.sparse_gemv : k.gemv;
  const auto unpack = w.sparse ? k.sparse_unpack_rows : k.unpack_rows;

  // Activations in the weight's padded block layout (quantized weights), with per-block sums for the GEMV.
  const int64_t Kp = quant ? w.nblk * w.P : K;
  float* xsum = nullptr;
  const float* Xp = quant ? paddedRows(c, w, X, rows, rows <= kGemvRows ? &xsum : nullptr) : X;
  if (rows <= kGemvRows) {
    const int64_t tasks = tasksFor(c, rows * N * K, N / 16);
    c.env.pool->parallelFor(tasks, [&](int64_t t) {
      int64_t b, e;
      range(N, tasks, t, kPanel, b, e);
      for (int64_t r = 0; r < rows; ++r) gemv(w, Xp + r * Kp, quant ? xsum + r * w.nblk : nullptr, b, e, Y + r * N);
    });
    return;
  }
  // GEMM: each task dequantizes kGemmRows weight rows at a time into its own fp32 block and multiplies it
  // with Eigen (the dequantization is amortized over all activation rows; no full fp32 copy of the weight).
  const int64_t tasks = tasksFor(c, rows * N * K, (N + kGemmRows - 1) / kGemmRows);
  float* bufs = static_cast<float*>(c.scratch(tasks * kGemmRows * Kp * sizeof(float)));
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    int64_t b, e;
    range(N, tasks, t, 16, b, e);
    float* rowsBuf = bufs + t * kGemmRows * Kp;
    for (int64_t n0 = b; n0 < e; n0 += kGemmRows) {
      const int64_t n1 = std::min(e, n0 + kGemmRows);
      unpack(w, n0, n1, rowsBuf, Kp);
      k.gemm_nt(rows, n1 - n0, Kp, Xp, Kp, rowsBuf, Kp, Y + n0, N);
    }
  });
}

namespace {

/// A MatMul whose input the model quantizes (Node::act_quant, fuseQuantizedInputs) with `s`, one scale or one per row.
void quantizedInputMatMul(OpCtx& c, const PackedWeight& w, const float* X, int64_t rows, const Buf& s, const Shape& xs, float* Y) {
  if (s.dt != DType::F32 || (s.numel() != 1 && s.numel() != rows))
    c.bad("the input's quantization scale " + s.shape.str() + " is neither per tensor nor one per row of " + xs.str());
  const float* sc = s.as<float>();
  const int64_t stride = s.numel() == 1 ? 0 : 1;
  if (w.int8) return int8MatMul(c, w, X, rows, Y, sc, stride);
  // A weight left with exact kernels: QuantizeLinear -> DequantizeLinear by hand, then the float MatMul.
  float* xq = static_cast<float*>(c.scratch(static_cast<size_t>(rows * w.K) * sizeof(float)));
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < w.K; ++j) xq[m * w.K + j] = quantizeLinearInt8(X[m * w.K + j], sc[m * stride]) * sc[m * stride];
  packedMatMul(c, w, xq, rows, Y);
}

void packedOp(OpCtx& c, const PackedWeight& w, const Buf* bias) {
  const Buf& a = c.in(0);
  if (a.shape.rank == 0) c.bad("MatMul needs an input of rank >= 1");
  if (a.shape[a.shape.rank - 1] != w.K)
    c.bad("inner dimensions differ: input " + a.shape.str() + " against a weight with K = " + std::to_string(w.K));
  Shape os = a.shape;
  os[os.rank - 1] = w.N;
  const int64_t rows = a.numel() / std::max<int64_t>(w.K, 1);
  const float* X = floatData(c, a);
  FloatOut fo = floatOut(c, a.dt, os);
  float* Y = fo.p;
  if (w.K == 0) std::fill(Y, Y + os.numel(), 0.f);
  else if (c.node.act_quant) quantizedInputMatMul(c, w, X, rows, c.in(1), a.shape, Y);
  else packedMatMul(c, w, X, rows, Y);
  if (bias) {
    if (bias->numel() != w.N || bias->dt != DType::F32) c.bad("bias must be float32 with N values");
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < w.N; ++n) Y[r * w.N + n] += bias->as<float>()[n];
  }
  finish(fo);
}

}  // namespace

MatMulGeometry matmulGeometry(const OpCtx& c, const Buf& a, const Buf& b) {
  if (a.dt != b.dt) c.bad(std::string("input types differ: ") + dtypeName(a.dt) + " and " + dtypeName(b.dt));
  if (a.shape.rank == 0 || b.shape.rank == 0) c.bad("MatMul needs inputs of rank >= 1");
  // Promote 1-D operands as numpy.matmul does, then broadcast the batch dims.
  Shape as = a.shape, bs = b.shape;
  if (as.rank == 1) as = Shape{1, as[0]};
  if (bs.rank == 1) bs = Shape{bs[0], 1};
  MatMulGeometry m;
  const int64_t M = as[as.rank - 2], K = as[as.rank - 1], N = bs[bs.rank - 1];
  m.M = M, m.K = K, m.N = N;
  if (bs[bs.rank - 2] != K) c.bad("inner dimensions differ: " + a.shape.str() + " x " + b.shape.str());
  Shape ab = as, bb = bs;
  ab.rank -= 2;
  bb.rank -= 2;
  Shape& batch = m.batch;
  batch.rank = std::max(ab.rank, bb.rank);
  for (int i = 0; i < batch.rank; ++i) {
    int64_t x = i - (batch.rank - ab.rank) >= 0 ? ab[i - (batch.rank - ab.rank)] : 1;
    int64_t y = i - (batch.rank - bb.rank) >= 0 ? bb[i - (batch.rank - bb.rank)] : 1;
    if (x != y && x != 1 && y != 1) c.bad("batch dims of " + a.shape.str() + " and " + b.shape.str() + " do not broadcast");
    batch[i] = x == 1 ? y : x;
  }
  m.os = batch;
  if (a.shape.rank > 1) m.os.push(M);
  if (b.shape.rank > 1) m.os.push(N);
  // batch offsets by broadcasting strides over the batch dims
  int64_t acc = M * K;
  for (int i = batch.rank - 1; i >= 0; --i) {
    int j = i - (batch.rank - ab.rank);
    m.sa[i] = (j >= 0 && ab[j] != 1) ? acc : 0;
    if (j >= 0) acc *= ab[j];
  }
  acc = K * N;
  for (int i = batch.rank - 1; i >= 0; --i) {
    int j = i - (batch.rank - bb.rank);
    m.sb[i] = (j >= 0 && bb[j] != 1) ? acc : 0;
    if (j >= 0) acc *= bb[j];
  }
  return m;
}

void opMatMul(OpCtx& c) {
  if (c.node.packed) return packedOp(c, *c.node.packed, nullptr);
  const Buf& a = c.in(0);
  const Buf& b = c.in(1);
  const MatMulGeometry m = matmulGeometry(c, a, b);
  const int64_t M = m.M, N = m.N, K = m.K;
  const Shape& batch = m.batch;
  const float* A = floatData(c, a);
  const float* B = floatData(c, b);
  FloatOut fo = floatOut(c, a.dt, m.os);
  float* Y = fo.p;
  const int64_t nb = batch.numel();
  auto one = [&](int64_t i, bool inner_parallel) {
    int64_t oa = 0, ob = 0;
    m.offsets(i, oa, ob);
    if (inner_parallel) matmulNN(c, M, N, K, A + oa, B + ob, Y + i * M * N);
    else c.env.k->gemm_nn(M, N, K, A + oa, K, B + ob, N, Y + i * M * N, N);
  };
  if (nb >= c.env.pool->size() && nb > 1 && nb * M * N * K >= kParallelMacs) {
    c.env.pool->parallelFor(nb, [&](int64_t i) { one(i, false); });
  } else {
    for (int64_t i = 0; i < nb; ++i) one(i, true);
  }
  finish(fo);
}

void opMatMulNBits(OpCtx& c) {
  if (!c.node.packed) c.bad("weights must be constant initializers");
  packedOp(c, *c.node.packed, c.has(1) ? &c.in(1) : nullptr);
}

// ------------------------------------------------------------------------------------------- packing
namespace {

/// Sources of packQuant's values: rows of the weight (MatMulNBits' [N][blocks][blob]: one output's values in order) or
/// columns ([K, N] integers under a DequantizeLinear: one k's outputs in order).
enum class SourceOrder { ByOutput, ByK };

/// An empty Q8 / Q4 weight (internal.h) of N outputs over K in blocks of `block`, with each block's scale(n, b) and
/// zero point zp(n, b); its values (zero) are filled next.
template <typename S, typename Z>
std::shared_ptr<PackedWeight> quantWeight(int64_t N, int64_t K, int64_t block, int bits, S scale, Z zp) {
  auto w = std::make_shared<PackedWeight>();
  w->kind = bits == 4 ? PackedWeight::Q4 : PackedWeight::Q8;
  w->bits = bits;
  w->N = N;
  w->K = K;
  w->block = std::max<int64_t>(block, 1);
  w->nblk = K == 0 ? 1 : (K + w->block - 1) / w->block;
  w->P = (w->block + 31) / 32 * 32;
  w->w.resize(static_cast<size_t>(w->rowBytes() * N));
  w->scale.resize(N * w->nblk);
  w->zp.resize(N * w->nblk);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < w->nblk; ++b) {
      w->scale[n * w->nblk + b] = scale(n, b);
      w->zp[n * w->nblk + b] = zp(n, b);
    }
  return w;
}

/// Fills quantWeight's values from q(n, b, j), output n's value j of block b (k = b * block + j). A source by k is
/// read 64 outputs at a time, so each of its cache lines is read once.
template <typename Q>
void fillQuant(PackedWeight& w, SourceOrder order, Q q) {
  uint8_t* base = static_cast<uint8_t*>(w.w.data());
  const int64_t rowBytes = w.rowBytes(), tile = order == SourceOrder::ByK ? 64 : 1;
  for (int64_t n0 = 0; n0 < w.N; n0 += tile)
    for (int64_t b = 0; b < w.nblk; ++b) {
      const int64_t valid = std::min(w.block, w.K - b * w.block);
      for (int64_t j = 0; j < valid; ++j)
        for (int64_t n = n0; n < std::min(w.N, n0 + tile); ++n) {
          const int v = q(n, b, j);
          uint8_t* row = base + n * rowBytes;
          if (w.kind == PackedWeight::Q8) {
            row[b * w.P + j] = static_cast<uint8_t>(v);
          } else {  // chunks of 32 values, byte c holding value c low and c + 16 high
            uint8_t* chunk = row + (b * w.P + (j / 32) * 32) / 2;
            const int cj = static_cast<int>(j % 32);
            if (cj < 16) chunk[cj] = static_cast<uint8_t>((chunk[cj] & 0xF0) | (v & 0xF));
            else chunk[cj - 16] = static_cast<uint8_t>((chunk[cj - 16] & 0x0F) | ((v & 0xF) << 4));
          }
        }
    }
}

template <typename Q, typename S, typename Z>
std::shared_ptr<PackedWeight> packQuant(int64_t N, int64_t K, int64_t block, int bits, SourceOrder order, Q q, S scale, Z zp) {
  auto w = quantWeight(N, K, block, bits, scale, zp);
  fillQuant(*w, order, q);
  return w;
}

/// Unsigned value and offset of a quantized element type: stored value = raw + offset.
int quantOffset(DType t) { return t == DType::I8 ? 128 : t == kI4 ? 8 : 0; }
int quantBits(DType t) { return t == DType::I8 || t == DType::U8 ? 8 : 4; }

#if defined(__SSE2__)
/// One 16 x 16 block of transposeBytes: four rounds of SSE2 unpacks (bytes, then 2, 4 and 8 bytes at a time).
void transpose16(const uint8_t* src, int64_t srcStride, uint8_t* dst, int64_t dstStride, uint8_t flip) {
  const __m128i f = _mm_set1_epi8(static_cast<char>(flip));
  __m128i a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * srcStride)), f);
  for (int i = 0; i < 8; ++i) {  // b[2i], b[2i + 1]: columns 0-7, 8-15 of rows 2i and 2i + 1, a pair per column
    b[2 * i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // a[4i + q]: columns 4q..4q+3 of rows 4i..4i+3, four bytes per column
    a[4 * i] = _mm_unpacklo_epi16(b[4 * i], b[4 * i + 2]);
    a[4 * i + 1] = _mm_unpackhi_epi16(b[4 * i], b[4 * i + 2]);
    a[4 * i + 2] = _mm_unpacklo_epi16(b[4 * i + 1], b[4 * i + 3]);
    a[4 * i + 3] = _mm_unpackhi_epi16(b[4 * i + 1], b[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)  // b[8i + m]: columns 2m, 2m + 1 of rows 8i..8i+7, eight bytes per column
    for (int q = 0; q < 4; ++q) {
      b[8 * i + 2 * q] = _mm_unpacklo_epi32(a[8 * i + q], a[8 * i + 4 + q]);
      b[8 * i + 2 * q + 1] = _mm_unpackhi_epi32(a[8 * i + q], a[8 * i + 4 + q]);
    }
  for (int m = 0; m < 8; ++m) {  // columns 2m and 2m + 1, all 16 rows
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * m) * dstStride), _mm_unpacklo_epi64(b[m], b[8 + m]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * m + 1) * dstStride), _mm_unpackhi_epi64(b[m], b[8 + m]));
  }
}
#endif

/// dst[c * dstStride + r] = src[r * srcStride + c] ^ flip for r < rows, c < cols: a byte matrix transposed in blocks of
/// 16 x 16 (SSE2 where the build has it; the edges a byte at a time). A byte at a time down a column, the loader's
/// int8 packing wrote each destination line from 64 passes (0.29 s of an int8 model's 0.7 s load, and 0.18 s more to
/// turn the rows into panels the same way).
/// (Out of line: inlined into a caller's 512-byte tile, GCC warns that the edge loop may write past it.)
[[gnu::noinline]] void transposeBytes(const uint8_t* src, int64_t srcStride, uint8_t* dst, int64_t dstStride, int64_t rows, int64_t cols,
                                      uint8_t flip) {
  constexpr int64_t B = 16;
  int64_t rowsDone = 0;
#if defined(__SSE2__)
  for (; rowsDone + B <= rows; rowsDone += B)
    for (int64_t c0 = 0; c0 + B <= cols; c0 += B)
      transpose16(src + rowsDone * srcStride + c0, srcStride, dst + c0 * dstStride + rowsDone, dstStride, flip);
#endif
  const int64_t colsDone = cols / B * B;  // (in the rows done)
  for (int64_t r = 0; r < rows; ++r)  // what the blocks left: the last rows, and the last columns of the rows done
    for (int64_t c = r < rowsDone ? colsDone : 0; c < cols; ++c) dst[c * dstStride + r] = static_cast<uint8_t>(src[r * srcStride + c] ^ flip);
}

/// packQuant for 8-bit weights under a DequantizeLinear ([K, N] bytes, xor `flip`: int8 as int8 + 128): each block's
/// [valid, N] bytes transposed into the rows.
template <typename S, typename Z>
std::shared_ptr<PackedWeight> packQ8Columns(int64_t N, int64_t K, int64_t block, const uint8_t* bytes, uint8_t flip, S scale, Z zp) {
  auto w = quantWeight(N, K, block, 8, scale, zp);
  for (int64_t b = 0; b < w->nblk; ++b)
    transposeBytes(bytes + b * w->block * N, N, static_cast<uint8_t*>(w->w.data()) + b * w->P, w->rowBytes(),
                   std::min(w->block, K - b * w->block), N, flip);
  return w;
}

}  // namespace

std::shared_ptr<PackedWeight> packDense(const Buf& b, bool transposed, const SourceRows& source) {
  if (b.shape.rank != 2 || (b.dt != DType::F32 && b.dt != DType::F16)) return nullptr;
  const int64_t K = transposed ? b.shape[1] : b.shape[0], N = transposed ? b.shape[0] : b.shape[1];
  const size_t es = dtypeSize(b.dt);
  const int64_t rowLen = b.shape[1];  // values per source row: B's rows are k, W's are n
  // Source rows [r0, r0 + count): the tensor's own, or what `source` reads (a weight still in the model file).
  const auto rows = [&](int64_t r0, int64_t count) -> const uint8_t* {
    return source ? source(r0, count) : b.as<uint8_t>() + static_cast<size_t>(r0 * rowLen) * es;
  };
  // Rows read at a time from B [K, N]: about 1 MiB (each block is spread over every panel).
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, rowLen * static_cast<int64_t>(es)), 1, 64);
  auto w = std::make_shared<PackedWeight>();
  w->kind = b.dt == DType::F32 ? PackedWeight::F32 : PackedWeight::F16;
  w->bits = b.dt == DType::F32 ? 32 : 16;
  w->N = N;
  w->K = K;
  w->block = K;
  // The loops write each panel (fp32) or row (fp16) in order, a block of source rows at a time: new pages are filled
  // once, and a 110M-weight model packs in a fraction of the time a column scatter took.
  if (w->kind == PackedWeight::F32) {  // panels [ceil(N/kPanel)][K][kPanel], the last one zero padded
    const int64_t np = (N + kPanel - 1) / kPanel;
    w->w.resize(static_cast<size_t>(np * K * kPanel * 4));
    float* dst = static_cast<float*>(w->w.data());
    if (!transposed) {  // B [K, N]: row k's kPanel columns of each panel are contiguous
      for (int64_t k0 = 0; k0 < K; k0 += block) {
        const int64_t count = std::min(block, K - k0);
        const float* src = reinterpret_cast<const float*>(rows(k0, count));
        for (int64_t p = 0; p < np; ++p)
          for (int64_t k = k0; k < k0 + count; ++k)
            std::memcpy(dst + (p * K + k) * kPanel, src + (k - k0) * N + p * kPanel, static_cast<size_t>(std::min(kPanel, N - p * kPanel)) * 4);
      }
      return w;
    }
    for (int64_t p = 0; p < np; ++p) {  // W [N, K] (B's transpose): column j of panel p is row p * kPanel + j of W
      const int64_t cols = std::min<int64_t>(kPanel, N - p * kPanel);
      const float* src = reinterpret_cast<const float*>(rows(p * kPanel, cols));
      float* panel = dst + p * K * kPanel;
      for (int64_t k0 = 0; k0 < K; k0 += 64)
        for (int64_t j = 0; j < cols; ++j)
          for (int64_t k = k0; k < std::min(K, k0 + 64); ++k) panel[k * kPanel + j] = src[j * K + k];
    }
    return w;
  }
  w->w.resize(static_cast<size_t>(w->rowBytes() * N));  // F16 rows [N][K]
  uint16_t* dst = static_cast<uint16_t*>(w->w.data());
  if (transposed) {  // W [N, K] is the rows themselves
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
      const int64_t count = std::min<int64_t>(64, N - n0);
      std::memcpy(dst + n0 * K, rows(n0, count), static_cast<size_t>(count * K) * 2);
    }
    return w;
  }
  for (int64_t k0 = 0; k0 < K; k0 += block) {  // B [K, N]: each output's run of `block` k from one read
    const int64_t count = std::min(block, K - k0);
    const uint16_t* src = reinterpret_cast<const uint16_t*>(rows(k0, count));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = k0; k < k0 + count; ++k) dst[n * K + k] = src[(k - k0) * N + n];
  }
  return w;
}

std::shared_ptr<PackedWeight> packDequantize(const Buf& q, const Buf& scale, const Buf* zp, int64_t axis,
                                             int64_t block_size) {
  if (q.shape.rank != 2 || scale.dt != DType::F32) return nullptr;
  if (q.dt != DType::I8 && q.dt != DType::U8 && q.dt != kI4 && q.dt != kU4) return nullptr;
  if (zp && (zp->dt != q.dt || zp->numel() != scale.numel())) return nullptr;  // the op reports the mismatch
  const int64_t K = q.shape[0], N = q.shape[1];
  if (axis < 0) axis += 2;
  const int off = quantOffset(q.dt);
  const auto values = [&](int64_t blockSize) {  // q(n, b, j) at k = b * blockSize + j, for 4-bit values
    return [&q, N, off, blockSize](int64_t n, int64_t b, int64_t j) { return static_cast<int>(quantValue(q, (b * blockSize + j) * N + n) + off); };
  };
  // 8-bit values are transposed from the bytes (packQ8Columns), 4-bit ones read a value at a time.
  const auto pack = [&](int64_t blockSize, auto scaleOf, auto zpOf) {
    if (q.dt == DType::I8 || q.dt == DType::U8)
      return packQ8Columns(N, K, blockSize, q.as<uint8_t>(), q.dt == DType::I8 ? 0x80 : 0, scaleOf, zpOf);
    return packQuant(N, K, blockSize, quantBits(q.dt), SourceOrder::ByK, values(blockSize), scaleOf, zpOf);
  };
  const float* s = scale.as<float>();
  if (scale.numel() == 1) {  // per tensor
    const float z = static_cast<float>((zp ? quantValue(*zp, 0) : 0) + off);
    return pack(K, [&](int64_t, int64_t) { return s[0]; }, [&](int64_t, int64_t) { return z; });
  }
  if (axis == 1 && block_size == 0 && scale.numel() == N) {  // per output column
    return pack(K, [&](int64_t n, int64_t) { return s[n]; },
                [&](int64_t n, int64_t) { return static_cast<float>((zp ? quantValue(*zp, n) : 0) + off); });
  }
  if (block_size > K) block_size = std::max<int64_t>(K, 1);  // one block: the same weights, no overflow below
  if (axis == 0 && block_size > 0 && scale.shape.rank == 2 && scale.shape[1] == N &&
      scale.shape[0] == K / block_size + (K % block_size != 0)) {  // blocked along K
    return pack(block_size, [&](int64_t n, int64_t b) { return s[b * N + n]; },
                [&](int64_t n, int64_t b) { return static_cast<float>((zp ? quantValue(*zp, b * N + n) : 0) + off); });
  }
  return nullptr;
}

std::shared_ptr<PackedWeight> packMatMulNBits(const Node& node, const Buf& b, const Buf& scales, const Buf* zp) {
  const int64_t K = node.attrInt("K", 0), N = node.attrInt("N", 0), bits = node.attrInt("bits", 4),
                bs = node.attrInt("block_size", 0);
  const std::string where = node.where() + ": ";
  if (K <= 0 || N <= 0) fail(StatusCode::ModelError, where + "attributes K and N must be positive");
  if (bits != 2 && bits != 4 && bits != 8) fail(StatusCode::ModelError, where + "bits must be 2, 4 or 8, got " + std::to_string(bits));
  if (bs < 16 || bs > 65536 || (bs & (bs - 1))) fail(StatusCode::ModelError, where + "block_size must be a power of two in [16, 65536]");
  const int64_t nblk = K / bs + (K % bs != 0), blob = bs * bits / 8;
  int64_t nb = 0, nbBytes = 0;
  if (!checkedMul(N, nblk, &nb) || !checkedMul(nb, blob, &nbBytes) || nb > kMaxElements)
    fail(StatusCode::ModelError, where + "attributes N = " + std::to_string(N) + " and K = " + std::to_string(K) + " are too large");
  if (b.dt != DType::U8 || b.numel() != nbBytes)
    fail(StatusCode::ModelError, where + "B must be uint8 [N, n_blocks, blob] = [" + std::to_string(N) + ", " +
                                     std::to_string(nblk) + ", " + std::to_string(blob) + "], got " + b.shape.str());
  if (scales.dt != DType::F32 || scales.numel() != nb)
    fail(StatusCode::ModelError, where + "scales must be float32 with N * n_blocks values");
  const int64_t zpRow = (nblk * bits + 7) / 8;
  if (zp && zp->dt == DType::U8 && zp->numel() / std::max<int64_t>(zpRow, 1) != N)
    fail(StatusCode::ModelError, where + "packed zero_points must have N * ceil(n_blocks * bits / 8) bytes");
  if (zp && zp->dt == DType::U8 && zp->numel() % std::max<int64_t>(zpRow, 1) != 0)
    fail(StatusCode::ModelError, where + "packed zero_points must have N * ceil(n_blocks * bits / 8) bytes");
  if (zp && zp->dt == DType::F32 && zp->numel() != nb)
    fail(StatusCode::ModelError, where + "float zero_points must have N * n_blocks values");
  if (zp && zp->dt != DType::U8 && zp->dt != DType::F32)
    fail(StatusCode::ModelError, where + "zero_points must be uint8 (packed) or float32");
  const uint8_t* B = b.as<uint8_t>();
  const int mask = (1 << bits) - 1;
  auto bitsAt = [&](const uint8_t* p, int64_t i) {
    const int64_t bit = i * bits;
    return (p[bit / 8] >> (bit % 8)) & mask;
  };
  const float* s = scales.as<float>();
  const float defZp = static_cast<float>(1 << (bits - 1));
  auto w = quantWeight(N, K, bs, static_cast<int>(bits), [&](int64_t n, int64_t blk) { return s[n * nblk + blk]; },
                       [&](int64_t n, int64_t blk) -> float {
                         if (!zp) return defZp;
                         if (zp->dt == DType::F32) return zp->as<float>()[n * nblk + blk];
                         return static_cast<float>(bitsAt(zp->as<uint8_t>() + n * zpRow, blk));
                       });
  if (bits == 4 && K % bs == 0 && w->P == bs) {  // whole blocks of whole chunks: 16 bytes in, 16 out, per 32 values
    uint8_t* dst = static_cast<uint8_t*>(w->w.data());
    for (int64_t c = 0; c < N * nblk * bs / 32; ++c) {  // the file's byte i: values 2i low, 2i + 1 high
      const uint8_t* in = B + c * 16;
      for (int i = 0; i < 16; ++i) {
        const int lo = i % 2 ? in[i / 2] >> 4 : in[i / 2] & 0xF, hi = i % 2 ? in[8 + i / 2] >> 4 : in[8 + i / 2] & 0xF;
        dst[c * 16 + i] = static_cast<uint8_t>(lo | hi << 4);  // ours: values i low, i + 16 high
      }
    }
    return w;
  }
  fillQuant(*w, SourceOrder::ByOutput, [&](int64_t n, int64_t blk, int64_t j) { return bitsAt(B + (n * nblk + blk) * blob, j); });
  return w;
}

namespace {

/// F16 rows [N][K] to F16P panels [N/kPanel][K][kPanel] halves (zero past N).
void panelizeF16(PackedWeight& w) {
  AlignedBytes panels;
  panels.resize(static_cast<size_t>(panelCount(w) * w.K * kPanel * 2));  // (zeroed)
  const uint16_t* rows = static_cast<const uint16_t*>(w.w.data());
  uint16_t* out = static_cast<uint16_t*>(panels.data());
  for (int64_t n = 0; n < w.N; ++n) {
    uint16_t* col = out + (n / kPanel) * w.K * kPanel + n % kPanel;
    for (int64_t k = 0; k < w.K; ++k) col[k * kPanel] = rows[n * w.K + k];
  }
  w.w = std::move(panels);
  w.kind = PackedWeight::F16P;
}

/// A panel form's scales and zero points ([panel][nblk][kPanel]) in the fewest bytes that hold them exactly: zero
/// points that are all integers in [0, 255] as bytes, scales that are all fp16 values as fp16 (exports with
/// `scale_dtype: float16` write such scales), else floats. An int4-g32 decode of the synthetic model reads 82.1 MB
/// per token with both as floats, 71.9 MB with byte zero points, 65.0 MB with fp16 scales too; both convert to the
/// same floats, so the results do not change.
void setPanelParams(PackedWeight& w, std::vector<float> scale, std::vector<float> zp) {
  const bool zpBytes = std::all_of(zp.begin(), zp.end(), [](float z) { return z >= 0.f && z <= 255.f && z == std::floor(z); });
  const bool scaleHalves = std::all_of(scale.begin(), scale.end(), [](float s) { return halfToFloat(floatToHalf(s)) == s; });
  if (zpBytes) {
    w.zp8.resize(zp.size());
    std::transform(zp.begin(), zp.end(), w.zp8.begin(), [](float z) { return static_cast<uint8_t>(z); });
    w.zp = std::vector<float>();
  } else {
    w.zp = std::move(zp);
  }
  if (scaleHalves) {
    w.scale16.resize(scale.size());
    std::transform(scale.begin(), scale.end(), w.scale16.begin(), floatToHalf);
    w.scale = std::vector<float>();
  } else {
    w.scale = std::move(scale);
  }
}

}  // namespace

bool centerable(const PackedWeight& w) {
  if (w.w.size() == 0) return false;
  // Q4: the centered kernels cost the dense GEMV 17-20% on Zen 3 (bench/sparse_kernels), so only a weight that can take
  // the pairs layout takes them, for the pairs' bits; its nibbles less integral zero points of [0, 15] fit.
  if (w.kind == PackedWeight::Q4) return zeroPointsRepresentable(w) && rowPairsNonzeros(w) >= 0;
  if (w.kind != PackedWeight::Q8 || w.nblk != 1) return false;
  for (int64_t n = 0; n < w.N; ++n) {
    const float z = w.zp[n];
    if (!(z >= 0.f && z <= 255.f && z == std::floor(z))) return false;
    if (z == 128.f) continue;  // every byte less 128 fits (every symmetric int8 weight): no need to read the row
    const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
    const auto [lo, hi] = std::minmax_element(row, row + w.K);
    if (*lo - static_cast<int>(z) < -128 || *hi - static_cast<int>(z) > 127) return false;
  }
  return true;
}

namespace {

/// Q8 rows (one block) to Q8P panel rows [p][K][kPanel] bytes (zero past N), less each row's zero point when centered:
/// each panel's rows transposed (transposeBytes), then the zero points taken off a panel row at a time.
AlignedBytes q8PanelRows(const PackedWeight& w, bool center) {
  AlignedBytes panels;
  panels.resize(static_cast<size_t>(panelCount(w) * w.K * kPanel));
  for (int64_t p = 0; p < panelCount(w); ++p) {
    const int64_t cols = std::min(kPanel, w.N - p * kPanel);
    uint8_t* out = static_cast<uint8_t*>(panels.data()) + p * w.K * kPanel;
    transposeBytes(static_cast<const uint8_t*>(w.w.data()) + p * kPanel * w.rowBytes(), w.rowBytes(), out, kPanel, cols, w.K, 0);
    if (!center) continue;
    uint8_t z[kPanel] = {};
    for (int64_t j = 0; j < cols; ++j) z[j] = static_cast<uint8_t>(static_cast<int>(w.zp[p * kPanel + j]));
    for (int64_t k = 0; k < w.K; ++k)
      for (int64_t j = 0; j < kPanel; ++j) out[k * kPanel + j] = static_cast<uint8_t>(out[k * kPanel + j] - z[j]);
  }
  return panels;
}

/// Q4 rows (stored chunks of 32 elements, byte c holding element c low and c + 16 high) to Q4P panel rows [p][K]
/// [kPanel / 2] bytes (column j low, j + 16 high; zero past N). Per panel and chunk, the panel's 32 rows' 16 chunk
/// bytes are first transposed side by side (t[i][j]: row j's byte i), so that each of the chunk's k rows is written
/// once from two contiguous runs (or-ing a nibble at a time into a column took 2.5 ns per weight on Zen 3).
AlignedBytes q4PanelRows(const PackedWeight& w) {
  constexpr int64_t C = 32, H = kPanel / 2;  // elements per stored chunk, bytes per panel row
  const int64_t chunksPerBlock = w.P / C;
  AlignedBytes panels;
  panels.resize(static_cast<size_t>(panelCount(w) * w.K * H));
  for (int64_t p = 0; p < panelCount(w); ++p) {
    uint8_t* rows = static_cast<uint8_t*>(panels.data()) + p * w.K * H;
    const int64_t cols = std::min(kPanel, w.N - p * kPanel);
    for (int64_t b = 0; b < w.nblk; ++b)
      for (int64_t cb = 0; cb < chunksPerBlock; ++cb) {
        const int64_t k0 = b * w.block + cb * C, kv = std::min(C, std::min(w.block, w.K - b * w.block) - cb * C);
        if (kv <= 0) continue;  // (block padding)
        alignas(64) uint8_t t[C / 2][kPanel] = {};
        transposeBytes(static_cast<const uint8_t*>(w.w.data()) + p * kPanel * w.rowBytes() + (b * chunksPerBlock + cb) * (C / 2),
                       w.rowBytes(), &t[0][0], kPanel, cols, C / 2, 0);
        for (int64_t k = 0; k < kv; ++k) {
          const uint8_t* src = t[k % (C / 2)];
          const int shift = k < C / 2 ? 0 : 4;
          uint8_t* dst = rows + (k0 + k) * H;
          for (int64_t j = 0; j < H; ++j)
            dst[j] = static_cast<uint8_t>(((src[j] >> shift) & 0xF) | (((src[j + H] >> shift) & 0xF) << 4));
        }
      }
  }
  return panels;
}

}  // namespace

void setPanelForm(PackedWeight& w, AlignedBytes values, bool center) {
  const bool q8 = w.kind == PackedWeight::Q8;
  std::vector<float> scale(panelCount(w) * w.nblk * kPanel, 0.f), zp(scale.size(), 0.f);  // padding outputs: 0 and 0
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t b = 0; b < w.nblk; ++b) {
      const int64_t at = ((n / kPanel) * w.nblk + b) * kPanel + n % kPanel;
      scale[at] = w.scale[n * w.nblk + b];
      zp[at] = q8 && center ? 0.f : w.zp[n * w.nblk + b];
    }
  w.w = std::move(values);
  w.kind = q8 ? PackedWeight::Q8P : PackedWeight::Q4P;
  w.centered = center;
  setPanelParams(w, std::move(scale), std::move(zp));
}

bool panelize(PackedWeight& w, std::optional<bool> centered) {
  if (w.kind == PackedWeight::F16 && !w.device && w.w.size() > 0) return panelizeF16(w), true;
  const bool q8 = w.kind == PackedWeight::Q8 && w.nblk == 1;
  const bool q4 = w.kind == PackedWeight::Q4 && (w.nblk == 1 || w.block % 32 == 0);  // x in blocks is x itself
  if (!(q8 || q4) || w.int8 || w.sparse || w.device || w.w.size() == 0) return false;
  const bool center = centered ? *centered : centerable(w);  // (Q8: stored as signed bytes q - z; Q4: the nibbles as they are)
  setPanelForm(w, q8 ? q8PanelRows(w, center) : q4PanelRows(w), center);
  return true;
}

std::vector<Node*> weightNodes(Graph& g) {
  std::vector<Node*> nodes;
  std::set<const PackedWeight*> seen;
  for (Node& n : g.nodes)
    if (n.packed && seen.insert(n.packed.get()).second) nodes.push_back(&n);
  return nodes;
}

int choosePanelForms(Graph& g, const Kernels& k, ThreadPool* pool) {
  if (!k.converting_gemm_panels) return 0;
  const std::vector<Node*> nodes = weightNodes(g);
  std::vector<char> converted(nodes.size(), 0);
  forEachTask(pool, static_cast<int64_t>(nodes.size()),
              [&](int64_t i) { converted[i] = !nodes[i]->on_device && panelize(*nodes[i]->packed); });
  return static_cast<int>(std::count(converted.begin(), converted.end(), 1));
}

}  // namespace crt::detail
