// executor.cpp — ONNX-semantics op implementations on ATen, the graph executor, and probe-based shape
// inference (run twice at different batch/sequence sizes; dims that move with them are symbolic).
#include "compress/executor.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <numeric>
#include <set>
#include <unordered_map>

#include "compress/error.h"

namespace compress {
namespace {

using Tensors = std::vector<at::Tensor>;
using OpFn = std::function<Tensors(const Node&, const Tensors&)>;

[[noreturn]] void badInput(const Node& n, const std::string& what) {
  fail(ErrorCategory::Data, n.op + " node '" + n.name + "'" + (n.source.empty() ? "" : " (" + n.source + ")") +
                                ": " + what);
}

std::vector<int64_t> toInts(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU).to(at::kLong).contiguous().reshape({-1});
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

int64_t normAxis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    badInput(n, "axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

const at::Tensor& in(const Node& n, const Tensors& t, size_t i) {
  if (i >= t.size() || !t[i].defined()) badInput(n, "input " + std::to_string(i) + " is missing");
  return t[i];
}

bool has(const Tensors& t, size_t i) { return i < t.size() && t[i].defined(); }

template <typename F>
OpFn unary(F f) {
  return [f](const Node& n, const Tensors& t) { return Tensors{f(in(n, t, 0))}; };
}
template <typename F>
OpFn binary(F f) {
  return [f](const Node& n, const Tensors& t) {
    const at::Tensor& a = in(n, t, 0);
    const at::Tensor& b = in(n, t, 1);
    try {
      return Tensors{f(a, b)};
    } catch (const std::exception&) {
      badInput(n, "shapes " + c10::str(a.sizes()) + " and " + c10::str(b.sizes()) + " do not broadcast");
    }
  };
}

at::Tensor reshapeOnnx(const Node& n, const at::Tensor& x, std::vector<int64_t> shape) {
  bool allowzero = n.attrInt("allowzero", 0) != 0;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 0 && !allowzero) {
      if (static_cast<int64_t>(i) >= x.dim()) badInput(n, "shape entry 0 copies a dim the input lacks");
      shape[i] = x.size(static_cast<int64_t>(i));
    }
  try {
    return x.reshape(shape);
  } catch (const std::exception&) {
    badInput(n, "cannot reshape " + c10::str(x.sizes()) + " to " + c10::str(at::IntArrayRef(shape)));
  }
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> convPads(const Node& n, size_t spatial) {
  auto pads = n.attrInts("pads");
  if (pads.empty()) pads.assign(2 * spatial, 0);
  if (pads.size() != 2 * spatial) badInput(n, "pads must have 2 entries per spatial dim");
  std::vector<int64_t> begin(pads.begin(), pads.begin() + spatial), end(pads.begin() + spatial, pads.end());
  if (begin != end) badInput(n, "asymmetric padding is not supported");
  return {begin, end};
}

std::vector<int64_t> orDefault(std::vector<int64_t> v, size_t n, int64_t def) {
  if (v.empty()) v.assign(n, def);
  return v;
}


std::string attrStr(const Node& n, const std::string& k, const std::string& def) {
  auto it = n.attrs.find(k);
  if (it == n.attrs.end()) return def;
  if (auto* p = std::get_if<std::string>(&it->second)) return *p;
  return def;
}

/// Axes of a Reduce* node: the `axes` input (opset 13 ReduceSum, opset 18 others) or attribute.
std::vector<int64_t> reduceAxes(const Node& n, const Tensors& t, int64_t rank) {
  std::vector<int64_t> axes = has(t, 1) ? toInts(t[1]) : n.attrInts("axes");
  if (axes.empty())
    for (int64_t i = 0; i < rank; ++i) axes.push_back(i);
  for (auto& a : axes) a = normAxis(n, a, rank);
  return axes;
}

template <typename F>
OpFn reduce(F f) {
  return [f](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    if (has(t, 1) && t[1].numel() == 0 && n.attrInt("noop_with_empty_axes", 0)) return Tensors{x};
    const bool keep = n.attrInt("keepdims", 1) != 0;
    return Tensors{f(x, reduceAxes(n, t, x.dim()), keep)};
  };
}

/// The ops added for the model zoo (ONNX opset 13-21 semantics; see runtime/op_table.def).
void addZooOps(std::unordered_map<std::string, OpFn>& m) {
  m["Mod"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& a = in(n, t, 0);
    const at::Tensor& b = in(n, t, 1);
    if (n.attrInt("fmod", 0)) return Tensors{at::fmod(a, b)};
    if (!a.is_floating_point() && (b == 0).any().item<bool>()) badInput(n, "integer modulo by zero");
    return Tensors{at::remainder(a, b)};
  };
  m["LessOrEqual"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::le(a, b); });
  m["GreaterOrEqual"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::ge(a, b); });
  m["And"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::logical_and(a, b); });
  m["Or"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::logical_or(a, b); });
  m["Xor"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::logical_xor(a, b); });
  m["Not"] = unary([](const at::Tensor& x) { return at::logical_not(x); });
  m["IsNaN"] = unary([](const at::Tensor& x) { return at::isnan(x); });
  m["Sin"] = unary([](const at::Tensor& x) { return at::sin(x); });
  m["Cos"] = unary([](const at::Tensor& x) { return at::cos(x); });
  m["LeakyRelu"] = [](const Node& n, const Tensors& t) { return Tensors{at::leaky_relu(in(n, t, 0), n.attrFloat("alpha", 0.01))}; };
  m["Elu"] = [](const Node& n, const Tensors& t) { return Tensors{at::elu(in(n, t, 0), n.attrFloat("alpha", 1.0))}; };
  m["HardSigmoid"] = [](const Node& n, const Tensors& t) {
    const double a = n.attrFloat("alpha", 0.2), b = n.attrFloat("beta", 0.5);
    const at::Tensor& x = in(n, t, 0);
    if (std::abs(a - 1.0 / 6.0) < 1e-7 && b == 0.5) return Tensors{at::hardsigmoid(x)};  // torch's own kernel
    return Tensors{at::clamp(x * a + b, 0.0, 1.0)};
  };
  m["HardSwish"] = unary([](const at::Tensor& x) { return at::hardswish(x); });
  m["Gelu"] = [](const Node& n, const Tensors& t) { return Tensors{at::gelu(in(n, t, 0), attrStr(n, "approximate", "none"))}; };
  m["Clip"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    c10::optional<at::Scalar> lo, hi;
    if (has(t, 1)) lo = t[1].item();
    if (has(t, 2)) hi = t[2].item();
    if (!lo && !hi) return Tensors{x};
    return Tensors{at::clamp(x, lo, hi)};
  };
  m["ConstantOfShape"] = [](const Node& n, const Tensors& t) {  // the IR holds the fill value as a float attribute
    return Tensors{at::full(toInts(in(n, t, 0)), n.attrFloat("value", 0.0), at::TensorOptions().dtype(at::kFloat))};
  };
  m["Range"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& s = in(n, t, 0);
    const double d = in(n, t, 2).item<double>();
    if (d == 0) badInput(n, "delta must be non-zero");
    return Tensors{at::arange(s.item(), in(n, t, 1).item(), t[2].item(), s.options())};
  };
  m["Tile"] = [](const Node& n, const Tensors& t) { return Tensors{in(n, t, 0).repeat(toInts(in(n, t, 1)))}; };
  m["Trilu"] = [](const Node& n, const Tensors& t) {
    const int64_t k = has(t, 1) ? t[1].item<int64_t>() : 0;
    const at::Tensor& x = in(n, t, 0);
    return Tensors{n.attrInt("upper", 1) ? at::triu(x, k) : at::tril(x, k)};
  };
  m["CumSum"] = [](const Node& n, const Tensors& t) {
    at::Tensor x = in(n, t, 0);
    const int64_t axis = normAxis(n, in(n, t, 1).item<int64_t>(), x.dim());
    const bool rev = n.attrInt("reverse", 0) != 0, excl = n.attrInt("exclusive", 0) != 0;
    if (rev) x = x.flip(axis);
    at::Tensor y = at::cumsum(x, axis, x.scalar_type());
    if (excl) y = y - x;
    return Tensors{rev ? y.flip(axis) : y};
  };
  m["ReduceSum"] = reduce([](const at::Tensor& x, std::vector<int64_t> ax, bool keep) { return at::sum(x, ax, keep, x.scalar_type()); });
  m["ReduceMin"] = reduce([](const at::Tensor& x, std::vector<int64_t> ax, bool keep) { return at::amin(x, ax, keep); });
  m["ReduceProd"] = reduce([](const at::Tensor& x, std::vector<int64_t> ax, bool keep) {
    at::Tensor y = x;
    std::sort(ax.rbegin(), ax.rend());
    for (auto a : ax) y = at::prod(y, a, keep);
    return y;
  });
  m["ReduceL2"] = reduce([](const at::Tensor& x, std::vector<int64_t> ax, bool keep) {
    return at::linalg_vector_norm(x, 2, ax, keep);
  });
  m["ArgMax"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const int64_t axis = normAxis(n, n.attrInt("axis", 0), x.dim());
    const bool keep = n.attrInt("keepdims", 1) != 0;
    if (n.attrInt("select_last_index", 0)) {
      at::Tensor f = x.flip(axis);
      return Tensors{x.size(axis) - 1 - at::argmax(f, axis, keep)};
    }
    return Tensors{at::argmax(x, axis, keep)};
  };
  m["TopK"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const int64_t axis = normAxis(n, n.attrInt("axis", -1), x.dim()), k = in(n, t, 1).item<int64_t>();
    if (k < 0 || k > x.size(axis)) badInput(n, "K is outside [0, axis size]");
    auto [v, i] = at::topk(x, k, axis, n.attrInt("largest", 1) != 0, true);
    return Tensors{v, i};
  };
  m["InstanceNormalization"] = [](const Node& n, const Tensors& t) {
    return Tensors{at::instance_norm(in(n, t, 0), in(n, t, 1), in(n, t, 2), {}, {}, true, 0.0, n.attrFloat("epsilon", 1e-5), false)};
  };
  m["GroupNormalization"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const int64_t g = n.attrInt("num_groups", 0);
    if (g <= 0 || x.size(1) % g) badInput(n, "channels do not split into num_groups groups");
    at::Tensor s = in(n, t, 1), b = in(n, t, 2);
    if (s.numel() == g && g != x.size(1)) s = s.repeat_interleave(x.size(1) / g), b = b.repeat_interleave(x.size(1) / g);
    return Tensors{at::group_norm(x, g, s, b, n.attrFloat("epsilon", 1e-5))};
  };
  m["Pad"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    auto pads = toInts(in(n, t, 1));
    const int64_t r = x.dim();
    std::vector<int64_t> axes;
    if (has(t, 3)) axes = toInts(t[3]);
    else for (int64_t i = 0; i < r; ++i) axes.push_back(i);
    if (pads.size() != 2 * axes.size()) badInput(n, "pads needs 2 values per padded axis");
    std::vector<int64_t> tp(static_cast<size_t>(2 * r), 0);  // torch order: last dim first, (begin, end)
    for (size_t i = 0; i < axes.size(); ++i) {
      const int64_t a = normAxis(n, axes[i], r);
      tp[static_cast<size_t>(2 * (r - 1 - a))] = pads[i];
      tp[static_cast<size_t>(2 * (r - 1 - a) + 1)] = pads[axes.size() + i];
    }
    const std::string mode = attrStr(n, "mode", "constant");
    if (mode == "constant") {
      const double v = has(t, 2) && t[2].numel() ? t[2].item<double>() : 0.0;
      return Tensors{at::constant_pad_nd(x, tp, v)};
    }
    while (tp.size() > 2 && tp[tp.size() - 1] == 0 && tp[tp.size() - 2] == 0) tp.resize(tp.size() - 2);  // the padded dims only
    return Tensors{at::pad(x, tp, mode == "edge" ? "replicate" : mode)};
  };
  m["Resize"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    if (x.dim() != 4) badInput(n, "Resize supports 4-D inputs");
    const std::string mode = attrStr(n, "mode", "nearest"), ctm = attrStr(n, "coordinate_transformation_mode", "half_pixel");
    std::vector<int64_t> size;
    c10::optional<double> sh, sw;
    if (has(t, 3) && t[3].numel()) {
      auto s = toInts(t[3]);
      size = {s[2], s[3]};
    } else if (has(t, 2) && t[2].numel() == 4) {
      at::Tensor s = t[2].to(at::kDouble);
      sh = s[2].item<double>(), sw = s[3].item<double>();
      size = {static_cast<int64_t>(std::floor(x.size(2) * *sh)), static_cast<int64_t>(std::floor(x.size(3) * *sw))};
    } else {
      badInput(n, "Resize needs scales or sizes");
    }
    if (mode == "nearest") {
      if (ctm != "asymmetric" || attrStr(n, "nearest_mode", "round_prefer_floor") != "floor")
        badInput(n, "the executor's nearest Resize supports asymmetric coordinates with floor rounding (torch's)");
      return Tensors{at::upsample_nearest2d(x, size, sh, sw)};
    }
    if (mode != "linear") badInput(n, "Resize mode '" + mode + "' is not supported");
    if (ctm == "align_corners") return Tensors{at::upsample_bilinear2d(x, size, true, sh, sw)};
    if (ctm != "pytorch_half_pixel" && ctm != "half_pixel") badInput(n, "coordinate_transformation_mode '" + ctm + "' is not supported");
    return Tensors{at::upsample_bilinear2d(x, size, false, sh, sw)};
  };
  m["Einsum"] = [](const Node& n, const Tensors& t) {
    return Tensors{at::einsum(attrStr(n, "equation", ""), t)};
  };
  m["ConvTranspose"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const at::Tensor& w = in(n, t, 1);
    size_t sp = static_cast<size_t>(w.dim() - 2);
    auto [pads, unused] = convPads(n, sp);
    (void)unused;
    at::Tensor b = has(t, 2) ? t[2] : at::Tensor();
    return Tensors{at::convolution(x, w, b, orDefault(n.attrInts("strides"), sp, 1), pads, orDefault(n.attrInts("dilations"), sp, 1),
                                   true, orDefault(n.attrInts("output_padding"), sp, 0), n.attrInt("group", 1))};
  };
}

/// Elementwise arithmetic, comparisons and activations.
void addElementwiseOps(std::unordered_map<std::string, OpFn>& m) {
  m["Identity"] = unary([](const at::Tensor& x) { return x; });
  m["Add"] = binary([](const at::Tensor& a, const at::Tensor& b) { return a + b; });
  m["Sub"] = binary([](const at::Tensor& a, const at::Tensor& b) { return a - b; });
  m["Mul"] = binary([](const at::Tensor& a, const at::Tensor& b) { return a * b; });
  m["Div"] = binary([](const at::Tensor& a, const at::Tensor& b) {
    if (!a.is_floating_point() && !b.is_floating_point()) return at::div(a, b, "trunc");
    return a / b;
  });
  m["Pow"] = binary([](const at::Tensor& a, const at::Tensor& b) {
    // x^2 is by far the most common case (RMSNorm); square() keeps it exact and fast.
    if (b.numel() == 1 && b.is_floating_point() && b.item<double>() == 2.0) return a * a;
    return at::pow(a, b.to(a.scalar_type()));
  });
  m["Max"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::maximum(a, b); });
  m["Min"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::minimum(a, b); });
  m["Equal"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::eq(a, b); });
  m["Less"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::lt(a, b); });
  m["Greater"] = binary([](const at::Tensor& a, const at::Tensor& b) { return at::gt(a, b); });
  m["Sqrt"] = unary([](const at::Tensor& x) { return at::sqrt(x); });
  m["Reciprocal"] = unary([](const at::Tensor& x) { return at::reciprocal(x); });
  m["Neg"] = unary([](const at::Tensor& x) { return at::neg(x); });
  m["Abs"] = unary([](const at::Tensor& x) { return at::abs(x); });
  m["Exp"] = unary([](const at::Tensor& x) { return at::exp(x); });
  m["Log"] = unary([](const at::Tensor& x) { return at::log(x); });
  m["Tanh"] = unary([](const at::Tensor& x) { return at::tanh(x); });
  m["Sigmoid"] = unary([](const at::Tensor& x) { return at::sigmoid(x); });
  m["Relu"] = unary([](const at::Tensor& x) { return at::relu(x); });
  m["Erf"] = unary([](const at::Tensor& x) { return at::erf(x); });
  m["Where"] = [](const Node& n, const Tensors& t) {
    return Tensors{at::where(in(n, t, 0), in(n, t, 1), in(n, t, 2))};
  };
}

/// MatMul and Gemm.
void addLinearAlgebraOps(std::unordered_map<std::string, OpFn>& m) {
  m["MatMul"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& a = in(n, t, 0);
    const at::Tensor& b = in(n, t, 1);
    if (a.dim() == 0 || b.dim() == 0) badInput(n, "MatMul needs inputs of rank >= 1");
    int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
    if (ka != kb)
      badInput(n, "inner dimensions differ: " + c10::str(a.sizes()) + " x " + c10::str(b.sizes()));
    return Tensors{at::matmul(a, b)};
  };
  m["Gemm"] = [](const Node& n, const Tensors& t) {
    at::Tensor a = in(n, t, 0), b = in(n, t, 1);
    if (n.attrInt("transA", 0)) a = a.t();
    if (n.attrInt("transB", 0)) b = b.t();
    if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0))
      badInput(n, "Gemm needs 2-D inputs with matching inner dims, got " + c10::str(a.sizes()) + " and " +
                      c10::str(b.sizes()));
    at::Tensor y = at::matmul(a, b) * n.attrFloat("alpha", 1.0);
    if (has(t, 2)) y = y + t[2] * n.attrFloat("beta", 1.0);
    return Tensors{y};
  };
}

/// Shapes and data movement.
void addShapeOps(std::unordered_map<std::string, OpFn>& m) {
  m["Transpose"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    auto perm = n.attrInts("perm");
    if (perm.empty())
      for (int64_t i = x.dim() - 1; i >= 0; --i) perm.push_back(i);
    if (static_cast<int64_t>(perm.size()) != x.dim())
      badInput(n, "perm has " + std::to_string(perm.size()) + " entries for a rank-" + std::to_string(x.dim()) + " input");
    return Tensors{x.permute(perm)};
  };
  m["Reshape"] = [](const Node& n, const Tensors& t) {
    return Tensors{reshapeOnnx(n, in(n, t, 0), toInts(in(n, t, 1)))};
  };
  m["Flatten"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    int64_t axis = n.attrInt("axis", 1);
    if (axis < 0) axis += x.dim();
    int64_t outer = 1;
    for (int64_t i = 0; i < axis; ++i) outer *= x.size(i);
    return Tensors{x.reshape({outer, -1})};
  };
  m["Shape"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    int64_t r = x.dim();
    int64_t start = n.attrInt("start", 0), end = n.attrInt("end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = std::clamp<int64_t>(start, 0, r);
    end = std::clamp<int64_t>(end, 0, r);
    std::vector<int64_t> s(x.sizes().begin() + start, x.sizes().begin() + std::max(start, end));
    return Tensors{at::tensor(s, at::kLong).to(x.device())};
  };
  m["Gather"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    at::Tensor idx = in(n, t, 1).to(at::kLong);
    int64_t axis = normAxis(n, n.attrInt("axis", 0), x.dim());
    int64_t size = x.size(axis);
    if (idx.numel() > 0) {
      int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
      if (lo < -size || hi >= size)
        badInput(n, "index out of range: indices span [" + std::to_string(lo) + ", " + std::to_string(hi) +
                        "] but the axis has size " + std::to_string(size));
      if (lo < 0) idx = at::where(idx < 0, idx + size, idx);
    }
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
    for (auto d : idx.sizes()) shape.push_back(d);
    for (int64_t d = axis + 1; d < x.dim(); ++d) shape.push_back(x.size(d));
    if (axis == 0 && x.dim() == 2) return Tensors{at::embedding(x, idx)};
    return Tensors{at::index_select(x, axis, idx.reshape({-1})).reshape(shape)};
  };
  m["Unsqueeze"] = [](const Node& n, const Tensors& t) {
    at::Tensor x = in(n, t, 0);
    auto axes = toInts(in(n, t, 1));
    int64_t r = x.dim() + static_cast<int64_t>(axes.size());
    for (auto& a : axes) a = normAxis(n, a, r);
    std::sort(axes.begin(), axes.end());
    for (auto a : axes) x = x.unsqueeze(a);
    return Tensors{x};
  };
  m["Squeeze"] = [](const Node& n, const Tensors& t) {
    at::Tensor x = in(n, t, 0);
    if (!has(t, 1)) return Tensors{x.squeeze()};
    auto axes = toInts(t[1]);
    for (auto& a : axes) a = normAxis(n, a, x.dim());
    std::sort(axes.rbegin(), axes.rend());
    for (auto a : axes) {
      if (x.size(a) != 1) badInput(n, "cannot squeeze axis " + std::to_string(a) + " of size " + std::to_string(x.size(a)));
      x = x.squeeze(a);
    }
    return Tensors{x};
  };
  m["Concat"] = [](const Node& n, const Tensors& t) {
    if (t.empty()) badInput(n, "Concat needs at least one input");
    int64_t axis = normAxis(n, n.attrInt("axis", 0), in(n, t, 0).dim());
    try {
      return Tensors{at::cat(t, axis)};
    } catch (const std::exception&) {
      badInput(n, "inputs do not agree outside the concatenation axis");
    }
  };
  m["Split"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    int64_t axis = normAxis(n, n.attrInt("axis", 0), x.dim());
    std::vector<int64_t> sizes;
    if (has(t, 1)) {
      sizes = toInts(t[1]);
    } else {
      int64_t k = static_cast<int64_t>(n.outputs.size());
      sizes.assign(k, (x.size(axis) + k - 1) / k);
      sizes.back() = x.size(axis) - (k - 1) * sizes[0];
    }
    if (std::accumulate(sizes.begin(), sizes.end(), int64_t{0}) != x.size(axis))
      badInput(n, "split sizes do not add up to the axis size " + std::to_string(x.size(axis)));
    auto parts = at::split_with_sizes(x, sizes, axis);
    return Tensors(parts.begin(), parts.end());
  };
  m["Slice"] = [](const Node& n, const Tensors& t) {
    at::Tensor x = in(n, t, 0);
    auto starts = toInts(in(n, t, 1)), ends = toInts(in(n, t, 2));
    std::vector<int64_t> axes, steps;
    if (has(t, 3)) axes = toInts(t[3]);
    else for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    if (has(t, 4)) steps = toInts(t[4]);
    else steps.assign(starts.size(), 1);
    if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
      badInput(n, "starts, ends, axes and steps must have the same length");
    for (size_t i = 0; i < starts.size(); ++i) {
      int64_t ax = normAxis(n, axes[i], x.dim()), dim = x.size(ax);
      if (steps[i] == 0) badInput(n, "steps must be non-zero");
      if (steps[i] < 0) {  // backwards: start clamped to [0, dim-1], end to [-1, dim-1], end exclusive
        int64_t s = starts[i] < 0 ? starts[i] + dim : starts[i];
        int64_t e = ends[i] < 0 ? std::max<int64_t>(ends[i], INT64_MIN + dim) + dim : ends[i];
        s = std::clamp<int64_t>(s, 0, std::max<int64_t>(dim - 1, 0));
        e = std::clamp<int64_t>(e, -1, dim - 1);
        if (dim == 0 || s <= e) x = x.slice(ax, 0, 0);
        else x = x.index_select(ax, at::arange(s, e, steps[i], at::TensorOptions().dtype(at::kLong)));
        continue;
      }
      int64_t s = starts[i] < 0 ? starts[i] + dim : starts[i];
      int64_t e = ends[i] < 0 ? ends[i] + dim : ends[i];
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      x = x.slice(ax, s, std::max(s, e), steps[i]);
    }
    return Tensors{x};
  };
  m["Expand"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    auto shape = toInts(in(n, t, 1));
    // ONNX Expand broadcasts both ways: the result is broadcast(x.shape, shape).
    size_t r = std::max<size_t>(shape.size(), x.dim());
    std::vector<int64_t> out(r);
    for (size_t i = 0; i < r; ++i) {
      int64_t a = i + x.dim() >= r ? x.size(i + x.dim() - r) : 1;
      int64_t b = i + shape.size() >= r ? shape[i + shape.size() - r] : 1;
      if (a != b && a != 1 && b != 1) badInput(n, "cannot expand " + c10::str(x.sizes()) + " to the requested shape");
      out[i] = a == 1 ? b : a;
    }
    return Tensors{x.expand(out)};
  };
  m["Cast"] = [](const Node& n, const Tensors& t) {
    return Tensors{in(n, t, 0).to(toScalarType(static_cast<DType>(n.attrInt("to", 1))))};
  };
}

/// Softmax, reductions and normalizations.
void addNormalizationOps(std::unordered_map<std::string, OpFn>& m) {
  m["Softmax"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    return Tensors{at::softmax(x, normAxis(n, n.attrInt("axis", -1), x.dim()))};
  };
  m["LogSoftmax"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    return Tensors{at::log_softmax(x, normAxis(n, n.attrInt("axis", -1), x.dim()))};
  };
  m["ReduceMean"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    auto axes = n.attrInts("axes");
    bool keep = n.attrInt("keepdims", 1) != 0;
    if (axes.empty()) return Tensors{keep ? x.mean(at::IntArrayRef{}, true) : x.mean()};
    for (auto& a : axes) a = normAxis(n, a, x.dim());
    return Tensors{x.mean(axes, keep)};
  };
  m["ReduceMax"] = [](const Node& n, const Tensors& t) {
    at::Tensor x = in(n, t, 0);
    auto axes = n.attrInts("axes");
    bool keep = n.attrInt("keepdims", 1) != 0;
    if (axes.empty())
      for (int64_t i = 0; i < x.dim(); ++i) axes.push_back(i);
    for (auto& a : axes) a = normAxis(n, a, x.dim());
    return Tensors{at::amax(x, axes, keep)};
  };
  m["LayerNormalization"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    int64_t axis = normAxis(n, n.attrInt("axis", -1), x.dim());
    std::vector<int64_t> norm(x.sizes().begin() + axis, x.sizes().end());
    at::Tensor b = has(t, 2) ? t[2] : at::Tensor();
    return Tensors{at::layer_norm(x, norm, in(n, t, 1), b, n.attrFloat("epsilon", 1e-5))};
  };
  m["BatchNormalization"] = [](const Node& n, const Tensors& t) {
    return Tensors{at::batch_norm(in(n, t, 0), in(n, t, 1), in(n, t, 2), in(n, t, 3), in(n, t, 4), false, 0.0,
                                  n.attrFloat("epsilon", 1e-5), false)};
  };
}

/// Convolution and pooling.
void addConvolutionOps(std::unordered_map<std::string, OpFn>& m) {
  m["Conv"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const at::Tensor& w = in(n, t, 1);
    size_t sp = static_cast<size_t>(w.dim() - 2);
    auto [pads, unused] = convPads(n, sp);
    (void)unused;
    at::Tensor b = has(t, 2) ? t[2] : at::Tensor();
    try {
      return Tensors{at::convolution(x, w, b, orDefault(n.attrInts("strides"), sp, 1), pads,
                                     orDefault(n.attrInts("dilations"), sp, 1), false,
                                     std::vector<int64_t>(sp, 0), n.attrInt("group", 1))};
    } catch (const std::exception&) {
      badInput(n, "input " + c10::str(x.sizes()) + " does not fit weight " + c10::str(w.sizes()));
    }
  };
  m["MaxPool"] = [](const Node& n, const Tensors& t) {
    auto k = n.attrInts("kernel_shape");
    auto [pads, unused] = convPads(n, k.size());
    (void)unused;
    return Tensors{at::max_pool2d(in(n, t, 0), k, orDefault(n.attrInts("strides"), k.size(), 1), pads,
                                  orDefault(n.attrInts("dilations"), k.size(), 1), n.attrInt("ceil_mode", 0) != 0)};
  };
  m["AveragePool"] = [](const Node& n, const Tensors& t) {
    auto k = n.attrInts("kernel_shape");
    auto [pads, unused] = convPads(n, k.size());
    (void)unused;
    return Tensors{at::avg_pool2d(in(n, t, 0), k, orDefault(n.attrInts("strides"), k.size(), 1), pads,
                                  n.attrInt("ceil_mode", 0) != 0, n.attrInt("count_include_pad", 0) != 0)};
  };
  m["GlobalAveragePool"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    std::vector<int64_t> axes;
    for (int64_t i = 2; i < x.dim(); ++i) axes.push_back(i);
    return Tensors{x.mean(axes, true)};
  };
}

/// A QuantizeLinear/DequantizeLinear parameter (scale or zero point) broadcast against the data tensor x: per
/// tensor, per `axis` entry, or (block_size > 0) per block of block_size along `axis` (the parameter then has x's
/// rank with ceil(n / block_size) entries on that axis).
at::Tensor quantParam(const Node& n, const at::Tensor& x, at::Tensor s) {
  if (s.dim() == 0 || s.numel() == 1) return s.reshape({});
  const int64_t bs = n.attrInt("block_size", 0);
  const int64_t axis = normAxis(n, n.attrInt("axis", 1), std::max<int64_t>(x.dim(), 1));
  if (bs > 0) return s.repeat_interleave(bs, axis).narrow(axis, 0, x.size(axis));
  std::vector<int64_t> shape(x.dim(), 1);
  shape[axis] = s.numel();
  return s.reshape(shape);
}

/// QuantizeLinear's output type: the zero point's, else output_dtype (opset 21), else uint8.
at::ScalarType quantizedType(const Node& n, const Tensors& t) {
  if (has(t, 2)) return t[2].scalar_type();
  const int64_t od = n.attrInt("output_dtype", 0);
  if (od == 0 || od == 2) return at::kByte;  // onnx.TensorProto UINT8
  if (od == 3) return at::kChar;             // INT8
  fail(ErrorCategory::Model, n.op + " node '" + n.name + "': output_dtype " + std::to_string(od) + " is not supported (int8 or uint8)");
}

/// QuantizeLinear and DequantizeLinear.
void addQuantizationOps(std::unordered_map<std::string, OpFn>& m) {
  m["QuantizeLinear"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& x = in(n, t, 0);
    const at::ScalarType qt = quantizedType(n, t);
    if (qt != at::kChar && qt != at::kByte)
      fail(ErrorCategory::Model, n.op + " node '" + n.name + "': only int8 and uint8 outputs are supported");
    const double lo = qt == at::kChar ? -128 : 0, hi = qt == at::kChar ? 127 : 255;
    at::Tensor y = at::round(x.to(at::kFloat) / quantParam(n, x, in(n, t, 1).to(at::kFloat)));  // half to even
    if (has(t, 2)) y = y + quantParam(n, x, t[2].to(at::kFloat));
    return Tensors{y.clamp(lo, hi).to(qt)};
  };
  m["DequantizeLinear"] = [](const Node& n, const Tensors& t) {
    const at::Tensor& q = in(n, t, 0);
    at::Tensor scale = in(n, t, 1);
    at::Tensor x = q.to(scale.scalar_type());
    if (has(t, 2)) x = x - quantParam(n, q, t[2].to(scale.scalar_type()));
    return Tensors{x * quantParam(n, q, scale)};
  };
}

const std::unordered_map<std::string, OpFn>& opTable() {
  static const std::unordered_map<std::string, OpFn> table = [] {
    std::unordered_map<std::string, OpFn> m;
    addElementwiseOps(m);
    addLinearAlgebraOps(m);
    addShapeOps(m);
    addNormalizationOps(m);
    addConvolutionOps(m);
    addZooOps(m);
    addQuantizationOps(m);
    return m;
  }();
  return table;
}

}  // namespace

bool isSupportedOp(const std::string& op) { return opTable().count(op) != 0; }

std::vector<std::string> supportedOps() {
  std::vector<std::string> ops;
  for (const auto& [k, v] : opTable()) ops.push_back(k);
  std::sort(ops.begin(), ops.end());
  return ops;
}

std::vector<at::Tensor> runNode(const Node& n, const std::vector<at::Tensor>& inputs) {
  auto it = n.domain.empty() ? opTable().find(n.op) : opTable().end();
  if (it == opTable().end())
    fail(ErrorCategory::Model, "the executor has no implementation of op " + (n.domain.empty() ? "" : n.domain + ".") +
                                   n.op + " (node '" + n.name + "')");
  Tensors out;
  // LibTorch's CPU kernels lack most float16 ops: compute them in float32 and round each result to
  // float16, which is what CPU fp16 runtimes do per op. Cast and Shape keep their own output types.
  bool emulate_half = false;
  if (n.op != "Cast" && n.op != "Shape")
    for (const auto& t : inputs) emulate_half = emulate_half || (t.defined() && t.scalar_type() == at::kHalf && t.is_cpu());
  try {
    if (emulate_half) {
      Tensors up;
      for (const auto& t : inputs) up.push_back(t.defined() && t.scalar_type() == at::kHalf ? t.to(at::kFloat) : t);
      out = it->second(n, up);
      for (auto& t : out)
        if (t.scalar_type() == at::kFloat) t = t.to(at::kHalf);
    } else {
      out = it->second(n, inputs);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // ATen's own checks (shape mismatches and the like; some surface as std::runtime_error in this
    // LibTorch build): name the node instead of printing a backtrace.
    const std::string what = withoutBacktrace(e.what());
    fail(ErrorCategory::Data, n.op + " node '" + n.name + "'" + (n.source.empty() ? "" : " (" + n.source + ")") +
                                  ": " + what.substr(0, what.find('\n')));
  }
  if (out.size() != n.outputs.size())
    fail(ErrorCategory::Internal, "node '" + n.name + "' (" + n.op + ") produced " + std::to_string(out.size()) +
                                      " outputs, the graph expects " + std::to_string(n.outputs.size()));
  return out;
}

Executor::Executor(const Graph& g, ExecOptions opts) : g_(g), opts_(opts) {
  for (const auto& [name, t] : g.initializers) constants_[name] = t.to(opts_.device);
  std::set<std::string> graph_outputs(g.outputs.begin(), g.outputs.end());
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    bool foldable = opts_.fold_constants && !n.inputs.empty();
    for (const auto& v : n.inputs) foldable = foldable && (v.empty() || constants_.count(v));
    for (const auto& o : n.outputs) foldable = foldable && !graph_outputs.count(o);
    if (!foldable) {
      live_nodes_.push_back(static_cast<int>(i));
      continue;
    }
    Tensors ins;
    for (const auto& v : n.inputs) ins.push_back(v.empty() ? at::Tensor() : constants_.at(v));
    Tensors outs = runNode(n, ins);
    for (size_t k = 0; k < outs.size(); ++k) constants_[n.outputs[k]] = outs[k];
  }
  // ONNX has no rsqrt or silu: Reciprocal(Sqrt(x)) and Mul(x, Sigmoid(x)) are how they are spelled.
  // Run each as the one ATen op the framework uses (bit-identical to the original model) when the inner
  // result feeds nothing else.
  std::map<std::string, int> readers, producer;
  for (int idx : live_nodes_) {
    for (const auto& v : g.nodes[idx].inputs) ++readers[v];
    for (const auto& o : g.nodes[idx].outputs) producer[o] = idx;
  }
  std::set<int> skipped;
  auto inner = [&](const std::string& v, const char* op) -> int {
    auto p = producer.find(v);
    if (p == producer.end() || g.nodes[p->second].op != op || !g.nodes[p->second].domain.empty() ||
        readers[v] != 1 || graph_outputs.count(v) || skipped.count(p->second))
      return -1;
    return p->second;
  };
  for (int idx : live_nodes_) {
    const Node& n = g.nodes[idx];
    if (!n.domain.empty()) continue;
    if (n.op == "Reciprocal" && n.inputs.size() == 1) {
      int p = inner(n.inputs[0], "Sqrt");
      if (p >= 0) fused_[idx] = {Fused::Rsqrt, g.nodes[p].inputs[0]}, skipped.insert(p);
    } else if (n.op == "Mul" && n.inputs.size() == 2) {
      for (int k = 0; k < 2; ++k) {
        int p = inner(n.inputs[k], "Sigmoid");
        if (p >= 0 && g.nodes[p].inputs[0] == n.inputs[1 - k]) {
          fused_[idx] = {Fused::Silu, n.inputs[1 - k]}, skipped.insert(p);
          break;
        }
      }
    }
  }
  live_nodes_.erase(std::remove_if(live_nodes_.begin(), live_nodes_.end(), [&](int i) { return skipped.count(i) != 0; }),
                    live_nodes_.end());
  for (size_t k = 0; k < live_nodes_.size(); ++k) {
    int idx = live_nodes_[k];
    auto f = fused_.find(idx);
    if (f != fused_.end()) last_use_[f->second.input] = static_cast<int>(k);
    else
      for (const auto& v : g.nodes[idx].inputs) last_use_[v] = static_cast<int>(k);
  }
}

int Executor::addHook(NodeHook hook) {
  hooks_[next_hook_] = std::move(hook);
  return next_hook_++;
}

void Executor::removeHook(int id) { hooks_.erase(id); }

Executor::Env Executor::start(const std::map<std::string, at::Tensor>& inputs) {
  Env env;
  for (const auto& name : g_.inputs) {
    auto it = inputs.find(name);
    if (it == inputs.end()) fail(ErrorCategory::Data, "missing model input '" + name + "'");
    const at::Tensor& t = it->second;
    auto vi = g_.values.find(name);
    if (vi != g_.values.end()) {
      if (vi->second.dtype != DType::Undefined && dtypeFromScalarType(t.scalar_type()) != vi->second.dtype)
        fail(ErrorCategory::Data, "model input '" + name + "' must be " + dtypeName(vi->second.dtype) + ", got " +
                                      c10::toString(t.scalar_type()));
      if (vi->second.shape) {
        const Shape& s = *vi->second.shape;
        bool ok = static_cast<int64_t>(s.size()) == t.dim();
        for (size_t d = 0; ok && d < s.size(); ++d) ok = !s[d].isFixed() || s[d].value == t.size(static_cast<int64_t>(d));
        if (!ok)
          fail(ErrorCategory::Data, "model input '" + name + "' must have shape " + shapeStr(s) + ", got " +
                                        c10::str(t.sizes()));
      }
    }
    env[name] = t.to(opts_.device);
  }
  for (const auto& [name, t] : inputs)
    if (std::find(g_.inputs.begin(), g_.inputs.end(), name) == g_.inputs.end())
      fail(ErrorCategory::Data, "'" + name + "' is not an input of this model");
  return env;
}

int Executor::liveIndexOf(const std::string& node_name) const {
  for (size_t k = 0; k < live_nodes_.size(); ++k)
    if (g_.nodes[live_nodes_[k]].name == node_name) return static_cast<int>(k);
  return -1;
}

int Executor::firstLiveAtOrAfter(int node) const {
  return static_cast<int>(std::lower_bound(live_nodes_.begin(), live_nodes_.end(), node) - live_nodes_.begin());
}

int Executor::firstReaderOf(const std::string& value) const {
  for (size_t k = 0; k < live_nodes_.size(); ++k) {
    const Node& n = g_.nodes[live_nodes_[k]];
    if (std::find(n.inputs.begin(), n.inputs.end(), value) != n.inputs.end()) return static_cast<int>(k);
    auto f = fused_.find(live_nodes_[k]);
    if (f != fused_.end() && f->second.input == value) return static_cast<int>(k);
  }
  return -1;
}

void Executor::runRange(Env& env, int from, int to) {
  auto lookup = [&](const std::string& v) -> at::Tensor {
    if (v.empty()) return at::Tensor();
    auto e = env.find(v);
    if (e != env.end()) return e->second;
    auto c = constants_.find(v);
    if (c != constants_.end()) return c->second;
    fail(ErrorCategory::Internal, "value '" + v + "' is read before it is computed");
  };
  std::set<std::string> keep(g_.outputs.begin(), g_.outputs.end());
  to = std::min(to, static_cast<int>(live_nodes_.size()));
  for (int k = from; k < to; ++k) {
    int idx = live_nodes_[k];
    const Node& n = g_.nodes[idx];
    Tensors ins, outs;
    auto fused = fused_.find(idx);
    if (fused != fused_.end()) {
      ins.push_back(lookup(fused->second.input));
      bool half = ins[0].scalar_type() == at::kHalf && ins[0].is_cpu();  // see runNode: fp16 in fp32 on CPU
      at::Tensor x = half ? ins[0].to(at::kFloat) : ins[0];
      at::Tensor y = fused->second.kind == Fused::Rsqrt ? at::rsqrt(x) : at::silu(x);
      outs.push_back(half ? y.to(at::kHalf) : y);
    } else {
      ins.reserve(n.inputs.size());
      for (const auto& v : n.inputs) ins.push_back(lookup(v));
      outs = runNode(n, ins);
    }
    for (auto& [id, h] : hooks_) h(idx, n, ins, outs);
    for (size_t o = 0; o < outs.size(); ++o) env[n.outputs[o]] = std::move(outs[o]);
    const auto& read = fused != fused_.end() ? std::vector<std::string>{fused->second.input} : n.inputs;
    for (const auto& v : read) {
      auto lu = last_use_.find(v);
      if (lu != last_use_.end() && lu->second == k && !keep.count(v)) env.erase(v);
    }
  }
}

std::vector<at::Tensor> Executor::run(const std::map<std::string, at::Tensor>& inputs) {
  Env env = start(inputs);
  runRange(env, 0, liveCount());
  Tensors result;
  for (const auto& o : g_.outputs) {
    auto e = env.find(o);
    if (e != env.end()) result.push_back(e->second);
    else if (constants_.count(o)) result.push_back(constants_.at(o));
    else fail(ErrorCategory::Internal, "graph output '" + o + "' was not computed");
  }
  return result;
}

at::Tensor Executor::run1(const at::Tensor& input) {
  if (g_.inputs.empty() || g_.outputs.empty()) fail(ErrorCategory::Data, "this model has no inputs or no outputs");
  return run(companionInputs(g_, input))[0];
}

std::map<std::string, at::Tensor> companionInputs(const Graph& g, const at::Tensor& first) {
  std::map<std::string, at::Tensor> feeds;
  if (g.inputs.empty()) return feeds;
  feeds[g.inputs[0]] = first;
  for (size_t i = 1; i < g.inputs.size(); ++i) {
    const std::string& name = g.inputs[i];
    auto vi = g.values.find(name);
    const DType dt = vi == g.values.end() ? DType::Undefined : vi->second.dtype;
    const bool integer = dt == DType::Int64 || dt == DType::Int32 || dt == DType::Bool;
    if (!integer || first.dim() != 2 || at::isFloatingType(first.scalar_type()))
      fail(ErrorCategory::Data, "model input '" + name + "' has no default: evaluation and calibration data feed the first input ('" +
                                    g.inputs[0] + "') only, and further inputs are defaulted only for text models ([batch, seq] "
                                    "attention masks, position ids, token type ids)");
    const auto opts = at::TensorOptions().dtype(toScalarType(dt));
    const int64_t b = first.size(0), s = first.size(1);
    std::string lower = name;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower.find("position") != std::string::npos) feeds[name] = at::arange(s, opts).unsqueeze(0).expand({b, s}).contiguous();
    else if (lower.find("mask") != std::string::npos && lower.find("padding") == std::string::npos)
      feeds[name] = at::ones({b, s}, opts);  // 1 = attend (HF); a key_padding_mask (true = ignore) gets zeros
    else feeds[name] = at::zeros({b, s}, opts);
  }
  return feeds;
}

at::Tensor probeTensor(DType dtype, const Shape& shape, int64_t batch, int64_t seq) {
  std::vector<int64_t> sizes;
  for (const auto& d : shape) {
    if (d.isFixed()) sizes.push_back(d.value);
    else if (d.symbol == "batch") sizes.push_back(batch);
    else if (d.symbol == "seq") sizes.push_back(seq);
    else if (d.symbol == "height" || d.symbol == "width") sizes.push_back(8 * (batch + seq));  // room for a CNN's strides
    else if (d.symbol == "past+seq") sizes.push_back(batch + 2 * seq);  // a cached decoder's mask: "past" (below) + seq
    else sizes.push_back(batch + seq);
  }
  at::ScalarType st = toScalarType(dtype);
  if (at::isFloatingType(st)) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    return at::randn(sizes, gen, at::TensorOptions().dtype(st));
  }
  return at::zeros(sizes, at::TensorOptions().dtype(st));
}

void reinferShapes(Graph& g) {
  std::map<std::string, std::pair<DType, Shape>> specs;
  for (const auto& in : g.inputs) specs[in] = {g.values.at(in).dtype, *g.values.at(in).shape};
  inferShapes(g, specs);
  verify(g);
}

void inferShapes(Graph& g, const std::map<std::string, std::pair<DType, Shape>>& input_specs) {
  // Two probes whose batch, seq and batch*seq all differ, so every dim that moves is classified.
  const int64_t b1 = 2, s1 = 3, b2 = 3, s2 = 5;
  std::map<std::string, std::vector<at::Tensor>> seen;
  Graph probe = g;
  std::vector<std::map<std::string, at::Tensor>> runs(2);
  for (int r = 0; r < 2; ++r) {
    std::map<std::string, at::Tensor> inputs;
    for (const auto& name : g.inputs) {
      auto it = input_specs.find(name);
      if (it == input_specs.end()) fail(ErrorCategory::Config, "no shape given for model input '" + name + "'");
      inputs[name] = probeTensor(it->second.first, it->second.second, r ? b2 : b1, r ? s2 : s1);
      runs[r][name] = inputs[name];
    }
    probe.values.clear();  // no input checks during the probe
    ExecOptions opts;
    opts.fold_constants = false;
    Executor ex(probe, opts);
    ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& outs) {
      for (size_t k = 0; k < outs.size(); ++k) runs[r][n.outputs[k]] = outs[k];
    });
    ex.run(inputs);
  }
  auto classify = [&](int64_t a, int64_t b) -> Dim {
    if (a == b) return Dim::fixed(a);
    if (a == b1 && b == b2) return Dim::sym("batch");
    if (a == s1 && b == s2) return Dim::sym("seq");
    if (a == b1 * s1 && b == b2 * s2) return Dim::sym("batch*seq");
    if (a == s1 - 1 && b == s2 - 1) return Dim::sym("seq-1");
    if (a == b1 + s1 && b == b2 + s2) return Dim::sym("past");          // a cache input's length (probeTensor)
    if (a == b1 + 2 * s1 && b == b2 + 2 * s2) return Dim::sym("past+seq");
    return Dim::sym("?");
  };
  for (const auto& [name, t] : g.initializers) {
    Shape s;
    for (auto d : t.sizes()) s.push_back(Dim::fixed(d));
    g.values[name] = ValueInfo{dtypeFromScalarType(t.scalar_type()), s};
  }
  for (const auto& [name, t1] : runs[0]) {
    if (g.initializers.count(name)) continue;
    const at::Tensor& t2 = runs[1].at(name);
    ValueInfo vi;
    vi.dtype = dtypeFromScalarType(t1.scalar_type());
    if (t1.dim() == t2.dim()) {
      Shape s;
      for (int64_t d = 0; d < t1.dim(); ++d) s.push_back(classify(t1.size(d), t2.size(d)));
      vi.shape = s;
    }
    g.values[name] = vi;
  }
  for (const auto& name : g.inputs) g.values[name] = ValueInfo{input_specs.at(name).first, input_specs.at(name).second};
}

}  // namespace compress
