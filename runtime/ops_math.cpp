// ops_math.cpp — the runtime's activations, logic, index reductions (ArgMax, TopK), CumSum and the
// instance/group normalizations (ONNX opset 13-21 semantics). Float16 inputs compute in float32.
#include <numeric>
#include <type_traits>

#include "runtime/ops_common.h"

namespace crt::detail {
namespace {

constexpr float kSqrt2 = 1.41421356237309504880f;

float attrF(const OpCtx& c, const char* k, float def) { return c.node.attrFloat(k, def); }

/// CumSum's accumulator: unsigned for integers (wraps on overflow instead of UB), the type itself otherwise.
template <typename T, bool = std::is_integral_v<T>>
struct AccOf { using type = T; };
template <typename T>
struct AccOf<T, true> { using type = std::make_unsigned_t<T>; };

}  // namespace

// ---------------------------------------------------------------- activations
void opSin(OpCtx& c) { unaryFloat(c, [](auto v) { return std::sin(v); }); }
void opCos(OpCtx& c) { unaryFloat(c, [](auto v) { return std::cos(v); }); }
void opLeakyRelu(OpCtx& c) {
  const float a = attrF(c, "alpha", 0.01f);
  unaryFloat(c, [a](auto v) { return v >= 0 ? v : v * decltype(v)(a); });
}
void opElu(OpCtx& c) {
  const float a = attrF(c, "alpha", 1.0f);
  unaryFloat(c, [a](auto v) { return v > 0 ? v : decltype(v)(a) * (std::exp(v) - decltype(v)(1)); });
}
void opHardSigmoid(OpCtx& c) {
  const float a = attrF(c, "alpha", 0.2f), b = attrF(c, "beta", 0.5f);
  unaryFloat(c, [a, b](auto v) {
    using T = decltype(v);
    return std::max(T(0), std::min(T(1), T(a) * v + T(b)));
  });
}
void opHardSwish(OpCtx& c) {
  unaryFloat(c, [](auto v) {
    using T = decltype(v);
    return v * std::max(T(0), std::min(T(1), v / T(6) + T(0.5)));
  });
}
void opGelu(OpCtx& c) {
  auto it = c.node.attrs.find("approximate");
  const bool tanh = it != c.node.attrs.end() && it->second.s == "tanh";
  if (tanh)
    unaryFloat(c, [](auto v) {
      using T = decltype(v);
      return T(0.5) * v * (T(1) + std::tanh(T(0.7978845608028654) * (v + T(0.044715) * v * v * v)));
    });
  else
    unaryFloat(c, [](auto v) {
      using T = decltype(v);
      return T(0.5) * v * (T(1) + std::erf(v / T(kSqrt2)));
    });
}

void opClip(OpCtx& c) {
  const Buf& x = c.in(0);
  auto bound = [&](int i, double def) {
    if (!c.has(i)) return def;
    const Buf& b = c.in(i);
    if (b.numel() != 1 || b.dt != x.dt) c.bad("min and max must be scalars of the input's type");
    return loadElem(b.dt, b.data, 0);
  };
  const double lo = bound(1, c.has(1) ? 0 : attrF(c, "min", -std::numeric_limits<float>::infinity()));
  const double hi = bound(2, c.has(2) ? 0 : attrF(c, "max", std::numeric_limits<float>::infinity()));
  if (x.dt == DType::I64 || x.dt == DType::I32) {
    void* y = c.out(0, x.dt, x.shape);
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) storeElem(x.dt, y, i, std::min(hi, std::max(lo, loadElem(x.dt, x.data, i))));
    return;
  }
  const float l = static_cast<float>(lo), h = static_cast<float>(hi);
  unaryFloat(c, [l, h](auto v) {
    using T = decltype(v);
    return std::isnan(v) ? v : std::min(T(h), std::max(T(l), v));
  });
}

void opNot(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt != DType::Bool) c.bad("needs a bool input");
  uint8_t* y = static_cast<uint8_t*>(c.out(0, DType::Bool, x.shape));
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) y[i] = x.as<uint8_t>()[i] == 0;
}

void opIsNaN(OpCtx& c) {
  const Buf& x = c.in(0);
  if (!isFloat(x.dt) && x.dt != DType::F64) c.bad("needs a floating-point input");
  uint8_t* y = static_cast<uint8_t*>(c.out(0, DType::Bool, x.shape));
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) y[i] = std::isnan(loadElem(x.dt, x.data, i));
}

// ---------------------------------------------------------------- ArgMax, TopK, CumSum
void opArgMax(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r == 0) c.bad("needs an input of rank >= 1");
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", 0), r));
  const bool keep = c.node.attrInt("keepdims", 1) != 0, last = c.node.attrInt("select_last_index", 0) != 0;
  int64_t outer, n, inner;
  splitAt(x.shape, axis, outer, n, inner);
  if (n == 0) c.bad("cannot take the argmax of an empty axis");
  Shape os;
  for (int d = 0; d < r; ++d)
    if (d != axis) os.push(x.shape[d]);
    else if (keep) os.push(1);
  int64_t* y = c.outT<int64_t>(0, os);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      int64_t best = 0;
      double bv = loadElem(x.dt, x.data, o * n * inner + i);
      for (int64_t j = 1; j < n; ++j) {
        const double v = loadElem(x.dt, x.data, (o * n + j) * inner + i);
        if (v > bv || (last && v == bv)) bv = v, best = j;
      }
      y[o * inner + i] = best;
    }
}

void opTopK(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r == 0) c.bad("needs an input of rank >= 1");
  const int axis = static_cast<int>(normAxis(c, c.node.attrInt("axis", -1), r));
  int64_t kv[1];
  if (readInts(c.in(1), kv, 1, c) != 1) c.bad("K must hold one value");
  const bool largest = c.node.attrInt("largest", 1) != 0;
  int64_t outer, n, inner;
  splitAt(x.shape, axis, outer, n, inner);
  const int64_t k = kv[0];
  if (k < 0 || k > n) c.bad("K = " + std::to_string(k) + " is outside [0, " + std::to_string(n) + "]");
  Shape os = x.shape;
  os[axis] = k;
  void* vals = c.out(0, x.dt, os);
  int64_t* idx = c.outT<int64_t>(1, os);
  int64_t* order = static_cast<int64_t*>(c.scratch(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(int64_t)));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return loadElem(x.dt, x.data, (o * n + j) * inner + i); };
      std::iota(order, order + n, int64_t{0});
      // ties keep the lower index first (ONNX); NaN sorts as the largest value
      std::stable_sort(order, order + n, [&](int64_t a, int64_t b) {
        const double va = at(a), vb = at(b);
        if (std::isnan(va) || std::isnan(vb)) return largest ? std::isnan(va) && !std::isnan(vb) : !std::isnan(va) && std::isnan(vb);
        return largest ? va > vb : va < vb;
      });
      for (int64_t j = 0; j < k; ++j) {
        const int64_t dst = (o * k + j) * inner + i;
        storeElem(x.dt, vals, dst, at(order[j]));
        idx[dst] = order[j];
      }
    }
}

void opCumSum(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r == 0) c.bad("needs an input of rank >= 1");
  int64_t av[1];
  if (readInts(c.in(1), av, 1, c) != 1) c.bad("axis must hold one value");
  const int axis = static_cast<int>(normAxis(c, av[0], r));
  const bool exclusive = c.node.attrInt("exclusive", 0) != 0, reverse = c.node.attrInt("reverse", 0) != 0;
  int64_t outer, n, inner;
  splitAt(x.shape, axis, outer, n, inner);
  auto run = [&](auto* y, const auto* p) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
    // integers accumulate unsigned: overflow wraps (as ONNX Runtime's does) instead of being UB
    using Acc = typename AccOf<T>::type;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        Acc acc = 0;
        for (int64_t s = 0; s < n; ++s) {
          const int64_t j = reverse ? n - 1 - s : s, off = (o * n + j) * inner + i;
          if (exclusive) y[off] = static_cast<T>(acc), acc += static_cast<Acc>(p[off]);
          else acc += static_cast<Acc>(p[off]), y[off] = static_cast<T>(acc);
        }
      }
  };
  switch (x.dt) {
    case DType::F32: run(c.outT<float>(0, x.shape), x.as<float>()); break;
    case DType::F64: run(c.outT<double>(0, x.shape), x.as<double>()); break;
    case DType::I64: run(c.outT<int64_t>(0, x.shape), x.as<int64_t>()); break;
    case DType::I32: run(c.outT<int32_t>(0, x.shape), x.as<int32_t>()); break;
    default: c.bad(std::string("unsupported type ") + dtypeName(x.dt));
  }
}

// ---------------------------------------------------------------- instance and group normalization
namespace {

/// Normalizes each of `groups` contiguous slices of every sample of x [N, C, ...] to zero mean and unit
/// variance, then applies per-channel (or per-group) scale and bias.
void groupNorm(OpCtx& c, int64_t groups, float eps) {
  const Buf& x = c.in(0);
  if (!isFloat(x.dt) || x.shape.rank < 2) c.bad("needs a float input [N, C, ...]");
  const int64_t N = x.shape[0], C = x.shape[1];
  if (groups <= 0 || C % groups) c.bad(std::to_string(C) + " channels do not split into " + std::to_string(groups) + " groups");
  const int64_t spatial = C == 0 || N == 0 ? 0 : x.numel() / (N * C), cg = C / groups;
  const Buf& sc = c.in(1);
  const Buf& bi = c.in(2);
  const bool per_group = sc.numel() == groups && groups != C;
  if ((sc.numel() != C && !per_group) || bi.numel() != sc.numel())
    c.bad("scale and bias need " + std::to_string(C) + " values (or one per group)");
  const float* X = fin(c, 0);
  const float* S = fin(c, 1);
  const float* B = fin(c, 2);
  FloatOut fo = floatOut(c, x.dt, x.shape);
  const int64_t len = cg * spatial;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const float* p = X + (n * C + g * cg) * spatial;
      float* q = fo.p + (n * C + g * cg) * spatial;
      double mean = 0, var = 0;
      for (int64_t j = 0; j < len; ++j) mean += p[j];
      mean /= std::max<int64_t>(len, 1);
      for (int64_t j = 0; j < len; ++j) var += (p[j] - mean) * (p[j] - mean);
      var /= std::max<int64_t>(len, 1);
      const float inv = static_cast<float>(1.0 / std::sqrt(var + eps)), m = static_cast<float>(mean);
      for (int64_t ch = 0; ch < cg; ++ch) {
        const int64_t k = per_group ? g : g * cg + ch;
        for (int64_t j = 0; j < spatial; ++j) q[ch * spatial + j] = (p[ch * spatial + j] - m) * inv * S[k] + B[k];
      }
    }
  finish(fo);
}

}  // namespace

void opInstanceNormalization(OpCtx& c) {
  if (c.in(0).shape.rank < 2) c.bad("needs an input [N, C, ...]");
  groupNorm(c, c.in(0).shape[1], attrF(c, "epsilon", 1e-5f));
}

void opGroupNormalization(OpCtx& c) {
  const int64_t g = c.node.attrInt("num_groups", 0);
  if (g <= 0) c.bad("num_groups must be positive");
  groupNorm(c, g, attrF(c, "epsilon", 1e-5f));
}

}  // namespace crt::detail
