// device_math.h — the index and reduction arithmetic of the CUDA kernels, as __host__ __device__ functions:
// nvcc compiles them into the kernels and g++ into the CPU tests (tests/runtime/device_math_test.cpp), which
// run them lane by lane, in the kernels' order, against the CPU kernels. No CUDA headers, no LibTorch.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define CRT_HD __host__ __device__ __forceinline__
#else
#define CRT_HD inline
#endif

namespace crt::device {

constexpr int kWarp = 32;
constexpr int kMaxRank = 8;

// ------------------------------------------------------------------------------------------- elementwise
enum class Binary : int { Add, Sub, Mul, Div, Pow, Max, Min };
enum class Unary : int { Sqrt, Reciprocal, Neg, Exp, Tanh, Sigmoid, Relu, Erf, Cos, Sin };

CRT_HD float applyBinary(Binary op, float a, float b) {
  switch (op) {
    case Binary::Add: return a + b;
    case Binary::Sub: return a - b;
    case Binary::Mul: return a * b;
    case Binary::Div: return a / b;
    case Binary::Pow: return b == 2.f ? a * a : powf(a, b);  // RMSNorm's square: exact, as the CPU's Pow
    case Binary::Max: return a != a || b != b ? NAN : (a < b ? b : a);  // the CPU's: NaN wins, std::max's ties
    case Binary::Min: return a != a || b != b ? NAN : (b < a ? b : a);
  }
  return 0.f;
}

CRT_HD float applyUnary(Unary op, float x) {
  switch (op) {
    case Unary::Sqrt: return sqrtf(x);
    case Unary::Reciprocal: return 1.f / x;
    case Unary::Neg: return -x;
    case Unary::Exp: return expf(x);
    case Unary::Tanh: return tanhf(x);
    case Unary::Sigmoid: return 1.f / (1.f + expf(-x));
    case Unary::Relu: return x > 0.f ? x : 0.f;
    case Unary::Erf: return erff(x);
    case Unary::Cos: return cosf(x);  // (rotary tables: NeoX's, HF LLaMA's and Mistral's compute them per step)
    case Unary::Sin: return sinf(x);
  }
  return 0.f;
}

/// crt.Gelu (runtime/fuse.h): the GELU chains exports write, with their constants and their operations' order.
/// Erf form (BERT, GPT-NeoX, HF's "gelu"): (x * half) * (erf(x / div) + one). Tanh form (GPT-2's NewGELU):
/// (x * half) * (tanh((x + pow(x, power) * cube) * scale) + one).
struct Gelu {
  int tanh_form = 0;
  float half = 0.5f, one = 1.f, div = 1.41421356f, power = 3.f, cube = 0.044715f, scale = 0.79788456f;
};

CRT_HD float applyGelu(const Gelu& g, float x) {
  const float t = g.tanh_form ? applyUnary(Unary::Tanh, (x + applyBinary(Binary::Pow, x, g.power) * g.cube) * g.scale)
                              : applyUnary(Unary::Erf, x / g.div);
  return (x * g.half) * (t + g.one);
}

/// Multidirectional broadcasting of two operands into an output of `rank` dims: per output dim its size and
/// each operand's element stride (0 where the operand has size 1 or lacks the dim).
struct Broadcast {
  int rank = 0;
  int64_t out[kMaxRank] = {};
  int64_t sa[kMaxRank] = {};
  int64_t sb[kMaxRank] = {};
};

/// Builds the broadcast of shapes a and b (ranks <= kMaxRank); false when they do not broadcast.
inline bool makeBroadcast(const int64_t* a, int ra, const int64_t* b, int rb, Broadcast& bc) {
  const int r = ra > rb ? ra : rb;
  if (r > kMaxRank) return false;
  bc.rank = r;
  int64_t acc_a = 1, acc_b = 1;
  for (int i = r - 1; i >= 0; --i) {
    const int ia = i - (r - ra), ib = i - (r - rb);
    const int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) return false;
    bc.out[i] = da == 1 ? db : da;
    bc.sa[i] = da == 1 ? 0 : acc_a;
    bc.sb[i] = db == 1 ? 0 : acc_b;
    acc_a *= da;
    acc_b *= db;
  }
  return true;
}

/// Offsets into a and b of output element i (C order).
CRT_HD void broadcastOffsets(const Broadcast& bc, int64_t i, int64_t& oa, int64_t& ob) {
  oa = 0, ob = 0;
  for (int d = bc.rank - 1; d >= 0; --d) {
    const int64_t idx = i % bc.out[d];
    i /= bc.out[d];
    oa += idx * bc.sa[d];
    ob += idx * bc.sb[d];
  }
}

/// Broadcasting of three operands (Where's condition, X and Y): per output dim its size and each operand's stride.
struct Broadcast3 {
  int rank = 0;
  int64_t out[kMaxRank] = {};
  int64_t s[3][kMaxRank] = {};
};

/// Builds the broadcast of three shapes (ranks <= kMaxRank); false when they do not broadcast.
inline bool makeBroadcast3(const int64_t* const dims[3], const int ranks[3], Broadcast3& bc) {
  int r = 0;
  for (int k = 0; k < 3; ++k) r = ranks[k] > r ? ranks[k] : r;
  if (r > kMaxRank) return false;
  bc.rank = r;
  int64_t acc[3] = {1, 1, 1};
  for (int i = r - 1; i >= 0; --i) {
    int64_t size = 1;
    for (int k = 0; k < 3; ++k) {
      const int j = i - (r - ranks[k]);
      const int64_t d = j >= 0 ? dims[k][j] : 1;
      if (d != 1 && size != 1 && d != size) return false;
      if (d != 1) size = d;
    }
    bc.out[i] = size;
    for (int k = 0; k < 3; ++k) {
      const int j = i - (r - ranks[k]);
      const int64_t d = j >= 0 ? dims[k][j] : 1;
      bc.s[k][i] = d == 1 ? 0 : acc[k];
      acc[k] *= d;
    }
  }
  return true;
}

/// Offsets into the three operands of output element i (C order).
CRT_HD void broadcastOffsets3(const Broadcast3& bc, int64_t i, int64_t* off) {
  off[0] = off[1] = off[2] = 0;
  for (int d = bc.rank - 1; d >= 0; --d) {
    const int64_t idx = i % bc.out[d];
    i /= bc.out[d];
    for (int k = 0; k < 3; ++k) off[k] += idx * bc.s[k][d];
  }
}

// ------------------------------------------------------------------------------------------- data movement
/// Transpose and Slice as one gather: output element i (C order over `os`) reads input element
/// offset + sum idx[d] * st[d] (detail::StridedView, runtime/op_geometry.h).
struct Strided {
  int rank = 0;
  int64_t os[kMaxRank] = {};
  int64_t st[kMaxRank] = {};
  int64_t offset = 0;
};

CRT_HD int64_t stridedSource(const Strided& s, int64_t i) {
  int64_t off = s.offset;
  for (int d = s.rank - 1; d >= 0; --d) {
    off += (i % s.os[d]) * s.st[d];
    i /= s.os[d];
  }
  return off;
}

/// Whether a batch of `rank` dims with per-dim offsets `st` is one constant stride (`unit` per batch) or all
/// zero (broadcast): then cuBLAS's strided batched GEMM takes it in one call. The stride is returned in `stride`.
inline bool uniformBatch(const int64_t* dims, const int64_t* st, int rank, int64_t unit, int64_t& stride) {
  bool zero = true, dense = true;
  int64_t expect = unit;
  for (int d = rank - 1; d >= 0; --d) {
    zero = zero && st[d] == 0;
    dense = dense && (st[d] == expect || dims[d] == 1);
    expect *= dims[d];
  }
  stride = zero ? 0 : unit;
  return zero || dense;
}

// ------------------------------------------------------------------------------------------- cuBLAS calls
/// One cuBLAS SGEMM call (column-major: C[m, n] = op(A)[m, k] op(B)[k, n]) that computes the row-major product
/// Y[M, N] = X[M, K] R, where R is [K, N] row-major (`rTransposed` false) or [N, K] row-major (true: a weight's
/// rows). Row-major Y is column-major Y^T = R^T X^T, so cuBLAS's A is R and its B is X.
struct GemmCall {
  bool transA = false, transB = false;
  int m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
};
inline GemmCall rowMajorGemm(int64_t M, int64_t N, int64_t K, bool rTransposed) {
  GemmCall c;
  c.transA = rTransposed;
  c.m = static_cast<int>(N), c.n = static_cast<int>(M), c.k = static_cast<int>(K);
  c.lda = static_cast<int>(rTransposed ? K : N);
  c.ldb = static_cast<int>(K);
  c.ldc = static_cast<int>(N);
  return c;
}

// ------------------------------------------------------------------------------------------- fp16
/// fp16 bits to float, exact (the CPU runtime's portable conversion, bit for bit; the GPU's conversion instruction).
CRT_HD float halfBitsToFloat(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        --exp;
      }
      man &= 0x3ff;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  union {
    uint32_t u;
    float f;
  } v{bits};
  return v.f;
#endif
}

/// float to fp16 bits, rounded to nearest even; beyond the largest half Inf, NaN a quiet NaN. The CPU runtime's
/// conversion (detail::floatToHalf is this function); on the GPU its conversion instruction, which rounds the same.
CRT_HD uint16_t floatToHalfBits(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return sign | (absx > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN / Inf
  if (absx >= 0x477ff000u) return sign | 0x7c00;                                  // overflow -> Inf
  if (absx < 0x38800000u) {                                                       // subnormal or zero
    if (absx < 0x33000000u) return sign;
    const uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
    const int shift = 126 - static_cast<int>(e);  // 14 + (113 - e)
    uint32_t v = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (v & 1))) ++v;
    return sign | static_cast<uint16_t>(v);
  }
  uint32_t v = ((absx >> 13) - (112u << 10));
  const uint32_t rem = absx & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) ++v;
  return sign | static_cast<uint16_t>(v);
#endif
}

/// An activation element as the kernels read and write it: float32, or float16 as its bits (uint16_t), computed in
/// float and rounded once per result, as the CPU runtime computes float16 nodes.
CRT_HD float load(const float* p, int64_t i) { return p[i]; }
CRT_HD float load(const uint16_t* p, int64_t i) { return halfBitsToFloat(p[i]); }
CRT_HD void store(float* p, int64_t i, float v) { p[i] = v; }
CRT_HD void store(uint16_t* p, int64_t i, float v) { p[i] = floatToHalfBits(v); }

// ------------------------------------------------------------------------------------------- fused chains
/// A product rounded to float on its own, never contracted with the add or subtract after it into an FMA: the
/// CPU's fused ops round each product (fuse.cpp is compiled with -ffp-contract=off), and so does the device.
CRT_HD float mulRounded(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// crt.Rope (runtime/fuse.h) as offsets: over the half shape A (A = t's shape with the pairs' axis halved, `rank`
/// dims), pair element i reads a at its ta offset and b = a + bOff from t, cos and sin at their broadcast offsets
/// (tc, ts: 0 where they broadcast), and writes y at its ty offset (first of the pair) and that + `second`.
struct Rope {
  int rank = 0;
  int64_t A[kMaxRank] = {}, ta[kMaxRank] = {}, tc[kMaxRank] = {}, ts[kMaxRank] = {}, ty[kMaxRank] = {};
  int64_t bOff = 0, second = 0;
};

/// The offsets of pair element i (C order over A) into t (a), cos, sin and y, starting from the innermost axis.
CRT_HD void ropeOffsets(const Rope& r, int64_t i, int64_t& a, int64_t& c, int64_t& s, int64_t& y) {
  a = c = s = y = 0;
  for (int d = r.rank - 1; d >= 0; --d) {
    const int64_t idx = i % r.A[d];
    i /= r.A[d];
    a += idx * r.ta[d], c += idx * r.tc[d], s += idx * r.ts[d], y += idx * r.ty[d];
  }
}

/// One pair's rotation: (a cos - b sin, a sin + b cos), each product rounded, as the exported Mul/Sub/Add nodes.
CRT_HD void ropePair(float a, float b, float cv, float sv, float& y0, float& y1) {
  y0 = mulRounded(a, cv) - mulRounded(b, sv);
  y1 = mulRounded(a, sv) + mulRounded(b, cv);
}

/// crt.ScaleMaskSoftmax's mask (runtime/fuse.h) per row of scores [dims..., n]: its stride on each axis of the
/// scores (0 where it broadcasts); row r of the scores reads the mask from maskRowOffset(r), stepping ms[rank-1].
struct RowMask {
  int rank = 0;
  int64_t dims[kMaxRank] = {}, ms[kMaxRank] = {};
};

CRT_HD int64_t maskRowOffset(const RowMask& m, int64_t row) {
  int64_t off = 0;
  for (int d = m.rank - 2; d >= 0; --d) {
    off += row % m.dims[d] * m.ms[d];
    row /= m.dims[d];
  }
  return off;
}

/// A score divided, then masked (both rounded, as the Div and Add nodes did).
CRT_HD float scaleMask(float x, float divisor, float mask) { return x / divisor + mask; }

/// LayerNormalization's output value: (x - mean) * inv * scale [+ bias], in that order (the CPU op's too).
CRT_HD float layerNormValue(float x, float mean, float inv, float scale, bool hasBias, float bias) {
  const float v = (x - mean) * inv * scale;
  return hasBias ? v + bias : v;
}

// ------------------------------------------------------------------------------------------- KV cache
/// The in-session KV cache (runtime/kv_cache.h) as the attention kernels read it: per kv head `capacity` rows of
/// D values, fp32 or fp16 bits; query head qh reads kv head qh / rep (GQA).
/// One cache buffer: [kv heads][capacity][D] as float32, float16, or int8 with a float scale per row (`scales`,
/// [kv heads][capacity], non-null for int8: element = q * scale, the row's largest |value| / 127).
struct KvCache {
  const void* data = nullptr;
  bool f16 = false;
  const float* scales = nullptr;
  int64_t capacity = 0, D = 0, rep = 1;
};

/// Element offset of row t of kv head h.
CRT_HD int64_t kvRowOffset(const KvCache& kv, int64_t h, int64_t t) { return (h * kv.capacity + t) * kv.D; }

/// Cached element i as float.
CRT_HD float kvAt(const KvCache& kv, int64_t i) {
  if (kv.scales) return static_cast<float>(static_cast<const int8_t*>(kv.data)[i]) * kv.scales[i / kv.D];
  return kv.f16 ? halfBitsToFloat(static_cast<const uint16_t*>(kv.data)[i]) : static_cast<const float*>(kv.data)[i];
}

/// An int8 cache row's scale from its largest |value|, and one value quantized with it (round to nearest even,
/// within [-127, 127]; a row of zeros has scale 0 and stores zeros; a row with NaN or Inf stores 0 where the
/// quotient is not a number, and its NaN or Inf scale carries the non-finite value into every product).
CRT_HD float kvInt8Scale(float absmax, bool nan) { return nan ? NAN : absmax / 127.f; }
CRT_HD int8_t kvInt8(float x, float scale) {
  const float q = rintf(x / scale);
  if (!(q == q) || scale == 0.f) return 0;
  return static_cast<int8_t>(q > 127.f ? 127.f : q < -127.f ? -127.f : q);
}

/// One lane's share of score (qh, t) = q . K[qh / rep][t] (q: the query row of D values, float32 or float16): values
/// lane, lane + lanes, ...
template <typename Q>
CRT_HD float kvScorePartial(const KvCache& kv, const Q* q, int64_t qh, int64_t t, int lane, int lanes) {
  const int64_t row = kvRowOffset(kv, qh / kv.rep, t);
  float acc = 0.f;
  for (int64_t d = lane; d < kv.D; d += lanes) acc += load(q, d) * kvAt(kv, row + d);
  return acc;
}

/// One share of output (qh, d) = sum over t < T of p[t] V[qh / rep][t][d] (p: the row of T attention weights):
/// t = t0, t0 + step, ...
template <typename P>
CRT_HD float kvValuePartial(const KvCache& kv, const P* p, int64_t qh, int64_t T, int64_t d, int64_t t0, int64_t step) {
  const int64_t base = kvRowOffset(kv, qh / kv.rep, 0) + d;
  float acc = 0.f;
  for (int64_t t = t0; t < T; t += step) acc += load(p, t) * kvAt(kv, base + t * kv.D);
  return acc;
}

// ------------------------------------------------------------------------------------------- packed weights
/// A packed weight as the device kernels see it (the layouts of detail::PackedWeight, runtime/internal.h):
/// F32 rows [N][K] (the host's panels are unpanelled at upload); F16 rows [N][K]; Q8/Q4 rows of nblk blocks
/// of P values (Q8: a byte per value; Q4: per 32-value chunk 16 bytes, byte j = value j (low nibble) | value j+16 (high nibble)), with
/// a float scale and zero point per (row, block): weight = (q - zp) * scale.
struct WeightView {
  enum Kind : int { F32, F16, Q8, Q4 } kind = F32;
  int64_t N = 0, K = 0, block = 1, nblk = 1, P = 32, row_bytes = 0;
  const uint8_t* w = nullptr;
  const float* scale = nullptr;
  const float* zp = nullptr;
};

/// Copies 16 bytes at p (16-byte aligned: packed chunks are) to out: one 128-bit load on the GPU.
CRT_HD void load16(const uint8_t* p, uint8_t* out) {
#if defined(__CUDA_ARCH__)
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  memcpy(out, &v, 16);
#else
  for (int i = 0; i < 16; ++i) out[i] = p[i];
#endif
}

/// Chunks of 32 values in one packed Q8/Q4 row (padded positions included).
CRT_HD int64_t chunksPerRow(const WeightView& v) { return v.nblk * v.P / 32; }

/// Chunk c of row n against x: scale * (sum q*x - zp * sum x) over the chunk's valid values (the padding
/// of each block meets x = 0, as the CPU kernels' zero-padded activations).
template <typename X>
CRT_HD float chunkDot(const WeightView& v, int64_t n, int64_t c, const X* x) {
  const int64_t pos = c * 32;           // padded position in the row
  const int64_t b = pos / v.P;          // its block
  const int64_t t0 = pos - b * v.P;     // first value's index in the block
  const int64_t k0 = b * v.block + t0;  // its logical index in x
  int64_t valid = v.block - t0;
  if (valid > v.K - k0) valid = v.K - k0;
  if (valid > 32) valid = 32;
  if (valid <= 0) return 0.f;
  const uint8_t* row = v.w + n * v.row_bytes;
  uint8_t q[32];  // the chunk's bytes, loaded whole (the padding of a block is readable)
  float sqx = 0.f, sx = 0.f;
  if (v.kind == WeightView::Q8) {
    load16(row + pos, q);
    load16(row + pos + 16, q + 16);
    for (int j = 0; j < valid; ++j) {
      const float xj = load(x, k0 + j);
      sqx += static_cast<float>(q[j]) * xj, sx += xj;
    }
  } else {
    load16(row + pos / 2, q);
    for (int j = 0; j < valid; ++j) {
      const int qj = j < 16 ? (q[j] & 0xF) : (q[j - 16] >> 4);
      const float xj = load(x, k0 + j);
      sqx += static_cast<float>(qj) * xj;
      sx += xj;
    }
  }
  const int64_t p = n * v.nblk + b;
  return v.scale[p] * (sqx - v.zp[p] * sx);
}

/// One lane's share of row n of a Q8/Q4 weight against x: chunks lane, lane + lanes, ... (a warp per row: 32
/// lanes read 32 consecutive chunks, 512 (Q4) or 1024 (Q8) contiguous bytes per step).
/// x: float32 or float16 activations (load).
template <typename X>
CRT_HD float quantRowPartial(const WeightView& v, int64_t n, const X* x, int lane, int lanes) {
  float acc = 0.f;
  const int64_t chunks = chunksPerRow(v);
  for (int64_t c = lane; c < chunks; c += lanes) acc += chunkDot(v, n, c, x);
  return acc;
}

/// One lane's share of row n of an F16 or F32 row-major weight [N][K] (the device keeps fp32 weights as rows,
/// not panels): pairs of values 2*lane, 2*lane + 2*lanes, ...
template <typename X>
CRT_HD float denseRowPartial(const WeightView& v, int64_t n, const X* x, int lane, int lanes) {
  float acc = 0.f;
  if (v.kind == WeightView::F16) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(v.w) + n * v.K;
    for (int64_t k = 2 * lane; k < v.K; k += 2 * lanes) {
      acc += halfBitsToFloat(row[k]) * load(x, k);
      if (k + 1 < v.K) acc += halfBitsToFloat(row[k + 1]) * load(x, k + 1);
    }
  } else {
    const float* row = reinterpret_cast<const float*>(v.w) + n * v.K;
    for (int64_t k = 2 * lane; k < v.K; k += 2 * lanes) {
      acc += row[k] * load(x, k);
      if (k + 1 < v.K) acc += row[k + 1] * load(x, k + 1);
    }
  }
  return acc;
}

/// Weight (n, k) as float, any kind (the dequantization in front of the prefill GEMM).
CRT_HD float weightAt(const WeightView& v, int64_t n, int64_t k) {
  if (v.kind == WeightView::F32) return reinterpret_cast<const float*>(v.w)[n * v.K + k];
  if (v.kind == WeightView::F16) return halfBitsToFloat(reinterpret_cast<const uint16_t*>(v.w)[n * v.K + k]);
  const int64_t b = k / v.block, pos = b * v.P + (k - b * v.block);
  const uint8_t* row = v.w + n * v.row_bytes;
  int q;
  if (v.kind == WeightView::Q8) {
    q = row[pos];
  } else {
    const int j = static_cast<int>(pos % 32);
    const uint8_t byte = row[(pos - j) / 2 + (j % 16)];
    q = j < 16 ? (byte & 0xF) : (byte >> 4);
  }
  const int64_t p = n * v.nblk + b;
  return (static_cast<float>(q) - v.zp[p]) * v.scale[p];
}

/// The warp's butterfly sum (__shfl_xor_sync with offsets 16, 8, 4, 2, 1) computed on the host in the same
/// order: every lane ends with the same value. `v` holds 32 partials and is overwritten.
inline float butterflySum(float* v) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    float next[kWarp];
    for (int l = 0; l < kWarp; ++l) next[l] = v[l] + v[l ^ off];
    for (int l = 0; l < kWarp; ++l) v[l] = next[l];
  }
  return v[0];
}

// ------------------------------------------------------------------------------------------- elementwise chains
/// crt.Elementwise (runtime/fuse.h; device sessions): a chain of elementwise ops and float32 <-> float16 Casts as one
/// program of steps evaluated per output element, each step with its op's arithmetic (applyBinary / applyUnary) and
/// its result rounded to float16 where the chain's op wrote float16: the unfused chain's bits.
constexpr int kEwInputs = 8, kEwSteps = 24;
enum class EwKind : int8_t { Binary, Unary, Cast };
struct EwStep {
  EwKind kind = EwKind::Cast;
  int8_t code = 0;  // Binary or Unary
  int8_t f16 = 0;   // the step's result is float16: rounded to nearest even
  int8_t a = 0, b = 0;  // operands: below kEwInputs an input, from it the result of step (x - kEwInputs)
};
struct EwProgram {
  int inputs = 0, steps = 0;
  EwStep s[kEwSteps];
};

CRT_HD float roundToHalf(float v) { return halfBitsToFloat(floatToHalfBits(v)); }

/// Input element `off` of a float32 or float16 tensor as float.
CRT_HD float ewLoad(const void* p, bool f16, int64_t off) {
  return f16 ? halfBitsToFloat(static_cast<const uint16_t*>(p)[off]) : static_cast<const float*>(p)[off];
}

/// The program's value for one output element from its inputs' values x (a checked program: operands in range).
CRT_HD float ewEval(const EwProgram& p, const float* x) {
  float r[kEwSteps];
  for (int i = 0; i < p.steps; ++i) {
    const EwStep& st = p.s[i];
    const float a = st.a < kEwInputs ? x[st.a] : r[st.a - kEwInputs];
    float v = a;
    if (st.kind == EwKind::Binary) v = applyBinary(static_cast<Binary>(st.code), a, st.b < kEwInputs ? x[st.b] : r[st.b - kEwInputs]);
    else if (st.kind == EwKind::Unary) v = applyUnary(static_cast<Unary>(st.code), a);
    r[i] = st.f16 ? roundToHalf(v) : v;
  }
  return r[p.steps - 1];
}

/// Broadcasting of up to kEwInputs operands: the output's dims and each operand's element stride per dim (0 where
/// it has size 1 or lacks the dim).
struct BroadcastN {
  int rank = 0, n = 0;
  int64_t out[kMaxRank] = {};
  int64_t st[kEwInputs][kMaxRank] = {};
};

/// Builds the broadcast of n shapes (n <= kEwInputs, ranks <= kMaxRank); false when they do not broadcast.
inline bool makeBroadcastN(const int64_t* const* dims, const int* ranks, int n, BroadcastN& bc) {
  int r = 0;
  for (int k = 0; k < n; ++k) r = ranks[k] > r ? ranks[k] : r;
  if (r > kMaxRank || n > kEwInputs) return false;
  bc.rank = r, bc.n = n;
  for (int i = 0; i < r; ++i) {
    int64_t o = 1;
    for (int k = 0; k < n; ++k) {
      const int ik = i - (r - ranks[k]);
      const int64_t d = ik >= 0 ? dims[k][ik] : 1;
      if (d != 1 && o != 1 && d != o) return false;
      if (d != 1) o = d;
    }
    bc.out[i] = o;
  }
  for (int k = 0; k < n; ++k) {
    int64_t acc = 1;
    for (int i = r - 1; i >= 0; --i) {
      const int ik = i - (r - ranks[k]);
      const int64_t d = ik >= 0 ? dims[k][ik] : 1;
      bc.st[k][i] = d == 1 ? 0 : acc;
      acc *= d;
    }
  }
  return true;
}

/// Operand k's element for output element i.
CRT_HD int64_t broadcastOffsetN(const BroadcastN& bc, int k, int64_t i) {
  int64_t off = 0;
  for (int d = bc.rank - 1; d >= 0; --d) {
    const int64_t idx = i % bc.out[d];
    i /= bc.out[d];
    off += idx * bc.st[k][d];
  }
  return off;
}

/// The rows one block of `warps` warps takes in the quantized GEMV: warp w of block b takes row
/// b * warps + w.
CRT_HD int64_t gemvRow(int64_t block, int warps, int warp) { return block * warps + warp; }

}  // namespace crt::device
