// ops.cpp — the ONNX operators of the runtime (opset 13-21 semantics for what `compress export` emits, plus
// com.microsoft MatMulNBits). Every op reads its inputs from an OpCtx and produces outputs through it, so
// memory comes from the session's plan; nothing here allocates on the heap while running.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "runtime/matmul.h"
#include "runtime/op_geometry.h"
#include "runtime/cuda/device_math.h"
#include "runtime/ops_common.h"

namespace crt::detail {


/// Arithmetic binary op for every numeric type; F computes on the widened type.
template <typename Op>
void arith(OpCtx& c) {
  needSameType(c);
  const DType t = c.in(0).dt;
  switch (t) {
    case DType::F32: binaryTyped<float, float>(c, t, [](float a, float b) { return Op::apply(a, b); }); break;
    case DType::F64: binaryTyped<double, double>(c, t, [](double a, double b) { return Op::apply(a, b); }); break;
    case DType::F16: binaryHalf(c, [](float a, float b) { return Op::apply(a, b); }); break;
    case DType::I64: binaryTyped<int64_t, int64_t>(c, t, [](int64_t a, int64_t b) { return Op::applyInt(a, b); }); break;
    case DType::I32: binaryTyped<int32_t, int32_t>(c, t, [](int32_t a, int32_t b) { return static_cast<int32_t>(Op::applyInt(a, b)); }); break;
    default: c.bad(std::string("unsupported type ") + dtypeName(t));
  }
}

struct AddOp {
  static float apply(float a, float b) { return a + b; }
  static double apply(double a, double b) { return a + b; }
  static int64_t applyInt(int64_t a, int64_t b) { return a + b; }
};
struct SubOp {
  static float apply(float a, float b) { return a - b; }
  static double apply(double a, double b) { return a - b; }
  static int64_t applyInt(int64_t a, int64_t b) { return a - b; }
};
struct MulOp {
  static float apply(float a, float b) { return a * b; }
  static double apply(double a, double b) { return a * b; }
  static int64_t applyInt(int64_t a, int64_t b) { return a * b; }
};
struct DivOp {
  static float apply(float a, float b) { return a / b; }
  static double apply(double a, double b) { return a / b; }
  static int64_t applyInt(int64_t a, int64_t b) { return b == 0 ? 0 : a / b; }  // truncation, as ONNX
};
struct PowOp {
  static float apply(float a, float b) { return b == 2.f ? a * a : std::pow(a, b); }
  static double apply(double a, double b) { return std::pow(a, b); }
  static int64_t applyInt(int64_t a, int64_t b) {
    int64_t r = 1;
    for (int64_t i = 0; i < b; ++i) r *= a;
    return r;
  }
};
struct MaxOp {
  static float apply(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }
  static double apply(double a, double b) { return std::max(a, b); }
  static int64_t applyInt(int64_t a, int64_t b) { return std::max(a, b); }
};
struct MinOp {
  static float apply(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b); }
  static double apply(double a, double b) { return std::min(a, b); }
  static int64_t applyInt(int64_t a, int64_t b) { return std::min(a, b); }
};

void opAdd(OpCtx& c) { arith<AddOp>(c); }
void opSub(OpCtx& c) { arith<SubOp>(c); }
void opMul(OpCtx& c) { arith<MulOp>(c); }
void opDiv(OpCtx& c) { arith<DivOp>(c); }
void opMax(OpCtx& c) {
  if (c.nin() == 1) return c.aliasOut(0, 0, c.in(0).shape);
  if (c.nin() != 2) c.bad("Max with more than two inputs is not supported");
  arith<MaxOp>(c);
}
void opMin(OpCtx& c) {
  if (c.nin() == 1) return c.aliasOut(0, 0, c.in(0).shape);
  if (c.nin() != 2) c.bad("Min with more than two inputs is not supported");
  arith<MinOp>(c);
}
void opPow(OpCtx& c) {
  // the exponent may have its own type (ONNX allows it); the common case is a float scalar exponent
  const Buf& b = c.in(1);
  if (b.dt != c.in(0).dt) {
    if (b.numel() != 1) c.bad("a Pow exponent of another type must be a scalar");
    double e = b.dt == DType::F32 ? b.as<float>()[0] : b.dt == DType::I64 ? double(b.as<int64_t>()[0])
             : b.dt == DType::F64 ? b.as<double>()[0] : b.dt == DType::I32 ? double(b.as<int32_t>()[0]) : NAN;
    const Buf& a = c.in(0);
    if (a.dt != DType::F32) c.bad("Pow with mixed types supports float32 bases");
    float* y = c.outT<float>(0, a.shape);
    const float* x = a.as<float>();
    const int64_t n = a.numel();
    const float ef = static_cast<float>(e);
    for (int64_t i = 0; i < n; ++i) y[i] = PowOp::apply(x[i], ef);
    return;
  }
  arith<PowOp>(c);
}

template <typename Cmp>
void compare(OpCtx& c) {
  needSameType(c);
  const DType t = c.in(0).dt;
  switch (t) {
    case DType::F32: binaryTyped<float, uint8_t>(c, DType::Bool, [](float a, float b) { return uint8_t(Cmp()(a, b)); }); break;
    case DType::F16: binaryTyped<Half, uint8_t>(c, DType::Bool, [](Half a, Half b) { return uint8_t(Cmp()(float(a), float(b))); }); break;
    case DType::I64: binaryTyped<int64_t, uint8_t>(c, DType::Bool, [](int64_t a, int64_t b) { return uint8_t(Cmp()(a, b)); }); break;
    case DType::I32: binaryTyped<int32_t, uint8_t>(c, DType::Bool, [](int32_t a, int32_t b) { return uint8_t(Cmp()(a, b)); }); break;
    case DType::Bool: binaryTyped<uint8_t, uint8_t>(c, DType::Bool, [](uint8_t a, uint8_t b) { return uint8_t(Cmp()(a, b)); }); break;
    default: c.bad(std::string("unsupported type ") + dtypeName(t));
  }
}
void opEqual(OpCtx& c) { compare<std::equal_to<>>(c); }
void opLess(OpCtx& c) { compare<std::less<>>(c); }
void opGreater(OpCtx& c) { compare<std::greater<>>(c); }
void opLessOrEqual(OpCtx& c) { compare<std::less_equal<>>(c); }
void opGreaterOrEqual(OpCtx& c) { compare<std::greater_equal<>>(c); }

/// Mod: fmod=0 takes the divisor's sign (Python / torch.remainder), fmod=1 the dividend's (C fmod).
/// An integer division by zero gives 0 (no trap on hostile data).
template <bool Fmod>
struct ModOp {
  template <typename T>
  static T apply(T a, T b) {
    T r = std::fmod(a, b);
    if (!Fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
  }
  static int64_t applyInt(int64_t a, int64_t b) {
    if (b == 0 || (b == -1 && a == std::numeric_limits<int64_t>::min())) return 0;
    int64_t r = a % b;
    if (!Fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
  }
};
void opMod(OpCtx& c) {
  if (c.node.attrInt("fmod", 0)) arith<ModOp<true>>(c);
  else arith<ModOp<false>>(c);
}

template <typename F>
void logic(OpCtx& c, F f) {
  if (c.in(0).dt != DType::Bool || c.in(1).dt != DType::Bool) c.bad("needs bool inputs");
  binaryTyped<uint8_t, uint8_t>(c, DType::Bool, [&](uint8_t a, uint8_t b) { return uint8_t(f(a != 0, b != 0)); });
}
void opAnd(OpCtx& c) { logic(c, [](bool a, bool b) { return a && b; }); }
void opOr(OpCtx& c) { logic(c, [](bool a, bool b) { return a || b; }); }
void opXor(OpCtx& c) { logic(c, [](bool a, bool b) { return a != b; }); }

// ---------------------------------------------------------------- unary
void opSqrt(OpCtx& c) { unaryFloat(c, [](auto v) { return std::sqrt(v); }); }
void opReciprocal(OpCtx& c) { unaryFloat(c, [](auto v) { return decltype(v)(1) / v; }); }
void opExp(OpCtx& c) { unaryFloat(c, [](auto v) { return std::exp(v); }); }
void opLog(OpCtx& c) { unaryFloat(c, [](auto v) { return std::log(v); }); }
void opTanh(OpCtx& c) { unaryFloat(c, [](auto v) { return std::tanh(v); }); }
void opErf(OpCtx& c) { unaryFloat(c, [](auto v) { return std::erf(v); }); }
void opSigmoid(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt == DType::F32) return c.env.k->sigmoid(x.as<float>(), c.outT<float>(0, x.shape), x.numel());
  unaryFloat(c, [](auto v) { return decltype(v)(1) / (decltype(v)(1) + std::exp(-v)); });
}

void opNeg(OpCtx& c) { unarySigned(c, [](auto v) { return -v; }); }
void opAbs(OpCtx& c) { unarySigned(c, [](auto v) { return v < 0 ? -v : v; }); }
void opRelu(OpCtx& c) { unarySigned(c, [](auto v) { return v > 0 ? v : decltype(v)(0); }); }

void opIdentity(OpCtx& c) { c.aliasOut(0, 0, c.in(0).shape); }

void opWhere(OpCtx& c) {
  const Buf& cond = c.in(0);
  const Buf& a = c.in(1);
  const Buf& b = c.in(2);
  if (cond.dt != DType::Bool) c.bad("condition must be bool");
  if (a.dt != b.dt) c.bad("X and Y types differ");
  Shape os = broadcastShape(c, broadcastShape(c, cond.shape, a.shape), b.shape);
  const size_t es = dtypeSize(a.dt);
  uint8_t* y = static_cast<uint8_t*>(c.out(0, a.dt, os));
  Shape ins[3] = {cond.shape, a.shape, b.shape};
  const uint8_t* pc = cond.as<uint8_t>();
  const uint8_t* pa = a.as<uint8_t>();
  const uint8_t* pb = b.as<uint8_t>();
  broadcastLoop<3>(os, ins, [&](const int64_t* off, int64_t o, int64_t n, const int64_t* inner) {
    for (int64_t i = 0; i < n; ++i) {
      const bool t = pc[off[0] + i * inner[0]] != 0;
      const uint8_t* src = t ? pa + (off[1] + i * inner[1]) * es : pb + (off[2] + i * inner[2]) * es;
      std::memcpy(y + (o + i) * es, src, es);
    }
  });
}


void opCast(OpCtx& c) {
  const Buf& x = c.in(0);
  const DType to = static_cast<DType>(c.node.attrInt("to", 1));
  if (!castable(to) || !castable(x.dt)) c.bad(std::string("cannot cast ") + dtypeName(x.dt) + " to " + dtypeName(to));
  if (to == x.dt) return c.aliasOut(0, 0, x.shape);
  void* y = c.out(0, to, x.shape);
  const int64_t n = x.numel();
  if (x.dt == DType::F32 && to == DType::F16) {
    floatToHalfN(c, x.as<float>(), static_cast<uint16_t*>(y), n);
  } else if (x.dt == DType::F16 && to == DType::F32) {
    halfToFloatN(c, x.as<uint16_t>(), static_cast<float*>(y), n);
  } else {
    for (int64_t i = 0; i < n; ++i) storeElem(to, y, i, loadElem(x.dt, x.data, i));
  }
}

// ---------------------------------------------------------------- shape ops
void opShape(OpCtx& c) {
  const Shape& s = c.in(0).shape;
  int64_t r = s.rank, start = c.node.attrInt("start", 0), end = c.node.attrInt("end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, 0, r);
  Shape os{std::max<int64_t>(0, end - start)};
  int64_t* y = c.outT<int64_t>(0, os);
  for (int64_t i = start; i < end; ++i) y[i - start] = s[static_cast<int>(i)];
}

void opReshape(OpCtx& c) {
  const Buf& x = c.in(0);
  int64_t v[kMaxRank];
  int64_t n = readInts(c.in(1), v, kMaxRank, c);
  const bool allowzero = c.node.attrInt("allowzero", 0) != 0;
  Shape s;
  int infer = -1;
  int64_t known = 1;
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = v[i];
    if (d == 0 && !allowzero) {
      if (i >= x.shape.rank) c.bad("shape entry 0 copies a dim the input lacks");
      d = x.shape[static_cast<int>(i)];
    }
    if (d == -1) {
      if (infer >= 0) c.bad("more than one -1 in the target shape");
      infer = static_cast<int>(i);
      d = 1;
    } else if (d < 0) {
      c.bad("negative dim " + std::to_string(d) + " in the target shape");
    }
    s.push(d);
    if (!checkedMul(known, d, &known)) c.bad("target shape " + s.str() + " overflows");
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0) c.bad("cannot reshape " + x.shape.str() + " to " + s.str());
    s[infer] = x.numel() / known;
  }
  if (s.numel() != x.numel()) c.bad("cannot reshape " + x.shape.str() + " to " + s.str());
  c.aliasOut(0, 0, s);
}

void opFlatten(OpCtx& c) {
  const Buf& x = c.in(0);
  int64_t axis = c.node.attrInt("axis", 1);
  if (axis < 0) axis += x.shape.rank;
  if (axis < 0 || axis > x.shape.rank) c.bad("axis out of range");
  int64_t outer = 1;
  for (int i = 0; i < axis; ++i) outer *= x.shape[i];
  c.aliasOut(0, 0, Shape{outer, outer == 0 ? 0 : x.numel() / std::max<int64_t>(outer, 1)});
}


void opUnsqueeze(OpCtx& c) {
  const Buf& x = c.in(0);
  int64_t axes[kMaxRank], n;
  axesOf(c, 1, "axes", axes, n);
  const int r = x.shape.rank + static_cast<int>(n);
  bool mark[kMaxRank] = {};
  for (int64_t i = 0; i < n; ++i) {
    int64_t a = normAxis(c, axes[i], r);
    if (mark[a]) c.bad("repeated axis");
    mark[a] = true;
  }
  Shape s;
  int src = 0;
  for (int i = 0; i < r; ++i) s.push(mark[i] ? 1 : x.shape[src++]);
  c.aliasOut(0, 0, s);
}

void opSqueeze(OpCtx& c) {
  const Buf& x = c.in(0);
  int64_t axes[kMaxRank], n;
  axesOf(c, 1, "axes", axes, n);
  bool drop[kMaxRank] = {};
  if (n == 0) {
    for (int i = 0; i < x.shape.rank; ++i) drop[i] = x.shape[i] == 1;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      int64_t a = normAxis(c, axes[i], x.shape.rank);
      if (x.shape[static_cast<int>(a)] != 1) c.bad("cannot squeeze axis " + std::to_string(a) + " of size " + std::to_string(x.shape[static_cast<int>(a)]));
      drop[a] = true;
    }
  }
  Shape s;
  for (int i = 0; i < x.shape.rank; ++i)
    if (!drop[i]) s.push(x.shape[i]);
  c.aliasOut(0, 0, s);
}


StridedView transposeView(const OpCtx& c, const Buf& x) {
  const int r = x.shape.rank;
  int64_t perm[kMaxRank];
  const auto* p = c.node.attrInts("perm");
  if (p) {
    if (static_cast<int>(p->size()) != r) c.bad("perm has " + std::to_string(p->size()) + " entries for a rank-" + std::to_string(r) + " input");
    for (int i = 0; i < r; ++i) perm[i] = normAxis(c, (*p)[i], r);
  } else {
    for (int i = 0; i < r; ++i) perm[i] = r - 1 - i;
  }
  StridedView v;
  int64_t ist[kMaxRank] = {};
  contiguousStrides(x.shape, ist);
  for (int i = 0; i < r; ++i) {
    v.os.push(x.shape[static_cast<int>(perm[i])]);
    v.st[i] = ist[perm[i]];
  }
  return v;
}

bool viewKeepsOrder(const StridedView& v) {
  if (v.offset != 0) return false;
  int64_t expect = 1;
  for (int i = v.os.rank - 1; i >= 0; --i) {
    if (v.os[i] == 1) continue;  // (any stride: one index)
    if (v.st[i] != expect) return false;
    expect *= v.os[i];
  }
  return true;
}

/// Output 0 = the strided view v of input x (Transpose, Slice, Expand): an alias of x where v keeps its order
/// (a decode step's 60 head transposes 0.9 us each as copies). A large copy is split over the pool along its first
/// axis longer than one (the axes before it have a single index, so each part is one range of y): the attention
/// heads' transposes of a 2-thread prefill took 2% of it on one thread.
static void copyView(OpCtx& c, const Buf& x, const StridedView& v) {
  if (viewKeepsOrder(v) && v.os.numel() == x.numel()) return c.aliasOut(0, 0, v.os);  // the same bytes: no copy
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, v.os));
  const size_t es = dtypeSize(x.dt);
  const int64_t total = v.os.numel();
  if (total == 0) return;
  const uint8_t* src = x.as<uint8_t>() + v.offset * es;
  int d = 0;
  while (d < v.os.rank && v.os[d] == 1) ++d;
  const int64_t tasks = c.env.pool && total >= kParallelElements && d < v.os.rank ? std::min<int64_t>(c.env.pool->size(), v.os[d]) : 1;
  if (tasks <= 1) return stridedCopy(src, v.st, v.os, y, es);
  const int64_t inner = total / v.os[d];  // elements of y per index of axis d
  c.env.pool->parallelFor(tasks, [&](int64_t t) {
    const int64_t b = v.os[d] * t / tasks, e = v.os[d] * (t + 1) / tasks;
    Shape part = v.os;
    part.d[d] = e - b;
    if (e > b) stridedCopy(src + b * v.st[d] * static_cast<int64_t>(es), v.st, part, y + b * inner * static_cast<int64_t>(es), es);
  });
}

void opTranspose(OpCtx& c) { copyView(c, c.in(0), transposeView(c, c.in(0))); }

StridedView sliceView(const OpCtx& c, const Buf& x) {
  const int r = x.shape.rank;
  int64_t starts[kMaxRank], ends[kMaxRank], axes[kMaxRank], steps[kMaxRank];
  int64_t n = readInts(c.in(1), starts, kMaxRank, c);
  if (readInts(c.in(2), ends, kMaxRank, c) != n) c.bad("starts and ends differ in length");
  if (c.has(3)) {
    if (readInts(c.in(3), axes, kMaxRank, c) != n) c.bad("axes and starts differ in length");
  } else {
    for (int64_t i = 0; i < n; ++i) axes[i] = i;
  }
  if (c.has(4)) {
    if (readInts(c.in(4), steps, kMaxRank, c) != n) c.bad("steps and starts differ in length");
  } else {
    for (int64_t i = 0; i < n; ++i) steps[i] = 1;
  }
  int64_t begin[kMaxRank] = {}, step[kMaxRank];
  StridedView v;
  v.os = x.shape;
  Shape& os = v.os;
  for (int i = 0; i < r; ++i) step[i] = 1;
  for (int64_t i = 0; i < n; ++i) {
    const int ax = static_cast<int>(normAxis(c, axes[i], r));
    const int64_t dim = x.shape[ax];
    if (steps[i] == 0) c.bad("step 0");
    // a step longer than the axis takes at most one element: clamping it keeps offsets from overflowing
    const int64_t sp = std::clamp<int64_t>(steps[i], -std::max<int64_t>(dim, 1), std::max<int64_t>(dim, 1));
    int64_t s = starts[i], e = ends[i];
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (sp > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      os[ax] = e > s ? (e - s - 1) / sp + 1 : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      os[ax] = s > e ? (s - e - 1) / (-sp) + 1 : 0;
    }
    begin[ax] = s;
    step[ax] = sp;
  }
  int64_t ist[kMaxRank] = {};
  contiguousStrides(x.shape, ist);
  for (int i = 0; i < r; ++i) {
    v.offset += begin[i] * ist[i];
    v.st[i] = ist[i] * step[i];
  }
  return v;
}

void opSlice(OpCtx& c) { copyView(c, c.in(0), sliceView(c, c.in(0))); }

ConcatLayout concatLayout(const OpCtx& c) {
  if (c.nin() == 0) c.bad("Concat needs at least one input");
  const Buf& first = c.in(0);
  const int r = first.shape.rank;
  ConcatLayout l;
  l.axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", 0), r));
  l.os = first.shape;
  l.os[l.axis] = 0;
  for (int i = 0; i < c.nin(); ++i) {
    const Buf& b = c.in(i);
    if (b.dt != first.dt || b.shape.rank != r) c.bad("inputs differ in type or rank");
    for (int d = 0; d < r; ++d)
      if (d != l.axis && b.shape[d] != first.shape[d]) c.bad("inputs do not agree outside the concatenation axis");
    l.os[l.axis] += b.shape[l.axis];
  }
  for (int d = 0; d < l.axis; ++d) l.outer *= l.os[d];
  for (int d = l.axis + 1; d < r; ++d) l.inner *= l.os[d];
  return l;
}

void opConcat(OpCtx& c) {
  const ConcatLayout l = concatLayout(c);
  const int axis = l.axis;
  const int64_t outer = l.outer, inner = l.inner;
  const Buf& first = c.in(0);
  const size_t es = dtypeSize(first.dt);
  uint8_t* y = static_cast<uint8_t*>(c.out(0, first.dt, l.os));
  const int64_t orow = l.os[axis] * inner * es;
  bool single = inner == 1 && (es == 2 || es == 4 || es == 8);
  for (int i = 0; i < c.nin() && single; ++i) single = c.in(i).shape[axis] == 1;
  if (single) {  // torch.stack(dim=-1): one element of each input per output row (RoPE's pairs), interleaved
    auto interleave = [&](auto tag) {
      using T = decltype(tag);
      T* out = reinterpret_cast<T*>(y);
      const int k = c.nin();
      for (int i = 0; i < k; ++i) {
        const T* in = c.in(i).as<T>();
        for (int64_t o = 0; o < outer; ++o) out[o * k + i] = in[o];
      }
    };
    if (es == 2) interleave(uint16_t{});
    else if (es == 4) interleave(uint32_t{});
    else interleave(uint64_t{});
    return;
  }
  int64_t col = 0;
  for (int i = 0; i < c.nin(); ++i) {
    const Buf& b = c.in(i);
    const int64_t brow = b.shape[axis] * inner * es;
    for (int64_t o = 0; o < outer; ++o) copyRow(y + o * orow + col, b.as<uint8_t>() + o * brow, brow);
    col += brow;
  }
}

std::vector<StridedView> splitViews(const OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", 0), r));
  const int k = static_cast<int>(c.node.out.size());
  int64_t sizes[64];
  if (k > 64) c.bad("more than 64 outputs");
  const int64_t dim = x.shape[axis];
  if (c.has(1)) {
    if (readInts(c.in(1), sizes, 64, c) != k) c.bad("split has a size per output");
  } else if (const auto* a = c.node.attrInts("split")) {
    if (static_cast<int>(a->size()) != k) c.bad("split has a size per output");
    for (int i = 0; i < k; ++i) sizes[i] = (*a)[i];
  } else {
    const int64_t each = (dim + k - 1) / k;
    for (int i = 0; i < k; ++i) sizes[i] = std::min(each, dim - each * i);
  }
  int64_t total = 0;
  for (int i = 0; i < k; ++i) {
    if (sizes[i] < 0 || sizes[i] > dim) c.bad("split size " + std::to_string(sizes[i]) + " is outside [0, " + std::to_string(dim) + "]");
    total += sizes[i];
  }
  if (total != dim) c.bad("split sizes do not add up to the axis size " + std::to_string(dim));
  std::vector<StridedView> views(static_cast<size_t>(k));
  int64_t st[kMaxRank];
  contiguousStrides(x.shape, st);
  int64_t at = 0;
  for (int i = 0; i < k; ++i) {
    StridedView& v = views[static_cast<size_t>(i)];
    v.os = x.shape;
    v.os[axis] = sizes[i];
    for (int d = 0; d < r; ++d) v.st[d] = st[d];
    v.offset = at * st[axis];
    at += sizes[i];
  }
  return views;
}

void opSplit(OpCtx& c) {
  const Buf& x = c.in(0);
  const size_t es = dtypeSize(x.dt);
  const std::vector<StridedView> views = splitViews(c);
  for (size_t i = 0; i < views.size(); ++i) {
    uint8_t* y = static_cast<uint8_t*>(c.out(static_cast<int>(i), x.dt, views[i].os));
    stridedCopy(x.as<uint8_t>() + views[i].offset * static_cast<int64_t>(es), views[i].st, views[i].os, y, es);
  }
}

StridedView expandView(const OpCtx& c, const Buf& x) {
  int64_t v[kMaxRank];
  int64_t n = readInts(c.in(1), v, kMaxRank, c);
  Shape target;
  for (int64_t i = 0; i < n; ++i) target.push(v[i]);
  StridedView sv;
  sv.os = broadcastShape(c, x.shape, target);
  bstrides(x.shape, sv.os, sv.st);
  return sv;
}

void opExpand(OpCtx& c) { copyView(c, c.in(0), expandView(c, c.in(0))); }

namespace {

/// Gather's checked geometry: the axis, its size and the output shape (indices int64 or int32, each in range).
struct GatherGeometry {
  int axis = 0;
  int64_t size = 0;
  Shape os;
};

int64_t indexAt(const Buf& idx, int64_t i) { return idx.dt == DType::I64 ? idx.as<int64_t>()[i] : idx.as<int32_t>()[i]; }

GatherGeometry gatherGeometry(const OpCtx& c, const Buf& x, const Buf& idx) {
  if (idx.dt != DType::I64 && idx.dt != DType::I32) c.bad("indices must be int64 or int32");
  const int r = x.shape.rank;
  if (r == 0) c.bad("cannot gather from a scalar");
  GatherGeometry gg;
  gg.axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", 0), r));
  for (int d = 0; d < gg.axis; ++d) gg.os.push(x.shape[d]);
  for (int d = 0; d < idx.shape.rank; ++d) gg.os.push(idx.shape[d]);
  for (int d = gg.axis + 1; d < r; ++d) gg.os.push(x.shape[d]);
  gg.size = x.shape[gg.axis];
  for (int64_t i = 0, ni = idx.numel(); i < ni; ++i) {
    const int64_t j = indexAt(idx, i);
    if (j < -gg.size || j >= gg.size) c.bad("index " + std::to_string(j) + " is out of range for an axis of size " + std::to_string(gg.size));
  }
  return gg;
}

}  // namespace

StridedView gatherView(const OpCtx& c, const Buf& x) {
  const Buf& idx = c.in(1);
  const GatherGeometry gg = gatherGeometry(c, x, idx);
  if (idx.numel() != 1) c.bad("a strided Gather takes one index (this node has " + std::to_string(idx.numel()) + ")");
  int64_t ist[kMaxRank] = {};
  contiguousStrides(x.shape, ist);
  StridedView v;
  v.os = gg.os;
  const int64_t j = indexAt(idx, 0);
  v.offset = (j < 0 ? j + gg.size : j) * ist[gg.axis];
  // output dims: x's before the axis, the index's (all of size 1: any stride), x's after it
  int o = 0;
  for (int d = 0; d < gg.axis; ++d) v.st[o++] = ist[d];
  for (int d = 0; d < idx.shape.rank; ++d) v.st[o++] = 0;
  for (int d = gg.axis + 1; d < x.shape.rank; ++d) v.st[o++] = ist[d];
  return v;
}

void opGather(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& idx = c.in(1);
  if (idx.numel() == 1) return copyView(c, x, gatherView(c, x));  // one slab: the device's strided copy
  const GatherGeometry gg = gatherGeometry(c, x, idx);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < gg.axis; ++d) outer *= x.shape[d];
  for (int d = gg.axis + 1; d < x.shape.rank; ++d) inner *= x.shape[d];
  const size_t es = dtypeSize(x.dt), row = inner * es;
  const int64_t ni = idx.numel(), size = gg.size;
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, gg.os));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < ni; ++i) {
      int64_t j = indexAt(idx, i);
      if (j < 0) j += size;
      std::memcpy(y + (o * ni + i) * row, x.as<uint8_t>() + (o * size + j) * row, row);
    }
}

// ---------------------------------------------------------------- reductions and normalizations

template <bool Log>
void softmaxF32(const float* x, float* y, int64_t outer, int64_t n, int64_t inner) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const float* p = x + o * n * inner + i;
      float* q = y + o * n * inner + i;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, p[j * inner]);
      float s = 0;
      for (int64_t j = 0; j < n; ++j) {
        float e = std::exp(p[j * inner] - m);
        if (!Log) q[j * inner] = e;
        s += e;
      }
      if (Log) {
        const float ls = std::log(s);
        for (int64_t j = 0; j < n; ++j) q[j * inner] = p[j * inner] - m - ls;
      } else {
        const float inv = 1.f / s;
        for (int64_t j = 0; j < n; ++j) q[j * inner] *= inv;
      }
    }
}

template <bool Log>
void softmaxOp(OpCtx& c) {
  const Buf& x = c.in(0);
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", -1), x.shape.rank));
  int64_t outer, n, inner;
  splitAt(x.shape, axis, outer, n, inner);
  if (x.dt == DType::F32 && inner == 1 && !Log) {  // rows are independent: large ones split over the pool
    const float* X = x.as<float>();
    float* Y = c.outT<float>(0, x.shape);
    parallelRows(c, outer, outer * n, [&](int64_t r0, int64_t r1) { c.env.k->softmax(X + r0 * n, Y + r0 * n, r1 - r0, n); });
  } else if (x.dt == DType::F32) {
    softmaxF32<Log>(x.as<float>(), c.outT<float>(0, x.shape), outer, n, inner);
  } else if (x.dt == DType::F16) {
    const int64_t total = x.numel();
    float* tmp = static_cast<float*>(c.scratch(2 * total * sizeof(float)));
    for (int64_t i = 0; i < total; ++i) tmp[i] = halfToFloat(x.as<uint16_t>()[i]);
    softmaxF32<Log>(tmp, tmp + total, outer, n, inner);
    uint16_t* y = static_cast<uint16_t*>(c.out(0, DType::F16, x.shape));
    for (int64_t i = 0; i < total; ++i) y[i] = floatToHalf(tmp[total + i]);
  } else {
    c.bad("needs float input");
  }
}
void opSoftmax(OpCtx& c) { softmaxOp<false>(c); }
void opLogSoftmax(OpCtx& c) { softmaxOp<true>(c); }

enum class Red { Mean, Max, Min, Sum, Prod, L2 };

template <Red R>
inline float combine(float acc, float v) {
  if constexpr (R == Red::Max) return std::isnan(v) ? v : std::max(acc, v);
  if constexpr (R == Red::Min) return std::isnan(v) ? v : std::min(acc, v);
  if constexpr (R == Red::Prod) return acc * v;
  if constexpr (R == Red::L2) return acc + v * v;
  return acc + v;
}

template <Red R>
void reduceOp(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  int64_t axes[kMaxRank], n = 0;
  axesOf(c, 1, "axes", axes, n);
  const bool keep = c.node.attrInt("keepdims", 1) != 0;
  bool red[kMaxRank] = {};
  if (n == 0) {
    if (c.node.attrInt("noop_with_empty_axes", 0)) return c.aliasOut(0, 0, x.shape);
    for (int d = 0; d < r; ++d) red[d] = true;
  }
  for (int64_t i = 0; i < n; ++i) red[normAxis(c, axes[i], r)] = true;
  Shape os, kept;
  for (int d = 0; d < r; ++d) {
    kept.push(red[d] ? 1 : x.shape[d]);
    if (!red[d]) os.push(x.shape[d]);
    else if (keep) os.push(1);
  }
  if (x.dt != DType::F32 && x.dt != DType::F16) c.bad("needs float input");
  const bool half = x.dt == DType::F16;
  void* yv = c.out(0, x.dt, os);
  const int64_t m = kept.numel();
  float* acc = static_cast<float*>(c.scratch(m * sizeof(float)));
  const float init = R == Red::Max ? -std::numeric_limits<float>::infinity()
                     : R == Red::Min ? std::numeric_limits<float>::infinity() : R == Red::Prod ? 1.f : 0.f;
  for (int64_t i = 0; i < m; ++i) acc[i] = init;
  // fast path: reducing the trailing axes of a contiguous tensor
  int firstRed = r;
  while (firstRed > 0 && red[firstRed - 1]) --firstRed;
  bool trailing = true;
  for (int d = 0; d < firstRed; ++d) trailing &= !red[d];
  const int64_t count = m == 0 ? 0 : x.numel() / m;
  if (trailing && !half) {  // (split over the pool it made SmoothQuant's per-token prefill slower: 34 -> 44 ms)
    // kRows rows side by side: each row's reduction is a chain of dependent operations, kept in its order (the
    // same bits), and the rows' chains overlap
    constexpr int64_t kRows = 8;
    const float* p = x.as<float>();
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows) {
      float a[kRows];
      for (int64_t k = 0; k < kRows; ++k) a[k] = acc[i + k];
      const float* q = p + i * count;
      for (int64_t j = 0; j < count; ++j)
        for (int64_t k = 0; k < kRows; ++k) a[k] = combine<R>(a[k], q[k * count + j]);
      for (int64_t k = 0; k < kRows; ++k) acc[i + k] = a[k];
    }
    for (; i < m; ++i) {
      const float* q = p + i * count;
      float a = acc[i];
      for (int64_t j = 0; j < count; ++j) a = combine<R>(a, q[j]);
      acc[i] = a;
    }
  } else {
    int64_t st[kMaxRank];
    bstrides(kept, x.shape, st);
    int64_t idx[kMaxRank] = {};
    int64_t off = 0;
    const int64_t total = x.numel();
    for (int64_t i = 0; i < total; ++i) {
      const float v = half ? halfToFloat(x.as<uint16_t>()[i]) : x.as<float>()[i];
      acc[off] = combine<R>(acc[off], v);
      for (int d = r - 1; d >= 0; --d) {
        ++idx[d];
        off += st[d];
        if (idx[d] < x.shape[d]) break;
        off -= st[d] * x.shape[d];
        idx[d] = 0;
      }
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    const float v = R == Red::Mean ? acc[i] / static_cast<float>(count) : R == Red::L2 ? std::sqrt(acc[i]) : acc[i];
    if (half) static_cast<uint16_t*>(yv)[i] = floatToHalf(v);
    else static_cast<float*>(yv)[i] = v;
  }
}
void opReduceMean(OpCtx& c) { reduceOp<Red::Mean>(c); }
void opReduceMax(OpCtx& c) { reduceOp<Red::Max>(c); }
void opReduceSum(OpCtx& c) { reduceOp<Red::Sum>(c); }
void opReduceMin(OpCtx& c) { reduceOp<Red::Min>(c); }
void opReduceProd(OpCtx& c) { reduceOp<Red::Prod>(c); }
void opReduceL2(OpCtx& c) { reduceOp<Red::L2>(c); }


LayerNormRows layerNormRows(const OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& g = c.in(1);
  const int r = x.shape.rank;
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", -1), r));
  LayerNormRows l;
  l.eps = c.node.attrFloat("epsilon", 1e-5f);
  for (int d = 0; d < axis; ++d) l.outer *= x.shape[d];
  for (int d = axis; d < r; ++d) l.n *= x.shape[d];
  if (g.numel() != l.n && g.numel() != 1) c.bad("scale of " + g.shape.str() + " does not match the normalized size " + std::to_string(l.n));
  l.scalarScale = g.numel() == 1;
  if (c.has(2)) {
    const Buf& b = c.in(2);
    if (b.numel() != l.n && b.numel() != 1) c.bad("bias of " + b.shape.str() + " does not match the normalized size " + std::to_string(l.n));
    l.hasBias = true, l.scalarBias = b.numel() == 1;
  }
  if (x.dt != DType::F32 && x.dt != DType::F16) c.bad("needs float input");
  return l;
}

void opLayerNormalization(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& g = c.in(1);
  const LayerNormRows l = layerNormRows(c);
  const int64_t outer = l.outer, n = l.n;
  const float eps = l.eps;
  const Buf* b = l.hasBias ? &c.in(2) : nullptr;
  void* y = c.out(0, x.dt, x.shape);
  for (int64_t o = 0; o < outer; ++o) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < n; ++j) mean += elemF(x, o * n + j);
    mean /= n;
    for (int64_t j = 0; j < n; ++j) {
      double d = elemF(x, o * n + j) - mean;
      var += d * d;
    }
    var /= n;
    const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    for (int64_t j = 0; j < n; ++j) {
      const float v = device::layerNormValue(elemF(x, o * n + j), static_cast<float>(mean), inv, elemF(g, l.scalarScale ? 0 : j),
                                             l.hasBias, b ? elemF(*b, l.scalarBias ? 0 : j) : 0.f);
      if (x.dt == DType::F16) static_cast<uint16_t*>(y)[o * n + j] = floatToHalf(v);
      else static_cast<float*>(y)[o * n + j] = v;
    }
  }
}

void opBatchNormalization(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt != DType::F32) c.bad("needs float32 input");
  if (x.shape.rank < 2) c.bad("needs an input of rank >= 2");
  const int64_t N = x.shape[0], C = x.shape[1], inner = x.numel() / std::max<int64_t>(1, N * C);
  for (int i = 1; i <= 4; ++i)
    if (c.in(i).numel() != C) c.bad("parameter " + std::to_string(i) + " has " + std::to_string(c.in(i).numel()) + " values for " + std::to_string(C) + " channels");
  const float eps = c.node.attrFloat("epsilon", 1e-5f);
  float* y = c.outT<float>(0, x.shape);
  for (int64_t ch = 0; ch < C; ++ch) {
    const float s = c.in(1).as<float>()[ch] / std::sqrt(c.in(4).as<float>()[ch] + eps);
    const float sh = c.in(2).as<float>()[ch] - c.in(3).as<float>()[ch] * s;
    for (int64_t n = 0; n < N; ++n) {
      const float* p = x.as<float>() + (n * C + ch) * inner;
      float* q = y + (n * C + ch) * inner;
      for (int64_t i = 0; i < inner; ++i) q[i] = p[i] * s + sh;
    }
  }
}

// ---------------------------------------------------------------- Gemm, Conv, pooling
// These compute in float32; float16 tensors (fp16 exports) are converted on the way in and out.

/// Gemm in float32; float16 inputs are computed in float32 (floatData) and the result rounded back.
void opGemm(OpCtx& c) {
  const Buf& a = c.in(0);
  const Buf& b = c.in(1);
  if (!isFloat(a.dt) || b.dt != a.dt) c.bad("Gemm supports float32 and float16 inputs of one type");
  if (a.shape.rank != 2 || b.shape.rank != 2) c.bad("Gemm needs 2-D inputs");
  const bool ta = c.node.attrInt("transA", 0), tb = c.node.attrInt("transB", 0);
  const int64_t M = ta ? a.shape[1] : a.shape[0], K = ta ? a.shape[0] : a.shape[1];
  const int64_t Kb = tb ? b.shape[1] : b.shape[0], N = tb ? b.shape[0] : b.shape[1];
  if (K != Kb) c.bad("inner dims differ: " + a.shape.str() + " x " + b.shape.str());
  const float alpha = c.node.attrFloat("alpha", 1.f), beta = c.node.attrFloat("beta", 1.f);
  const float* A = floatData(c, a);
  const float* B = floatData(c, b);
  FloatOut o = floatOut(c, a.dt, Shape{M, N});
  float* y = o.p;
  if (ta) {
    float* t = static_cast<float*>(c.scratch(M * K * sizeof(float)));
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < M; ++j) t[j * K + i] = A[i * M + j];
    A = t;
  }
  if (tb) matmulNT(c, M, N, K, A, B, y);
  else matmulNN(c, M, N, K, A, B, y);
  if (alpha != 1.f)
    for (int64_t i = 0; i < M * N; ++i) y[i] *= alpha;
  if (c.has(2)) {
    const Buf& cb = c.in(2);
    if (cb.dt != a.dt || cb.shape.rank > 2) c.bad("C must have A's type and rank <= 2");
    const float* C = floatData(c, cb);
    Shape os{M, N};
    broadcastShape(c, cb.shape, os);
    int64_t st[kMaxRank];
    bstrides(cb.shape, os, st);
    const int64_t s0 = st[0], s1 = st[1];  // strides over the output's [M, N] (0 on broadcast dims)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) y[i * N + j] += beta * C[i * s0 + j * s1];
  }
  finish(o);
}


void opConv(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& w = c.in(1);
  if (!isFloat(x.dt) || w.dt != x.dt) c.bad("Conv supports float32 and float16 inputs of one type");
  if (x.shape.rank != 4 && x.shape.rank != 3) c.bad("Conv supports 1-D and 2-D convolutions");
  const int sp = x.shape.rank - 2;
  if (w.shape.rank != x.shape.rank) c.bad("weight " + w.shape.str() + " must have the input's rank");
  int64_t kernel[2] = {w.shape[2], sp == 2 ? w.shape[3] : 1};
  if (kernel[0] < 1 || kernel[1] < 1) c.bad("empty kernel " + w.shape.str());
  ConvGeom g = convGeom(c, sp, kernel);
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], Wd = sp == 2 ? x.shape[3] : 1;
  const int64_t F = w.shape[0], group = c.node.attrInt("group", 1);
  if (group <= 0 || C % group || F % group || w.shape[1] * group != C)
    c.bad("input " + x.shape.str() + " does not fit weight " + w.shape.str() + " with group " + std::to_string(group));
  const int64_t OH = outDim(H, g.k[0], g.s[0], g.d[0], g.p0[0], g.p1[0], false);
  const int64_t OW = sp == 2 ? outDim(Wd, g.k[1], g.s[1], g.d[1], g.p0[1], g.p1[1], false) : 1;
  if (OH <= 0 || OW <= 0) c.bad("the kernel is larger than the padded input");
  Shape os = sp == 2 ? Shape{N, F, OH, OW} : Shape{N, F, OH};
  const float* X = fin(c, 0);
  const float* Wt = fin(c, 1);
  const float* bias = c.has(2) ? fin(c, 2) : nullptr;
  FloatOut fo = floatOut(c, x.dt, os);
  float* y = fo.p;
  const int64_t Cg = C / group, Fg = F / group, KK = Cg * g.k[0] * g.k[1], P = OH * OW;
  int64_t colElems = 0, colBytes = 0;  // the im2col buffer: kernel size x output pixels can exceed either alone
  if (!checkedMul(KK, P, &colElems) || !checkedBytes(colElems, sizeof(float), &colBytes))
    c.bad("the im2col buffer of " + std::to_string(KK) + " x " + std::to_string(P) + " values is too large");
  float* col = static_cast<float*>(c.scratch(static_cast<size_t>(colBytes)));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t gr = 0; gr < group; ++gr) {
      // im2col: col[(ci, kh, kw), (oh, ow)]
      for (int64_t ci = 0; ci < Cg; ++ci)
        for (int64_t kh = 0; kh < g.k[0]; ++kh)
          for (int64_t kw = 0; kw < g.k[1]; ++kw) {
            float* row = col + ((ci * g.k[0] + kh) * g.k[1] + kw) * P;
            const float* img = X + (n * C + gr * Cg + ci) * H * Wd;
            for (int64_t oh = 0; oh < OH; ++oh) {
              const int64_t ih = oh * g.s[0] - g.p0[0] + kh * g.d[0];
              for (int64_t ow = 0; ow < OW; ++ow) {
                const int64_t iw = ow * g.s[1] - g.p0[1] + kw * g.d[1];
                row[oh * OW + ow] = (ih >= 0 && ih < H && iw >= 0 && iw < Wd) ? img[ih * Wd + iw] : 0.f;
              }
            }
          }
      matmulNN(c, Fg, P, KK, Wt + gr * Fg * KK, col, y + (n * F + gr * Fg) * P);
    }
  if (bias) {
    if (c.in(2).numel() != F) c.bad("bias has " + std::to_string(c.in(2).numel()) + " values for " + std::to_string(F) + " filters");
    for (int64_t n = 0; n < N; ++n)
      for (int64_t f = 0; f < F; ++f) {
        float* p = y + (n * F + f) * P;
        for (int64_t i = 0; i < P; ++i) p[i] += bias[f];
      }
  }
  finish(fo);
}

template <bool Max>
void poolOp(OpCtx& c) {
  const Buf& x = c.in(0);
  if (!isFloat(x.dt)) c.bad("pooling supports float32 and float16");
  if (x.shape.rank != 4) c.bad("pooling supports 2-D inputs [N, C, H, W]");
  const auto* ks = c.node.attrInts("kernel_shape");
  if (!ks || ks->size() != 2) c.bad("kernel_shape must have 2 entries");
  int64_t kernel[2] = {(*ks)[0], (*ks)[1]};
  ConvGeom g = convGeom(c, 2, kernel);
  const bool ceil = c.node.attrInt("ceil_mode", 0) != 0;
  const bool incPad = c.node.attrInt("count_include_pad", 0) != 0;
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], Wd = x.shape[3];
  int64_t OH = outDim(H, g.k[0], g.s[0], g.d[0], g.p0[0], g.p1[0], ceil);
  int64_t OW = outDim(Wd, g.k[1], g.s[1], g.d[1], g.p0[1], g.p1[1], ceil);
  // a ceil-mode window that starts in the right padding is dropped (PyTorch / ONNX Runtime behaviour)
  if (ceil && (OH - 1) * g.s[0] >= H + g.p0[0]) --OH;
  if (ceil && (OW - 1) * g.s[1] >= Wd + g.p0[1]) --OW;
  const float* X = fin(c, 0);
  FloatOut fo = floatOut(c, x.dt, Shape{N, C, OH, OW});
  float* y = fo.p;
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const float* img = X + nc * H * Wd;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        float acc = Max ? -std::numeric_limits<float>::infinity() : 0.f;
        int64_t cnt = 0, padded = 0;
        for (int64_t kh = 0; kh < g.k[0]; ++kh)
          for (int64_t kw = 0; kw < g.k[1]; ++kw) {
            const int64_t ih = oh * g.s[0] - g.p0[0] + kh * g.d[0], iw = ow * g.s[1] - g.p0[1] + kw * g.d[1];
            if (ih < H + g.p1[0] && iw < Wd + g.p1[1]) ++padded;
            if (ih < 0 || ih >= H || iw < 0 || iw >= Wd) continue;
            const float v = img[ih * Wd + iw];
            acc = Max ? std::max(acc, v) : acc + v;
            ++cnt;
          }
        y[(nc * OH + oh) * OW + ow] = Max ? acc : acc / static_cast<float>(incPad ? padded : std::max<int64_t>(cnt, 1));
      }
  }
  finish(fo);
}
void opMaxPool(OpCtx& c) { poolOp<true>(c); }
void opAveragePool(OpCtx& c) { poolOp<false>(c); }

void opGlobalAveragePool(OpCtx& c) {
  const Buf& x = c.in(0);
  if (!isFloat(x.dt) || x.shape.rank < 3) c.bad("needs a float input [N, C, ...]");
  const int64_t NC = x.shape[0] * x.shape[1], inner = x.numel() / std::max<int64_t>(NC, 1);
  Shape os = x.shape;
  for (int d = 2; d < os.rank; ++d) os[d] = 1;
  const float* X = fin(c, 0);
  FloatOut fo = floatOut(c, x.dt, os);
  for (int64_t i = 0; i < NC; ++i) {
    float s = 0;
    for (int64_t j = 0; j < inner; ++j) s += X[i * inner + j];
    fo.p[i] = s / static_cast<float>(inner);
  }
  finish(fo);
}

// ---------------------------------------------------------------- QuantizeLinear, DequantizeLinear
namespace {

/// Where element i of a QuantizeLinear/DequantizeLinear data tensor finds its scale and zero point: per tensor,
/// per `axis` entry, or per block of block_size along `axis` (the parameters then have the data's rank with
/// ceil(n / block_size) entries on that axis). Checks the parameters' sizes and types.
struct QuantParamIndex {
  int64_t n = 1, inner = 1, bs = 0;
  bool perTensor = true;
  int64_t operator()(int64_t i) const {
    if (perTensor) return 0;
    const int64_t o = i / (n * inner), a = (i / inner) % n, in = i % inner;
    return bs > 0 ? (o * ((n + bs - 1) / bs) + a / bs) * inner + in : a;
  }
};

QuantParamIndex quantParamIndex(OpCtx& c, const Buf& data, const Buf& s, const Buf* zp) {
  if (s.dt != DType::F32) c.bad(s.dt == DType::F16 ? "float16 scales are not supported by the runtime yet" : "scale must be float32");
  QuantParamIndex ix;
  ix.bs = c.node.attrInt("block_size", 0);
  if (ix.bs < 0) c.bad("block_size must be >= 0");
  ix.perTensor = s.numel() == 1;
  if (ix.perTensor) {  // axis is ignored (the default 1 need not exist: a rank-1 input)
    if (zp && zp->numel() != 1) c.bad("zero point must have as many values as the scale");
    return ix;
  }
  const int r = std::max(data.shape.rank, 1);
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", 1), r));
  int64_t outer = 1;
  if (data.shape.rank > 0) splitAt(data.shape, axis, outer, ix.n, ix.inner);
  const int64_t want = ix.perTensor ? 1 : ix.bs > 0 ? outer * ((ix.n + ix.bs - 1) / ix.bs) * ix.inner : ix.n;
  if (s.numel() != want) c.bad("scale has " + std::to_string(s.numel()) + " values; input " + data.shape.str() + " needs " + std::to_string(want));
  if (zp && zp->numel() != s.numel()) c.bad("zero point must have as many values as the scale");
  return ix;
}

}  // namespace

void opQuantizeLinear(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& s = c.in(1);
  const Buf* zp = c.has(2) ? &c.in(2) : nullptr;
  DType qt = DType::U8;
  if (zp) qt = zp->dt;
  else if (const int64_t od = c.node.attrInt("output_dtype", 0); od == 3) qt = DType::I8;  // onnx.TensorProto INT8
  else if (od != 0 && od != 2) c.bad("output_dtype " + std::to_string(od) + " is not supported (int8 or uint8)");
  if (qt != DType::I8 && qt != DType::U8) c.bad(std::string("cannot quantize to ") + dtypeName(qt) + " (int8 or uint8)");
  const QuantParamIndex ix = quantParamIndex(c, x, s, zp);
  const float* X = floatData(c, x);
  const float lo = qt == DType::I8 ? -128.f : 0.f, hi = qt == DType::I8 ? 127.f : 255.f;
  void* y = c.out(0, qt, x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t si = ix(i);
    float v = std::nearbyint(X[i] / s.as<float>()[si]) + (zp ? static_cast<float>(quantValue(*zp, si)) : 0.f);
    v = v != v ? 0.f : std::clamp(v, lo, hi);  // NaN has no integer: 0, as ONNX Runtime's conversion gives
    if (qt == DType::I8) static_cast<int8_t*>(y)[i] = static_cast<int8_t>(v);
    else static_cast<uint8_t*>(y)[i] = static_cast<uint8_t>(v);
  }
}

/// (not feeding a MatMul: those are packed at load)
void opDequantizeLinear(OpCtx& c) {
  const Buf& q = c.in(0);
  const Buf& s = c.in(1);
  const Buf* zp = c.has(2) ? &c.in(2) : nullptr;
  if (q.dt != DType::I8 && q.dt != DType::U8 && q.dt != DType::I32 && q.dt != kI4 && q.dt != kU4)
    c.bad(std::string("cannot dequantize ") + dtypeName(q.dt) + " values");
  const QuantParamIndex ix = quantParamIndex(c, q, s, zp);
  if (zp && zp->dt != q.dt) c.bad("zero point must match the scale's size and the input's type");
  float* y = static_cast<float*>(c.out(0, DType::F32, q.shape));
  for (int64_t i = 0; i < q.numel(); ++i) {
    const int64_t si = ix(i);
    const float z = zp ? static_cast<float>(quantValue(*zp, si)) : 0.f;
    y[i] = (static_cast<float>(quantValue(q, i)) - z) * s.as<float>()[si];
  }
}

// ---------------------------------------------------------------- table
namespace {
struct Entry {
  std::string_view domain, name;
  OpFn fn;
};
/// One implementation per row of op_table.def.
const Entry kOps[] = {
#define OP(name, lo, hi, outs, traits) {"", #name, op##name},
#define OPD(domain, name, lo, hi, outs, traits) {#domain, #name, op##name},
#include "runtime/op_table.def"
#undef OP
#undef OPD
};
}  // namespace

OpFn findOp(const std::string& domain, const std::string& op) {
  const std::string_view d = domain == "ai.onnx" ? std::string_view() : std::string_view(domain);
  for (const Entry& e : kOps)
    if (e.name == op && e.domain == d) return e.fn;
  return nullptr;
}

std::vector<std::string> supportedOps() {
  std::vector<std::string> v;
  for (const Entry& e : kOps) v.push_back(e.domain.empty() ? std::string(e.name) : std::string(e.domain) + "." + std::string(e.name));
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace crt::detail
