// import_ops.cpp — TorchScript op handlers for the model zoo: tensors built from shapes at run time
// (arange, full, triu, cumsum: masks, positions and RoPE tables stay correct for every input length),
// comparisons and masking, activations, group/instance norm, padding, resizing, transposed convolution,
// adaptive pooling to any size, and the fused fast paths of nn.TransformerEncoderLayer and
// nn.MultiheadAttention, decomposed into primitives so that passes see their linear layers.
#include <cmath>

#include "compress/importer_impl.h"

namespace compress::import_detail {

namespace {
int64_t onnxType(at::ScalarType st) { return static_cast<int64_t>(dtypeFromScalarType(st)); }
bool isNumber(const IVal& v) { return v.kind == IVal::Int || v.kind == IVal::Float || v.kind == IVal::Bool; }
}  // namespace

// ------------------------------------------------------------------------------------------- helpers
double Importer::number(const jit::Node* n, const IVal& v, const std::string& what) {
  if (v.kind == IVal::Int) return static_cast<double>(v.i);
  if (v.kind == IVal::Float) return v.f;
  if (v.kind == IVal::Bool) return v.b;
  unsupported(n, what + " must be a compile-time number");
}

at::ScalarType Importer::resultType(const IVal& a, const IVal& b) {
  // torch's promotion for the cases models use: a dimensioned tensor's type wins over scalars and 0-d
  // tensors of its category; a float scalar makes an integer tensor float.
  auto dimT = [&](const IVal& v) { return v.kind == IVal::Tensor && rank(v.name) > 0; };
  auto isF = [&](const IVal& v) {
    return v.kind == IVal::Float || ((v.kind == IVal::Tensor || v.kind == IVal::DynInt) && at::isFloatingType(stype(v.name)));
  };
  auto typeOf = [&](const IVal& v) {
    if (v.kind == IVal::Tensor || v.kind == IVal::DynInt) return stype(v.name);
    return v.kind == IVal::Float ? at::kFloat : v.kind == IVal::Bool ? at::kBool : at::kLong;
  };
  if (dimT(a) && dimT(b)) return at::promote_types(stype(a.name), stype(b.name));
  if (dimT(a) || dimT(b)) {
    const IVal& t = dimT(a) ? a : b;
    const IVal& o = dimT(a) ? b : a;
    at::ScalarType st = stype(t.name);
    if (!at::isFloatingType(st) && isF(o)) st = at::kFloat;
    if (st == at::kBool && !isNumber(o) && typeOf(o) != at::kBool) st = typeOf(o);
    return st;
  }
  return at::promote_types(typeOf(a), typeOf(b));
}

std::string Importer::castTo(const IVal& v, at::ScalarType st) {
  std::string t = v.kind == IVal::Bool ? constScalar(v.b, st) : asTensor(v, st);
  if (stype(t) == st) return t;
  if (g_.isInitializer(t) && !g_.parameters.count(t)) return constant(probe_.at(t).to(st));
  return emit1("Cast", {t}, {{"to", onnxType(st)}});
}

std::string Importer::linear(const std::string& x, const std::string& w, const std::string& b, const std::string& out) {
  std::string wt = emit1("Transpose", {w}, {{"perm", std::vector<int64_t>{1, 0}}});
  std::string y = emit1("MatMul", {x, wt}, {}, b.empty() ? out : "");
  return b.empty() ? y : emit1("Add", {y, b}, {}, out);
}

std::string Importer::layerNorm(const std::string& x, const std::string& w, const std::string& b, double eps) {
  return emit1("LayerNormalization", {x, w, b}, {{"axis", int64_t{-1}}, {"epsilon", eps}});
}

std::string Importer::dimOf(const std::string& v, int64_t d) {
  return emit1("Gather", {shapeOf(v), constInts({d})}, {{"axis", int64_t{0}}});
}

std::string Importer::selfAttention(const jit::Node* n, const std::string& x, int64_t embed, int64_t heads,
                                    const std::string& qkv_w, const std::string& qkv_b, const std::string& proj_w,
                                    const std::string& proj_b, std::string* probs) {
  if (rank(x) != 3) unsupported(n, "fused attention needs batch-first inputs [batch, seq, embed]");
  if (heads <= 0 || embed % heads) unsupported(n, "embed_dim is not a multiple of num_heads");
  const int64_t hd = embed / heads;
  const at::ScalarType st = stype(x);
  std::string qkv = linear(x, qkv_w, qkv_b);
  auto parts = emit("Split", {qkv, constInts({embed, embed, embed})}, {{"axis", int64_t{2}}}, 3);
  std::vector<std::string> hs;
  for (const auto& p : parts) {
    std::string r = emit1("Reshape", {p, constInts({0, 0, heads, hd})});
    hs.push_back(emit1("Transpose", {r}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}}));
  }
  // torch's kernels scale q by 1/sqrt(head_dim) before the product
  std::string q = emit1("Div", {hs[0], constScalar(std::sqrt(static_cast<double>(hd)), st)});
  std::string kt = emit1("Transpose", {hs[1]}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
  std::string p = emit1("Softmax", {emit1("MatMul", {q, kt})}, {{"axis", int64_t{-1}}});
  if (probs) *probs = p;
  std::string ctx = emit1("Transpose", {emit1("MatMul", {p, hs[2]})}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}});
  return linear(emit1("Reshape", {ctx, constInts({0, 0, embed})}), proj_w, proj_b);
}

// ------------------------------------------------------------------------------------------- creation
void Importer::hArange(Call& c) {
  jit::Node* n = c.n;
  IVal start = hasArg(n, "start") ? arg(n, "start") : IVal::integer(0);
  IVal end = arg(n, "end");
  IVal step = hasArg(n, "step") ? arg(n, "step") : IVal::integer(1);
  IVal dt = hasArg(n, "dtype") ? arg(n, "dtype") : IVal::none();
  auto isF = [&](const IVal& v) { return v.kind == IVal::Float || (v.kind == IVal::Tensor && at::isFloatingType(stype(v.name))); };
  const at::ScalarType st = dt.kind == IVal::Int ? static_cast<at::ScalarType>(dt.i)
                            : (isF(start) || isF(end) || isF(step)) ? at::kFloat : at::kLong;
  if (isNumber(start) && isNumber(end) && isNumber(step))
    return c.setT(constant(at::arange(number(n, start, "start"), number(n, end, "end"), number(n, step, "step"),
                                      at::TensorOptions().dtype(st))));
  auto scalar = [&](const IVal& v) {
    if (isNumber(v)) return constScalar(number(n, v, "an arange bound"), st);
    if (rank(v.name) != 0) unsupported(n, "arange bounds must be scalars");
    return castTo(v, st);
  };
  c.setT(emit1("Range", {scalar(start), scalar(end), scalar(step)}, {}, c.oname));
}

void Importer::hFull(Call& c) {
  jit::Node* n = c.n;
  const bool is_new = c.k.rfind("aten::new_", 0) == 0;
  IVal f = IVal::integer(c.k == "aten::ones" || c.k == "aten::new_ones" ? 1 : 0);
  at::ScalarType st = is_new ? stype(c.T(0)) : at::kFloat;
  if (c.k == "aten::full" || c.k == "aten::new_full") {
    f = arg(n, "fill_value");
    if (!is_new) st = f.kind == IVal::Int ? at::kLong : f.kind == IVal::Bool ? at::kBool
                    : f.kind == IVal::Float ? at::kFloat : at::isFloatingType(stype(f.name)) ? at::kFloat : at::kLong;
  }
  if (hasArg(n, "dtype") && arg(n, "dtype").kind == IVal::Int) st = static_cast<at::ScalarType>(arg(n, "dtype").i);
  IVal size = arg(n, "size");
  bool fixed = size.kind == IVal::List &&
               std::all_of(size.items.begin(), size.items.end(), [](const IVal& v) { return v.kind == IVal::Int; });
  if (fixed && isNumber(f))
    return c.setT(constant(at::full(constIntList(n, size, "size"), number(n, f, "fill_value"), at::TensorOptions().dtype(st))));
  std::string value = isNumber(f) ? constant(at::scalar_tensor(number(n, f, "fill_value"), st)) : castTo(f, st);
  if (rank(value) != 0) unsupported(n, "fill_value must be a scalar");
  c.setT(emit1("Expand", {value, shapeTensor(n, size)}, {}, c.oname));
}

void Importer::hFullLike(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  at::ScalarType st = stype(x);
  double fill = c.k == "aten::ones_like" ? 1 : 0;
  if (c.k == "aten::full_like") fill = number(n, arg(n, "fill_value"), "fill_value");
  if (hasArg(n, "dtype") && arg(n, "dtype").kind == IVal::Int) st = static_cast<at::ScalarType>(arg(n, "dtype").i);
  c.setT(emit1("Expand", {constant(at::scalar_tensor(fill, st)), shapeOf(x)}, {}, c.oname));
}

void Importer::hTrilu(Call& c) {
  IVal d = arg(c.n, "diagonal");
  std::string k = d.kind == IVal::Int ? constant(at::scalar_tensor(d.i, at::kLong)) : castTo(d, at::kLong);
  c.setT(emit1("Trilu", {c.T(0), k}, {{"upper", int64_t{c.k == "aten::triu"}}}, c.oname));
}

void Importer::hCumsum(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal dt = arg(n, "dtype");
  if (dt.kind == IVal::Int) x = castTo(IVal::tensor(x), static_cast<at::ScalarType>(dt.i));
  else if (!at::isFloatingType(stype(x)) && stype(x) != at::kLong) x = castTo(IVal::tensor(x), at::kLong);  // torch sums ints as int64
  const int64_t d = constInt(n, arg(n, "dim"), "dim");
  c.setT(emit1("CumSum", {x, constant(at::scalar_tensor(d, at::kLong))}, {}, c.oname));
}

void Importer::hOuter(Call& c) {
  IVal a = c.in(0), b = c.in(1);
  const at::ScalarType st = resultType(a, b);
  std::string x = emit1("Unsqueeze", {castTo(a, st), constInts({1})});
  std::string y = emit1("Unsqueeze", {castTo(b, st), constInts({0})});
  c.setT(emit1("Mul", {x, y}, {}, c.oname));
}

void Importer::hExpandAs(Call& c) {
  const bool expand = c.k == "aten::expand_as";
  c.setT(emit1(expand ? "Expand" : "Reshape", {c.T(0), shapeOf(c.T(1))}, {}, c.oname));
}

void Importer::hUnbind(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t d = constInt(n, arg(n, "dim"), "dim");
  if (d < 0) d += rank(x);
  IVal l;
  l.kind = IVal::List;
  for (int64_t i = 0; i < probe_.at(x).size(d); ++i)
    l.items.push_back(IVal::tensor(emit1("Gather", {x, constant(at::scalar_tensor(i, at::kLong))}, {{"axis", d}})));
  c.set(l);
}

void Importer::hSum(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal dt = hasArg(n, "dtype") ? arg(n, "dtype") : IVal::none();
  if (dt.kind == IVal::Int) x = castTo(IVal::tensor(x), static_cast<at::ScalarType>(dt.i));
  else if (!at::isFloatingType(stype(x))) x = castTo(IVal::tensor(x), at::kLong);
  if (!hasArg(n, "dim") || arg(n, "dim").kind == IVal::None)
    return c.setT(emit1("ReduceSum", {x}, {{"keepdims", int64_t{0}}}, c.oname));
  auto dims = constIntList(n, arg(n, "dim"), "dim");
  const int64_t keep = constInt(n, arg(n, "keepdim"), "keepdim");
  c.setT(emit1("ReduceSum", {x, constInts(dims)}, {{"keepdims", keep}}, c.oname));
}

// ------------------------------------------------------------------------------------------- comparisons, masks
void Importer::hCompare(Call& c) {
  IVal a = c.in(0), b = c.in(1);
  if (isNumber(a) && isNumber(b)) {
    const double x = number(c.n, a, "a"), y = number(c.n, b, "b");
    IVal r;
    r.kind = IVal::Bool;
    r.b = c.k == "aten::eq" ? x == y : c.k == "aten::ne" ? x != y : c.k == "aten::lt" ? x < y
        : c.k == "aten::le" ? x <= y : c.k == "aten::gt" ? x > y : x >= y;
    return c.set(r);
  }
  const at::ScalarType st = resultType(a, b);
  std::string x = castTo(a, st), y = castTo(b, st);
  static const std::map<std::string, std::string> ops = {{"aten::eq", "Equal"}, {"aten::ne", "Equal"},
                                                         {"aten::lt", "Less"},  {"aten::le", "LessOrEqual"},
                                                         {"aten::gt", "Greater"}, {"aten::ge", "GreaterOrEqual"}};
  if (c.k == "aten::ne") return c.setT(emit1("Not", {emit1("Equal", {x, y})}, {}, c.oname));
  c.setT(emit1(ops.at(c.k), {x, y}, {}, c.oname));
}

void Importer::hLogic(Call& c) {
  std::string x = castTo(c.in(0), at::kBool), y = castTo(c.in(1), at::kBool);
  const bool logical = c.k.find("logical_") != std::string::npos;
  for (const IVal& v : {c.in(0), c.in(1)})
    if (!logical && v.kind == IVal::Tensor && stype(v.name) != at::kBool)
      unsupported(c.n, "bitwise operations on integer tensors (only bool masks are supported)");
  const std::string op = c.k.find("and") != std::string::npos ? "And" : c.k.find("xor") != std::string::npos ? "Xor" : "Or";
  c.setT(emit1(op, {x, y}, {}, c.oname));
}

void Importer::hNot(Call& c) {
  IVal a = c.in(0);
  if (c.k == "aten::bitwise_not" && a.kind == IVal::Tensor && stype(a.name) != at::kBool)
    unsupported(c.n, "bitwise_not of an integer tensor (only bool masks are supported)");
  c.setT(emit1("Not", {castTo(a, at::kBool)}, {}, c.oname));
}

void Importer::hMaskedFill(Call& c) {
  std::string x = c.T(0);
  std::string mask = castTo(c.in(1), at::kBool);
  std::string value = castTo(arg(c.n, "value"), stype(x));
  c.setT(emit1("Where", {mask, value, x}, {}, c.oname));
}

void Importer::hWhere(Call& c) {
  if (c.n->inputs().size() < 3) unsupported(c.n, "where(condition) (nonzero) is not supported");
  IVal a = c.in(1), b = c.in(2);
  const at::ScalarType st = resultType(a, b);
  c.setT(emit1("Where", {castTo(c.in(0), at::kBool), castTo(a, st), castTo(b, st)}, {}, c.oname));
}

void Importer::hMaxMin(Call& c) {
  jit::Node* n = c.n;
  const bool is_max = c.k == "aten::max" || c.k == "aten::maximum";
  if (hasArg(n, "other")) {
    IVal a = c.in(0), b = arg(n, "other");
    const at::ScalarType st = resultType(a, b);
    return c.setT(emit1(is_max ? "Max" : "Min", {castTo(a, st), castTo(b, st)}, {}, c.oname));
  }
  std::string x = c.T(0);
  const std::string red = is_max ? "ReduceMax" : "ReduceMin";
  if (!hasArg(n, "dim")) return c.setT(emit1(red, {x}, {{"keepdims", int64_t{0}}}, c.oname));
  const int64_t d = constInt(n, arg(n, "dim"), "dim"), keep = constInt(n, arg(n, "keepdim"), "keepdim");
  c.setT(emit1(red, {x}, {{"axes", std::vector<int64_t>{d}}, {"keepdims", keep}}, c.oname));
  if (n->outputs().size() > 1) {
    std::string src = is_max ? x : emit1("Neg", {x});  // argmin = argmax of the negation
    env_[n->outputs()[1]] = IVal::tensor(emit1("ArgMax", {src}, {{"axis", d}, {"keepdims", keep}}));
  }
}

void Importer::hClamp(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  const at::ScalarType st = stype(x);
  auto bound = [&](const char* name) -> std::string {
    if (!hasArg(n, name)) return "";
    IVal v = arg(n, name);
    if (v.kind == IVal::None) return "";
    return castTo(v, st);
  };
  std::string lo = bound("min"), hi = bound("max");
  std::vector<std::string> ins = {x, lo};
  if (!hi.empty()) ins.push_back(hi);
  c.setT(emit1("Clip", ins, {}, c.oname));
}

void Importer::hBaddbmm(Call& c) {
  jit::Node* n = c.n;
  const double beta = number(n, arg(n, "beta"), "beta"), alpha = number(n, arg(n, "alpha"), "alpha");
  std::string x = c.T(0);
  const at::ScalarType st = stype(x);
  std::string mm = emit1("MatMul", {c.T(1), c.T(2)});
  if (alpha != 1) mm = emit1("Mul", {mm, constScalar(alpha, st)});
  if (beta == 0) return c.setT(emit1("Identity", {mm}, {}, c.oname));  // torch ignores self (even NaN) when beta is 0
  if (beta != 1) x = emit1("Mul", {x, constScalar(beta, st)});
  c.setT(emit1("Add", {x, mm}, {}, c.oname));
}

void Importer::hEinsum(Call& c) {
  jit::Node* n = c.n;
  IVal eq = arg(n, "equation"), list = arg(n, "tensors");
  if (eq.kind != IVal::Str || list.kind != IVal::List) unsupported(n, "einsum needs a constant equation and a tensor list");
  if (list.items.empty() || list.items.size() > 2) unsupported(n, "einsum with more than two operands");
  std::vector<std::string> ins;
  for (const auto& it : list.items) ins.push_back(asTensor(it));
  c.setT(emit1("Einsum", ins, {{"equation", eq.s}}, c.oname));
}

// ------------------------------------------------------------------------------------------- activations
void Importer::hActivation(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  const at::ScalarType st = stype(x);
  if (c.k == "aten::hardswish") return c.setT(emit1("HardSwish", {x}, {}, c.oname));
  if (c.k == "aten::hardsigmoid")  // torch: relu6(x + 3) / 6
    return c.setT(emit1("HardSigmoid", {x}, {{"alpha", 1.0 / 6.0}, {"beta", 0.5}}, c.oname));
  if (c.k == "aten::leaky_relu")
    return c.setT(emit1("LeakyRelu", {x}, {{"alpha", number(n, arg(n, "negative_slope"), "negative_slope")}}, c.oname));
  if (c.k == "aten::elu") {
    if (number(n, arg(n, "scale"), "scale") != 1 || number(n, arg(n, "input_scale"), "input_scale") != 1)
      unsupported(n, "elu with scale or input_scale other than 1 (selu/celu)");
    return c.setT(emit1("Elu", {x}, {{"alpha", number(n, arg(n, "alpha"), "alpha")}}, c.oname));
  }
  double lo = 0, hi = 6;  // relu6
  if (c.k == "aten::hardtanh") lo = number(n, arg(n, "min_val"), "min_val"), hi = number(n, arg(n, "max_val"), "max_val");
  c.setT(emit1("Clip", {x, constScalar(lo, st), constScalar(hi, st)}, {}, c.oname));
}

// ------------------------------------------------------------------------------------------- normalization
void Importer::hGroupNorm(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  const int64_t g = constInt(n, arg(n, "num_groups"), "num_groups"), ch = probe_.at(x).size(1), r = rank(x);
  const at::ScalarType st = stype(x);
  const double eps = number(n, arg(n, "eps"), "eps");
  // torch.onnx's form: [N, G, -1] -> InstanceNormalization -> back to x's shape -> per-channel affine
  std::string grouped = emit1("Reshape", {x, constInts({0, g, -1})});
  std::string normed = emit1("InstanceNormalization", {grouped, constant(at::ones({g}, st)), constant(at::zeros({g}, st))},
                             {{"epsilon", eps}});
  std::string y = emit1("Reshape", {normed, shapeOf(x)});
  std::vector<int64_t> bshape(static_cast<size_t>(r - 1), 1);
  bshape[0] = ch;
  IVal w = arg(n, "weight"), b = arg(n, "bias");
  if (w.kind != IVal::None) y = emit1("Mul", {y, emit1("Reshape", {w.name, constInts(bshape)})});
  if (b.kind != IVal::None) y = emit1("Add", {y, emit1("Reshape", {b.name, constInts(bshape)})});
  c.setT(emit1("Identity", {y}, {}, c.oname));
}

void Importer::hInstanceNorm(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  if (!constInt(n, arg(n, "use_input_stats"), "use_input_stats"))
    unsupported(n, "instance_norm with running statistics (track_running_stats=True in eval); use BatchNorm instead");
  const int64_t ch = probe_.at(x).size(1);
  const at::ScalarType st = stype(x);
  IVal w = arg(n, "weight"), b = arg(n, "bias");
  std::string wn = w.kind == IVal::None ? constant(at::ones({ch}, st)) : w.name;
  std::string bn = b.kind == IVal::None ? constant(at::zeros({ch}, st)) : b.name;
  c.setT(emit1("InstanceNormalization", {x, wn, bn}, {{"epsilon", number(n, arg(n, "eps"), "eps")}}, c.oname));
}

// ------------------------------------------------------------------------------------------- padding, resizing
void Importer::hPad(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  const int64_t r = rank(x);
  auto p = constIntList(n, c.in(1), "pad");
  if (p.size() % 2 || static_cast<int64_t>(p.size()) > 2 * r) unsupported(n, "pad needs pairs for at most every dim");
  std::string mode = "constant";
  double value = 0;
  if (c.k == "aten::reflection_pad2d") mode = "reflect";
  if (c.k == "aten::replication_pad2d") mode = "edge";
  if (c.k == "aten::pad") {
    IVal m = arg(n, "mode");
    mode = m.kind == IVal::Str ? m.s : "constant";
    if (mode == "replicate") mode = "edge";
    if (mode != "constant" && mode != "reflect" && mode != "edge") unsupported(n, "pad mode '" + mode + "'");
    IVal v = arg(n, "value");
    if (v.kind != IVal::None) value = number(n, v, "value");
  }
  if (c.k == "aten::constant_pad_nd") value = number(n, arg(n, "value"), "value");
  std::vector<int64_t> pads(static_cast<size_t>(2 * r), 0);
  for (size_t i = 0; i < p.size() / 2; ++i) {  // torch pairs start at the last dim
    pads[static_cast<size_t>(r - 1 - static_cast<int64_t>(i))] = p[2 * i];
    pads[static_cast<size_t>(2 * r - 1 - static_cast<int64_t>(i))] = p[2 * i + 1];
  }
  std::vector<std::string> ins = {x, constInts(pads)};
  if (mode == "constant") ins.push_back(constScalar(value, stype(x)));
  c.setT(emit1("Pad", ins, {{"mode", mode}}, c.oname));
}

void Importer::hUpsample(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  if (rank(x) != 4) unsupported(n, "upsampling supports 2-D images [N, C, H, W]");
  const bool nearest = c.k == "aten::upsample_nearest2d";
  std::map<std::string, Attribute> at;
  if (nearest) {
    at = {{"mode", std::string("nearest")}, {"coordinate_transformation_mode", std::string("asymmetric")},
          {"nearest_mode", std::string("floor")}};
  } else {
    const bool corners = constInt(n, arg(n, "align_corners"), "align_corners") != 0;
    at = {{"mode", std::string("linear")},
          {"coordinate_transformation_mode", std::string(corners ? "align_corners" : "pytorch_half_pixel")}};
  }
  IVal os = arg(n, "output_size");
  if (os.kind == IVal::List && !os.items.empty()) {
    std::string nc = emit1("Slice", {shapeOf(x), constInts({0}), constInts({2})});
    std::string sizes = emit1("Concat", {nc, shapeTensor(n, os)}, {{"axis", int64_t{0}}});
    return c.setT(emit1("Resize", {x, "", "", sizes}, at, c.oname));
  }
  std::vector<double> sc;
  if (hasArg(n, "scale_factors")) {
    IVal s = arg(n, "scale_factors");
    if (s.kind == IVal::List)
      for (const auto& v : s.items) sc.push_back(number(n, v, "scale factor"));
    else if (s.kind == IVal::Other && s.obj.isDoubleList())
      for (double v : s.obj.toDoubleVector()) sc.push_back(v);
  } else if (hasArg(n, "scales_h")) {
    sc = {number(n, arg(n, "scales_h"), "scales_h"), number(n, arg(n, "scales_w"), "scales_w")};
  }
  if (sc.size() != 2) unsupported(n, "upsampling needs an output size or two scale factors");
  std::string scales = constant(at::tensor(std::vector<float>{1.f, 1.f, static_cast<float>(sc[0]), static_cast<float>(sc[1])}));
  c.setT(emit1("Resize", {x, "", scales}, at, c.oname));
}

void Importer::hConvTranspose(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0), w = c.T(1);
  if (rank(w) != 4) unsupported(n, "transposed convolution supports 2-D kernels");
  IVal b = arg(n, "bias");
  auto two = [&](const char* name) {
    auto v = constIntList(n, arg(n, name), name);
    if (v.size() == 1) v.assign(2, v[0]);
    return v;
  };
  auto stride = two("stride"), pad = two("padding"), dil = two("dilation"), opad = two("output_padding");
  std::vector<int64_t> pads = pad;
  pads.insert(pads.end(), pad.begin(), pad.end());
  std::vector<int64_t> ks(probe_.at(w).sizes().begin() + 2, probe_.at(w).sizes().end());
  std::vector<std::string> ins = {x, w};
  if (b.kind != IVal::None) ins.push_back(b.name);
  c.setT(emit1("ConvTranspose", ins,
               {{"strides", stride}, {"pads", pads}, {"dilations", dil}, {"output_padding", opad},
                {"group", constInt(n, arg(n, "groups"), "groups")}, {"kernel_shape", ks}},
               c.oname));
}

void Importer::hAdaptiveAvgPool(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  auto os = constIntList(n, arg(n, "output_size"), "output_size");
  if (os.size() == 1) os.assign(2, os[0]);
  if (os.size() != 2 || rank(x) != 4) unsupported(n, "adaptive_avg_pool2d needs an input [N, C, H, W] and two sizes");
  if (os[0] == 1 && os[1] == 1) return c.setT(emit1("GlobalAveragePool", {x}, {}, c.oname));
  if (os[0] * os[1] > 256) unsupported(n, "adaptive_avg_pool2d to more than 256 cells");
  // Cell i of an axis of size L averages [floor(i*L/o), ceil((i+1)*L/o)); averaging is separable, so
  // the rows are pooled first, then the columns — with L read at run time, for every input size.
  std::string cur = x;
  for (int a = 0; a < 2; ++a) {
    const int64_t axis = 2 + a, o = os[static_cast<size_t>(a)];
    std::string len = dimOf(x, axis);
    std::vector<std::string> cells;
    for (int64_t i = 0; i < o; ++i) {
      std::string s = emit1("Div", {emit1("Mul", {len, constInts({i})}), constInts({o})});
      std::string e = emit1("Div", {emit1("Add", {emit1("Mul", {len, constInts({i + 1})}), constInts({o - 1})}), constInts({o})});
      std::string part = emit1("Slice", {cur, s, e, constInts({axis})});
      cells.push_back(emit1("ReduceMean", {part}, {{"axes", std::vector<int64_t>{axis}}, {"keepdims", int64_t{1}}}));
    }
    cur = cells.size() == 1 ? cells[0] : emit1("Concat", cells, {{"axis", axis}});
  }
  c.setT(emit1("Identity", {cur}, {}, c.oname));
}

// ------------------------------------------------------------------------------------------- fused attention
void Importer::hTransformerEncoderLayer(Call& c) {
  jit::Node* n = c.n;
  if (arg(n, "mask").kind != IVal::None) unsupported(n, "the fused encoder layer with a mask (export without the fast path)");
  std::string x = c.T(0);
  const int64_t embed = constInt(n, arg(n, "embed_dim"), "embed_dim"), heads = constInt(n, arg(n, "num_heads"), "num_heads");
  const bool gelu = constInt(n, arg(n, "use_gelu"), "use_gelu") != 0, norm_first = constInt(n, arg(n, "norm_first"), "norm_first") != 0;
  const double eps = number(n, arg(n, "eps"), "eps");
  auto t = [&](const char* name) { return asTensor(arg(n, name)); };
  auto attention = [&](const std::string& h) {
    return selfAttention(n, h, embed, heads, t("qkv_weight"), t("qkv_bias"), t("proj_weight"), t("proj_bias"));
  };
  auto ffn = [&](const std::string& h) {
    std::string u = linear(h, t("ffn_weight_1"), t("ffn_bias_1"));
    if (gelu) {
      const at::ScalarType st = stype(u);
      std::string e = emit1("Erf", {emit1("Div", {u, constScalar(std::sqrt(2.0), st)})});
      u = emit1("Mul", {emit1("Mul", {u, constScalar(0.5, st)}), emit1("Add", {e, constScalar(1.0, st)})});
    } else {
      u = emit1("Relu", {u});
    }
    return linear(u, t("ffn_weight_2"), t("ffn_bias_2"));
  };
  auto ln1 = [&](const std::string& h) { return layerNorm(h, t("norm_weight_1"), t("norm_bias_1"), eps); };
  auto ln2 = [&](const std::string& h) { return layerNorm(h, t("norm_weight_2"), t("norm_bias_2"), eps); };
  std::string y;
  if (norm_first) {
    std::string h = emit1("Add", {x, attention(ln1(x))});
    y = emit1("Add", {h, ffn(ln2(h))});
  } else {
    std::string h = ln1(emit1("Add", {x, attention(x)}));
    y = ln2(emit1("Add", {h, ffn(h)}));
  }
  c.setT(emit1("Identity", {y}, {}, c.oname));
}

void Importer::hNativeMha(Call& c) {
  jit::Node* n = c.n;
  if (arg(n, "mask").kind != IVal::None) unsupported(n, "fused attention with a mask (export without the fast path)");
  std::string q = c.T(0);
  if (asTensor(arg(n, "key")) != q || asTensor(arg(n, "value")) != q)
    unsupported(n, "fused attention other than self-attention (query, key and value must be one tensor)");
  auto t = [&](const char* name) { return asTensor(arg(n, name)); };
  const bool need_weights = constInt(n, arg(n, "need_weights"), "need_weights") != 0;
  std::string probs;
  std::string y = selfAttention(n, q, constInt(n, arg(n, "embed_dim"), "embed_dim"), constInt(n, arg(n, "num_head"), "num_head"),
                                t("qkv_weight"), t("qkv_bias"), t("proj_weight"), t("proj_bias"), &probs);
  c.setT(emit1("Identity", {y}, {}, c.oname));
  if (n->outputs().size() < 2) return;
  if (!need_weights) {
    env_[n->outputs()[1]] = IVal::none();
    return;
  }
  const bool average = constInt(n, arg(n, "average_attn_weights"), "average_attn_weights") != 0;
  env_[n->outputs()[1]] = IVal::tensor(
      average ? emit1("ReduceMean", {probs}, {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{0}}}) : probs);
}

}  // namespace compress::import_detail
