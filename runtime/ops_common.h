// ops_common.h — helpers shared by the runtime's op files (ops.cpp, ops_math.cpp, ops_tensor.cpp):
// broadcasting loops, typed element access, strided copies, convolution geometry; and the declaration
// of every op implementation, one per row of op_table.def (a missing one is a link error).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/thread_pool.h"

namespace crt::detail {

#define OP(name, lo, hi, outs, traits) void op##name(OpCtx& c);
#define OPD(domain, name, lo, hi, outs, traits) void op##name(OpCtx& c);
#include "runtime/op_table.def"
#undef OP
#undef OPD

// ---------------------------------------------------------------- fp16 arithmetic (computed in fp32)
struct Half {
  uint16_t bits;
  Half() = default;
  explicit Half(float f) : bits(floatToHalf(f)) {}
  operator float() const { return halfToFloat(bits); }  // NOLINT
};

template <typename T>
struct Wide { using type = T; };
template <>
struct Wide<Half> { using type = float; };

// ---------------------------------------------------------------- helpers
inline int64_t normAxis(const OpCtx& c, int64_t axis, int rank) {
  if (axis < -rank || axis >= std::max(rank, 1)) c.bad("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

inline Shape broadcastShape(const OpCtx& c, const Shape& a, const Shape& b) {
  Shape o;
  o.rank = std::max(a.rank, b.rank);
  for (int i = 0; i < o.rank; ++i) {
    int64_t x = i - (o.rank - a.rank) >= 0 ? a[i - (o.rank - a.rank)] : 1;
    int64_t y = i - (o.rank - b.rank) >= 0 ? b[i - (o.rank - b.rank)] : 1;
    if (x != y && x != 1 && y != 1) c.bad("shapes " + a.str() + " and " + b.str() + " do not broadcast");
    o[i] = x == 1 ? y : x;
  }
  return o;
}

/// Element strides of `s` broadcast to `out` (0 on broadcast dims).
inline void bstrides(const Shape& s, const Shape& out, int64_t* st) {
  int64_t acc = 1;
  for (int i = out.rank - 1; i >= 0; --i) {
    int j = i - (out.rank - s.rank);
    if (j >= 0 && s[j] != 1) {
      st[i] = acc;
      acc *= s[j];
    } else {
      st[i] = 0;
      if (j >= 0) acc *= s[j];
    }
  }
}

/// memcpy for the short rows of Concat/Slice along an inner axis (RoPE's halves: 128 bytes each): 64-byte blocks
/// of constant size, which the compiler inlines as vector moves, instead of a library call per row.
inline void copyRow(uint8_t* d, const uint8_t* s, int64_t n) {
  for (; n >= 64; n -= 64, d += 64, s += 64) std::memcpy(d, s, 64);
  for (; n >= 8; n -= 8, d += 8, s += 8) std::memcpy(d, s, 8);
  for (; n > 0; --n) *d++ = *s++;
}

/// Rows of an output for broadcastRows: runs along its innermost dimension (1 for a scalar).
inline int64_t broadcastRowCount(const Shape& out) {
  if (out.rank == 0) return 1;
  return out[out.rank - 1] == 0 ? 0 : out.numel() / out[out.rank - 1];
}

/// Visits rows [r0, r1) of an N-ary broadcast: fn(offsets_of_inputs..., out_index_start, count, inner_strides)
/// per run along the innermost dimension.
template <int NIn, typename F>
inline void broadcastRows(const Shape& out, const Shape* ins, int64_t r0, int64_t r1, F&& fn) {
  int64_t st[NIn][kMaxRank] = {};
  for (int k = 0; k < NIn; ++k) bstrides(ins[k], out, st[k]);
  const int64_t total = out.numel();
  if (total == 0 || r0 >= r1) return;
  if (out.rank == 0) {
    int64_t off[NIn] = {};
    int64_t inner[NIn] = {};
    fn(off, int64_t{0}, int64_t{1}, inner);
    return;
  }
  const int last = out.rank - 1;
  const int64_t n = out[last];
  int64_t inner[NIn];
  for (int k = 0; k < NIn; ++k) inner[k] = st[k][last];
  int64_t idx[kMaxRank] = {};
  int64_t off[NIn] = {};
  for (int64_t d = last - 1, rem = r0; d >= 0; --d) {  // the index of row r0
    idx[d] = rem % out[static_cast<int>(d)];
    rem /= out[static_cast<int>(d)];
    for (int k = 0; k < NIn; ++k) off[k] += idx[d] * st[k][d];
  }
  for (int64_t o = r0 * n; o < r1 * n; o += n) {
    fn(off, o, n, inner);
    for (int d = last - 1; d >= 0; --d) {
      ++idx[d];
      for (int k = 0; k < NIn; ++k) off[k] += st[k][d];
      if (idx[d] < out[d]) break;
      for (int k = 0; k < NIn; ++k) off[k] -= st[k][d] * out[d];
      idx[d] = 0;
    }
  }
}

/// Visits a whole N-ary broadcast (broadcastRows over every row).
template <int NIn, typename F>
inline void broadcastLoop(const Shape& out, const Shape* ins, F&& fn) {
  broadcastRows<NIn>(out, ins, 0, broadcastRowCount(out), fn);
}

constexpr int64_t kParallelElements = 1 << 15;  // an elementwise op this large splits its rows over the pool

/// fn(r0, r1) over `rows` rows of a `total`-element output: on the calling thread, or in one range per thread of
/// the pool when the output is large.
template <typename F>
inline void parallelRows(const OpCtx& c, int64_t rows, int64_t total, F&& fn) {
  const int64_t tasks = c.env.pool && total >= kParallelElements ? std::min<int64_t>(c.env.pool->size(), rows) : 1;
  if (tasks <= 1) return fn(int64_t{0}, rows);
  c.env.pool->parallelFor(tasks, [&](int64_t t) { fn(rows * t / tasks, rows * (t + 1) / tasks); });
}

/// y = f(a, b) with broadcasting over the data pa (shape a) and pb (shape b) into y (shape os), rows [r0, r1).
template <typename T, typename R, typename F>
inline void binaryRows(const Shape& as, const T* pa, const Shape& bs, const T* pb, const Shape& os, R* y, F f, int64_t r0,
                       int64_t r1) {
  Shape ins[2] = {as, bs};
  broadcastRows<2>(os, ins, r0, r1, [&](const int64_t* off, int64_t o, int64_t n, const int64_t* inner) {
    const T* x = pa + off[0];
    const T* z = pb + off[1];
    R* out = y + o;
    if (inner[0] == 1 && inner[1] == 1) {
      for (int64_t i = 0; i < n; ++i) out[i] = f(x[i], z[i]);
    } else if (inner[0] == 1 && inner[1] == 0) {
      const T zz = z[0];
      for (int64_t i = 0; i < n; ++i) out[i] = f(x[i], zz);
    } else if (inner[0] == 0 && inner[1] == 1) {
      const T xx = x[0];
      for (int64_t i = 0; i < n; ++i) out[i] = f(xx, z[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = f(x[i * inner[0]], z[i * inner[1]]);
    }
  });
}

/// binaryRows over every row, split over the pool when large.
template <typename T, typename R, typename F>
inline void binaryLoop(const OpCtx& c, const Shape& as, const T* pa, const Shape& bs, const T* pb, const Shape& os, R* y, F f) {
  parallelRows(c, broadcastRowCount(os), os.numel(),
               [&](int64_t r0, int64_t r1) { binaryRows<T, R>(as, pa, bs, pb, os, y, f, r0, r1); });
}

template <typename T, typename R, typename F>
inline void binaryTyped(OpCtx& c, DType outType, F f) {
  const Buf& a = c.in(0);
  const Buf& b = c.in(1);
  const Shape os = broadcastShape(c, a.shape, b.shape);
  binaryLoop<T, R>(c, a.shape, a.as<T>(), b.shape, b.as<T>(), os, static_cast<R*>(c.out(0, outType, os)), f);
}

/// A float16 elementwise op computed in float32 (each result rounded to fp16 once, as Half arithmetic does), with
/// the kernel set's F16C conversions instead of one portable conversion per element.
template <typename F>
inline void binaryHalf(OpCtx& c, F f) {
  const Buf& a = c.in(0);
  const Buf& b = c.in(1);
  const Shape os = broadcastShape(c, a.shape, b.shape);
  const float* pa = floatData(c, a);
  const float* pb = floatData(c, b);
  FloatOut fo = floatOut(c, DType::F16, os);
  binaryLoop<float, float>(c, a.shape, pa, b.shape, pb, os, fo.p, f);
  finish(fo);
}

inline void needSameType(const OpCtx& c) {
  if (c.in(0).dt != c.in(1).dt)
    c.bad(std::string("input types differ: ") + dtypeName(c.in(0).dt) + " and " + dtypeName(c.in(1).dt));
}

template <typename F>
inline void unaryFloat(OpCtx& c, F f) {
  const Buf& x = c.in(0);
  const int64_t n = x.numel();
  if (x.dt == DType::F32) {
    float* y = c.outT<float>(0, x.shape);
    const float* p = x.as<float>();
    for (int64_t i = 0; i < n; ++i) y[i] = f(p[i]);
  } else if (x.dt == DType::F16) {  // in float32, converted with the kernel set's F16C
    const float* p = floatData(c, x);
    FloatOut fo = floatOut(c, DType::F16, x.shape);
    for (int64_t i = 0; i < n; ++i) fo.p[i] = f(p[i]);
    finish(fo);
  } else if (x.dt == DType::F64) {
    double* y = c.outT<double>(0, x.shape);
    const double* p = x.as<double>();
    for (int64_t i = 0; i < n; ++i) y[i] = f(p[i]);
  } else {
    c.bad(std::string("needs a floating-point input, got ") + dtypeName(x.dt));
  }
}

template <typename F>
inline void unarySigned(OpCtx& c, F f) {
  const Buf& x = c.in(0);
  const int64_t n = x.numel();
  if (x.dt == DType::I64) {
    int64_t* y = c.outT<int64_t>(0, x.shape);
    for (int64_t i = 0; i < n; ++i) y[i] = f(x.as<int64_t>()[i]);
  } else if (x.dt == DType::I32) {
    int32_t* y = c.outT<int32_t>(0, x.shape);
    for (int64_t i = 0; i < n; ++i) y[i] = f(x.as<int32_t>()[i]);
  } else {
    unaryFloat(c, f);
  }
}

// ---------------------------------------------------------------- casts
template <typename From>
inline double loadAs(const void* p, int64_t i) { return static_cast<double>(static_cast<const From*>(p)[i]); }

inline double loadElem(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F16: return halfToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I8: return static_cast<const int8_t*>(p)[i];
    case DType::U8:
    case DType::Bool: return static_cast<const uint8_t*>(p)[i];
    default: return 0;
  }
}

inline void storeElem(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = floatToHalf(static_cast<float>(v)); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case DType::Bool: static_cast<uint8_t*>(p)[i] = v != 0; break;
    default: break;
  }
}

inline bool castable(DType t) {
  switch (t) {
    case DType::F32: case DType::F64: case DType::F16: case DType::I64: case DType::I32: case DType::I8:
    case DType::U8: case DType::Bool: return true;
    default: return false;
  }
}

inline void axesOf(OpCtx& c, int input, const char* attr, int64_t* axes, int64_t& n) {
  n = 0;
  if (c.has(input)) {
    n = readInts(c.in(input), axes, kMaxRank, c);
  } else if (const auto* a = c.node.attrInts(attr)) {
    if (a->size() > static_cast<size_t>(kMaxRank)) c.bad("too many axes");
    for (int64_t v : *a) axes[n++] = v;
  }
}

/// Band width of tiledCopy: 8 rows (16 rows 8 KiB apart share one L1 set and thrashed it: a 768 x 2048 transpose
/// took 3.4 ms with 16, 0.7 with 8, 2.3 element by element).
constexpr int64_t kCopyBand = 8;

/// stridedCopy of T elements where the output's last dim reads with a stride and dim d reads contiguously (st[d] ==
/// 1: a transpose): bands of kCopyBand values of d, each walking the whole last dim, so that a source line read serves
/// the whole band and the band's output rows are written as sequential streams (element by element, each read of a
/// large transpose missed the cache: 11% of a 440 MB model's load).
template <typename T>
void tiledCopy(const T* src, const int64_t* st, const Shape& os, int d, T* dst) {
  const int last = os.rank - 1;
  int64_t ost[kMaxRank] = {};
  for (int64_t i = os.rank - 1, acc = 1; i >= 0; --i) ost[i] = acc, acc *= os[static_cast<int>(i)];
  const int64_t nd = os[d], nl = os[last], sl = st[last], od = ost[d];
  const int64_t outer = os.numel() / (nd * nl);
  int64_t idx[kMaxRank] = {};
  int64_t soff = 0, doff = 0;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i0 = 0; i0 < nd; i0 += kCopyBand) {  // a band of kCopyBand output rows, written as as many streams
      const int64_t ie = std::min(nd, i0 + kCopyBand);
      for (int64_t j = 0; j < nl; ++j)  // each j reads one source line
        for (int64_t i = i0; i < ie; ++i) dst[doff + i * od + j] = src[soff + i + j * sl];
    }
    for (int k = last - 1; k >= 0; --k) {  // the next index over the dims other than d and last
      if (k == d) continue;
      ++idx[k];
      soff += st[k], doff += ost[k];
      if (idx[k] < os[k]) break;
      soff -= st[k] * os[k], doff -= ost[k] * os[k];
      idx[k] = 0;
    }
  }
}

/// The dim that a tiled copy can pair with the strided last dim: contiguous in the source and long enough to fill
/// half a band; -1 when none is (or the last dim is contiguous or short).
inline int tilePartner(const int64_t* st, const Shape& os) {
  const int last = os.rank - 1;
  if (last < 1 || st[last] == 1 || os[last] < kCopyBand / 2) return -1;
  for (int d = 0; d < last; ++d)
    if (st[d] == 1 && os[d] >= kCopyBand / 2) return d;
  return -1;
}

/// Copies a strided N-d view: out[idx] = in[sum idx[d]*st[d]] (element size es).
inline void stridedCopy(const uint8_t* src, const int64_t* st, const Shape& os, uint8_t* dst, size_t es) {
  const int64_t total = os.numel();
  if (total == 0) return;
  if (os.rank == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  if (const int d = tilePartner(st, os); d >= 0 && (es == 4 || es == 2)) {
    if (es == 4) tiledCopy(reinterpret_cast<const uint32_t*>(src), st, os, d, reinterpret_cast<uint32_t*>(dst));
    else tiledCopy(reinterpret_cast<const uint16_t*>(src), st, os, d, reinterpret_cast<uint16_t*>(dst));
    return;
  }
  // Trailing dims that are contiguous in the input too are one run (a Split or Slice on an outer axis copies whole
  // blocks, not rows of the last dim).
  Shape cos = os;
  int64_t cst[kMaxRank] = {};
  for (int d = 0; d < os.rank; ++d) cst[d] = st[d];
  while (cos.rank >= 2 && cst[cos.rank - 1] == 1 && cst[cos.rank - 2] == cos[cos.rank - 1]) {
    cos.d[cos.rank - 2] *= cos[cos.rank - 1];
    cst[cos.rank - 2] = 1;
    --cos.rank;
  }
  const int last = cos.rank - 1;
  const int64_t n = cos[last], s = cst[last];
  int64_t idx[kMaxRank] = {};
  int64_t off = 0;
  for (int64_t o = 0; o < total; o += n) {
    if (s == 1) {
      std::memcpy(dst + o * es, src + off * es, n * es);
    } else if (es == 4) {
      const uint32_t* p = reinterpret_cast<const uint32_t*>(src) + off;
      uint32_t* q = reinterpret_cast<uint32_t*>(dst) + o;
      for (int64_t i = 0; i < n; ++i) q[i] = p[i * s];
    } else {
      for (int64_t i = 0; i < n; ++i) std::memcpy(dst + (o + i) * es, src + (off + i * s) * es, es);
    }
    for (int d = last - 1; d >= 0; --d) {
      ++idx[d];
      off += cst[d];
      if (idx[d] < cos[d]) break;
      off -= cst[d] * cos[d];
      idx[d] = 0;
    }
  }
}

inline void contiguousStrides(const Shape& s, int64_t* st) {
  int64_t acc = 1;
  for (int i = s.rank - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
}

/// Splits a rank-r tensor at `axis` into [outer, n, inner].
inline void splitAt(const Shape& s, int axis, int64_t& outer, int64_t& n, int64_t& inner) {
  outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= s[d];
  n = s[axis];
  for (int d = axis + 1; d < s.rank; ++d) inner *= s[d];
}

inline float elemF(const Buf& b, int64_t i) { return b.dt == DType::F16 ? halfToFloat(b.as<uint16_t>()[i]) : b.as<float>()[i]; }

inline bool isFloat(DType t) { return t == DType::F32 || t == DType::F16; }

inline const float* fin(OpCtx& c, int i) { return floatData(c, c.in(i)); }

struct ConvGeom {
  int64_t k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1}, p0[2] = {0, 0}, p1[2] = {0, 0};
};

inline ConvGeom convGeom(OpCtx& c, int sp, const int64_t* kernel) {
  ConvGeom g;
  for (int i = 0; i < sp; ++i) g.k[i] = kernel[i];
  if (const auto* v = c.node.attrInts("strides"))
    for (int i = 0; i < sp && i < static_cast<int>(v->size()); ++i) g.s[i] = (*v)[i];
  if (const auto* v = c.node.attrInts("dilations"))
    for (int i = 0; i < sp && i < static_cast<int>(v->size()); ++i) g.d[i] = (*v)[i];
  if (const auto* v = c.node.attrInts("pads")) {
    if (static_cast<int>(v->size()) != 2 * sp) c.bad("pads must have 2 entries per spatial dim");
    for (int i = 0; i < sp; ++i) g.p0[i] = (*v)[i], g.p1[i] = (*v)[sp + i];
  }
  for (int i = 0; i < sp; ++i)  // the loader bounds the attributes; kernels from weights are bounded here
    if (g.k[i] < 1 || g.k[i] > (int64_t{1} << 20) || g.s[i] < 1 || g.d[i] < 1) c.bad("kernel, strides and dilations must be positive");
  auto ap = c.node.attrs.find("auto_pad");
  if (ap != c.node.attrs.end() && ap->second.s != "NOTSET" && !ap->second.s.empty()) c.bad("auto_pad is not supported; export explicit pads");
  return g;
}

inline int64_t outDim(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1, bool ceil) {
  const int64_t eff = d * (k - 1) + 1;
  const int64_t num = in + p0 + p1 - eff;
  return (ceil ? (num + s - 1) / s : num / s) + 1;
}

}  // namespace crt::detail
