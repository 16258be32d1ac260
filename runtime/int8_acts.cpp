// int8_acts.cpp — quantizing activation rows to int8 in the layout of runtime/int8_acts.h (the portable chunk
// quantizer is the definition; each kernel set's SIMD one gives its bits, so the integer inputs are the same
// whichever kernels run), and the load-time choice of the weights that use it.
#include "runtime/int8_acts.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/kernels.h"
#include "runtime/sparse.h"

namespace crt::detail {
namespace {

int64_t align64(int64_t b) { return (b + 63) / 64 * 64; }

/// Round to nearest even (the default MXCSR mode, as std::nearbyint) in one instruction; x86-64's baseline SSE.
inline int roundToInt(float v) { return _mm_cvtss_si32(_mm_set_ss(v)); }

/// One row: chunk scales d (lane-expanded), values q, and per block bq; `chunk(x, n, v, &d, &sum)` quantizes 32 values.
template <typename ChunkFn>
void quantizeRow(const PackedWeight& w, int W, ChunkFn chunk, const float* x, int8_t* q, float* d, float* bq) {
  const int64_t cpb = w.P / 32;
  const int lpc = int8LanesPerChunk(w.kind);
  for (int64_t b = 0; b < w.nblk; ++b) {
    float bsum = 0.f;
    for (int64_t cc = 0; cc < cpb; ++cc) {
      const int64_t c = b * cpb + cc, k0 = b * w.block + cc * 32;
      const int n = static_cast<int>(std::clamp<int64_t>(std::min(w.block - cc * 32, w.K - k0), 0, 32));
      alignas(32) int8_t v[32];
      float dc;
      int sum;
      chunk(x + k0, n, v, &dc, &sum);
      std::memcpy(q + int8ActIndex(w.kind, W, c, 0), v, 16);
      std::memcpy(q + int8ActIndex(w.kind, W, c, 16), v + 16, 16);
      for (int i = 0; i < lpc; ++i) d[c * lpc + i] = dc;
      bsum += dc * static_cast<float>(sum);
    }
    bq[b] = bsum;
  }
}

}  // namespace

void quantizeInt8Chunk(const float* x, int n, int8_t* v, float* d, int* sum) {
  float amax = 0.f;
  bool nan = false;
  for (int j = 0; j < n; ++j) {
    const float a = std::fabs(x[j]);
    amax = std::max(amax, a);
    nan |= a != a;
  }
  const float dc = nan ? std::numeric_limits<float>::quiet_NaN() : amax / 127.f;  // a NaN reaches y through d
  const float id = int8InverseScale(dc);
  int s = 0;
  for (int j = 0; j < 32; ++j) {
    v[j] = j < n ? static_cast<int8_t>(std::clamp(roundToInt(x[j] * id), -127, 127)) : 0;
    s += v[j];
  }
  *d = dc;
  *sum = s;
}

int64_t bqStride(const PackedWeight& w) { return (w.nblk + 15) / 16 * 16; }

int64_t int8ActsBytes(const PackedWeight& w, int W, int64_t M) {
  const int64_t steps = int8Steps(w, W);
  return align64(M * steps * int8StepBytes(w.kind, W)) + align64(M * steps * W * 4) + align64(M * bqStride(w) * 4) +
         align64(M);
}

Int8Acts int8ActsView(const PackedWeight& w, int W, int64_t M, void* mem) {
  Int8Acts a;
  a.W = W;
  a.M = M;
  a.steps = int8Steps(w, W);
  a.stepBytes = int8StepBytes(w.kind, W);
  a.nblk = w.nblk;
  a.bqStride = bqStride(w);
  uint8_t* p = static_cast<uint8_t*>(mem);
  a.q = reinterpret_cast<int8_t*>(p);
  a.d = reinterpret_cast<float*>(p + align64(M * a.steps * a.stepBytes));
  a.bq = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(a.d) + align64(M * a.steps * W * 4));
  a.min128 = reinterpret_cast<uint8_t*>(a.bq) + align64(M * a.bqStride * 4);
  return a;
}

namespace {

/// Rows [m0, m1), each with chunkFor(m) as its chunk quantizer; the padding up to whole steps is zero.
template <typename ChunkFor>
void quantizeRows(const PackedWeight& w, const Int8Acts& a, const float* X, int64_t m0, int64_t m1, ChunkFor chunkFor) {
  for (int64_t m = m0; m < m1; ++m) {
    int8_t* q = a.q + m * a.steps * a.stepBytes;
    float* d = a.d + m * a.steps * a.W;
    std::memset(q, 0, static_cast<size_t>(a.steps * a.stepBytes));
    std::fill(d, d + a.steps * a.W, 0.f);
    float* bq = a.bq + m * a.bqStride;
    std::fill(bq + w.nblk, bq + a.bqStride, 0.f);
    quantizeRow(w, a.W, chunkFor(m), X + m * w.K, q, d, bq);
    a.min128[m] = std::memchr(q, 0x80, static_cast<size_t>(a.steps * a.stepBytes)) != nullptr;
  }
}

}  // namespace

void quantizeInt8Rows(const PackedWeight& w, const Int8Acts& a, const float* X, int64_t m0, int64_t m1, Int8ChunkFn chunk) {
  quantizeRows(w, a, X, m0, m1, [&](int64_t) { return chunk ? chunk : quantizeInt8Chunk; });
}

void quantizeInt8ChunkScaled(const float* x, int n, float s, int8_t* v, int* sum) {
  int total = 0;
  for (int j = 0; j < 32; ++j) {
    v[j] = j < n ? quantizeLinearInt8(x[j], s) : 0;
    total += v[j];
  }
  *sum = total;
}

void quantizeInt8RowsScaled(const PackedWeight& w, const Int8Acts& a, const float* X, int64_t m0, int64_t m1,
                            const float* scale, int64_t stride, Int8ScaledChunkFn chunk) {
  const Int8ScaledChunkFn f = chunk ? chunk : quantizeInt8ChunkScaled;
  quantizeRows(w, a, X, m0, m1, [&](int64_t m) {
    const float s = scale[m * stride];
    return [s, f](const float* x, int n, int8_t* v, float* d, int* sum) {
      f(x, n, s, v, sum);
      *d = s;
    };
  });
}

Int8Acts quantizeInt8Acts(const PackedWeight& w, int W, const float* X, int64_t M, void* mem) {
  Int8Acts a = int8ActsView(w, W, M, mem);
  quantizeInt8Rows(w, a, X, 0, M);
  return a;
}

bool int8Asked(const Node& n, Int8Activations mode) {
  return mode == Int8Activations::On || (mode == Int8Activations::Model && n.act_quant) ||
         (mode == Int8Activations::Model && n.op == "MatMulNBits" && n.attrInt("accuracy_level", 0) == kInt8AccuracyLevel);
}

bool int8ParamsFit(const PackedWeight& w) {
  if (w.int8) return true;
  constexpr float kHalfMinNormal = 6.103515625e-05f, kHalfMax = 65504.f;
  for (size_t i = 0; i < w.scale.size(); ++i) {
    const float s = std::fabs(w.scale[i]), z = w.zp[i];
    if (!(s <= kHalfMax) || (s != 0.f && s < kHalfMinNormal)) return false;  // fp16 would lose more than 2^-11
    if (!(z >= 0.f && z <= 255.f) || z != std::floor(z)) return false;       // a fractional MatMulNBits zero point
  }
  return true;
}

bool enableInt8(PackedWeight& w) {
  if (w.int8) return true;
  if (!int8ParamsFit(w)) return false;
  const size_t n = w.scale.size();
  std::vector<uint16_t> s16(n + kInt8ParamPad, 0);
  std::vector<uint8_t> z8(n + kInt8ParamPad, 0);
  for (size_t i = 0; i < n; ++i) {
    const float z = w.zp[i];
    s16[i] = floatToHalf(w.scale[i]);
    z8[i] = static_cast<uint8_t>(z);
  }
  w.scale16 = std::move(s16);
  w.zp8 = std::move(z8);
  if (w.nblk > 1) w.scale = std::vector<float>();
  w.zp = std::vector<float>();
  w.int8 = true;
  return true;
}

bool int8Capable(const PackedWeight& w, const Kernels& k) {
  // (a sparse int4 weight in the masks form keeps exact compute; the int8-lanes form is the 16-lane int8 kernels')
  const bool sparseForm = !w.sparse || w.kind == PackedWeight::Q8 || (w.sparse->int8Lanes && k.i8_width == kInt8LanesWidth);
  return (w.kind == PackedWeight::Q8 || w.kind == PackedWeight::Q4) && (w.sparse ? k.gemm_i8_sparse : k.gemm_i8) &&
         sparseForm && int8ScaleMode(w, k.i8_width) != Int8ScaleMode::Unsupported;
}

namespace {

/// The node of type `op` (default domain) that computes value v, or null.
const Node* producerOf(const Graph& g, int v, const char* op) {
  const int p = v >= 0 ? g.values[v].producer : -1;
  if (p < 0) return nullptr;
  const Node& n = g.nodes[p];
  return n.op == op && n.domain.empty() ? &n : nullptr;
}

/// A QuantizeLinear whose integers are int8 with zero point 0: no zero point and output_dtype int8, int8 zeros, or
/// uint8 128s (saturating to [0, 255] and subtracting 128 gives the same integers as int8 with zero point 0).
bool int8ZeroPoint(const Graph& g, const Node& qn) {
  if (qn.in.size() < 3 || qn.in[2] < 0) return qn.attrInt("output_dtype", 0) == 3;  // onnx.TensorProto INT8
  const Value& z = g.values[qn.in[2]];
  if (!z.is_const || (z.constant.dt != DType::I8 && z.constant.dt != DType::U8)) return false;
  const int64_t want = z.constant.dt == DType::I8 ? 0 : 128;
  for (int64_t i = 0; i < z.constant.numel(); ++i)
    if (quantValue(z.constant, i) != want) return false;
  return true;
}

}  // namespace

int fuseQuantizedInputs(Graph& g, Int8Activations mode, const Kernels& k) {
  if (mode == Int8Activations::Off) return 0;
  int fused = 0;
  for (Node& n : g.nodes) {
    if (!n.domain.empty() || n.op != "MatMul" || !n.packed || n.in.size() != 1) continue;
    const PackedWeight& w = *n.packed;
    if (!int8Capable(w, k) || !int8ParamsFit(w)) continue;
    const Node* dq = producerOf(g, n.in[0], "DequantizeLinear");
    const Node* qn = dq && dq->in.size() >= 2 ? producerOf(g, dq->in[0], "QuantizeLinear") : nullptr;
    if (!qn || qn->in.size() < 2 || qn->in[1] != dq->in[1]) continue;  // one scale value for both
    const int qz = qn->in.size() > 2 ? qn->in[2] : -1, dz = dq->in.size() > 2 ? dq->in[2] : -1;
    if (qz != dz || !int8ZeroPoint(g, *qn)) continue;
    const int64_t axis = qn->attrInt("axis", 1), bs = qn->attrInt("block_size", 0);
    if (axis != dq->attrInt("axis", 1) || bs != dq->attrInt("block_size", 0)) continue;
    const Value& s = g.values[qn->in[1]];
    const bool perTensor = s.is_const && s.constant.dt == DType::F32 && s.constant.numel() == 1;
    const bool perRow = axis == -1 && bs >= w.K;  // the run checks that the scale has one value per row
    if (!perTensor && !perRow) continue;
    n.in = {qn->in[0], qn->in[1]};
    n.act_quant = true;
    ++fused;
  }
  return fused;
}

int chooseInt8Activations(Graph& g, Int8Activations mode, const Kernels& k) {
  if (mode == Int8Activations::Off) return 0;
  int chosen = 0;
  for (Node& n : g.nodes) {
    if (!n.packed || !int8Capable(*n.packed, k)) continue;
    if (!int8Asked(n, mode) || !enableInt8(*n.packed)) continue;
    ++chosen;
  }
  return chosen;
}

}  // namespace crt::detail
