// importer.cpp — TorchScript to IR.
// The forward graph is inlined, then walked once. Every emitted IR node is run at once on probe inputs
// (batch 2, seq 3), so the importer always knows each value's concrete dtype and rank — that is what
// lets it pick ONNX forms (Transpose perms, type promotion) without a shape-inference engine of its own.
// Integer shape arithmetic becomes Shape/Gather/Mul/Concat on int64 tensors, so batch and sequence stay
// dynamic; compile-time ints and lists are folded.
#include "compress/importer.h"
#include "compress/importer_impl.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/script.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <unordered_map>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/npy.h"

namespace compress {
namespace import_detail {

/// Every TorchScript op the importer converts, and its handler: one row per op (import_ops.cpp holds
/// the handlers added for the model zoo). In-place variants (`aten::relu_`) use the row of `aten::relu`.
const std::unordered_map<std::string, Importer::Handler>& handlerTable() {
  static const std::unordered_map<std::string, Importer::Handler> table = {
      {"prim::Constant", &Importer::hPrimConstant},
      {"prim::GetAttr", &Importer::hPrimGetAttr},
      {"prim::ListConstruct", &Importer::hPrimListConstruct},
      {"prim::TupleConstruct", &Importer::hPrimListConstruct},
      {"prim::ListUnpack", &Importer::hPrimListUnpack},
      {"prim::TupleUnpack", &Importer::hPrimListUnpack},
      {"prim::NumToTensor", &Importer::hPrimNumToTensor},
      {"aten::Int", &Importer::hInt},
      {"aten::ScalarImplicit", &Importer::hInt},
      {"aten::Float", &Importer::hInt},
      {"aten::size", &Importer::hSize},
      {"aten::linear", &Importer::hLinear},
      {"aten::matmul", &Importer::hMatmul},
      {"aten::mm", &Importer::hMatmul},
      {"aten::bmm", &Importer::hMatmul},
      {"aten::addmm", &Importer::hAddmm},
      {"aten::add", &Importer::hAdd},
      {"aten::add_", &Importer::hAdd},
      {"aten::sub", &Importer::hAdd},
      {"aten::rsub", &Importer::hAdd},
      {"aten::mul", &Importer::hMul},
      {"aten::div", &Importer::hDiv},
      {"aten::floordiv", &Importer::hFloordiv},
      {"aten::floor_divide", &Importer::hFloordiv},
      {"aten::pow", &Importer::hPow},
      {"aten::rsqrt", &Importer::hRsqrt},
      {"aten::sqrt", &Importer::hUnary},
      {"aten::neg", &Importer::hUnary},
      {"aten::exp", &Importer::hUnary},
      {"aten::log", &Importer::hUnary},
      {"aten::abs", &Importer::hUnary},
      {"aten::relu", &Importer::hUnary},
      {"aten::relu_", &Importer::hUnary},
      {"aten::tanh", &Importer::hUnary},
      {"aten::sigmoid", &Importer::hUnary},
      {"aten::silu", &Importer::hSilu},
      {"aten::gelu", &Importer::hGelu},
      {"aten::mean", &Importer::hMean},
      {"aten::softmax", &Importer::hSoftmax},
      {"aten::log_softmax", &Importer::hSoftmax},
      {"aten::layer_norm", &Importer::hLayerNorm},
      {"aten::batch_norm", &Importer::hBatchNorm},
      {"aten::embedding", &Importer::hEmbedding},
      {"aten::view", &Importer::hView},
      {"aten::reshape", &Importer::hView},
      {"aten::flatten", &Importer::hFlatten},
      {"aten::transpose", &Importer::hTranspose},
      {"aten::t", &Importer::hT},
      {"aten::permute", &Importer::hPermute},
      {"aten::contiguous", &Importer::hIdentity},
      {"aten::dropout", &Importer::hIdentity},
      {"aten::feature_dropout", &Importer::hIdentity},
      {"aten::alpha_dropout", &Importer::hIdentity},
      {"aten::detach", &Importer::hIdentity},
      {"aten::clone", &Importer::hIdentity},
      {"aten::slice", &Importer::hSlice},
      {"aten::select", &Importer::hSelect},
      {"aten::index", &Importer::hIndex},
      {"aten::stack", &Importer::hStack},
      {"aten::cat", &Importer::hStack},
      {"aten::repeat_interleave", &Importer::hRepeatInterleave},
      {"aten::unsqueeze", &Importer::hUnsqueeze},
      {"aten::squeeze", &Importer::hSqueeze},
      {"aten::expand", &Importer::hExpand},
      {"aten::to", &Importer::hTo},
      {"aten::type_as", &Importer::hTo},
      {"aten::split", &Importer::hSplit},
      {"aten::split_with_sizes", &Importer::hSplit},
      {"aten::chunk", &Importer::hSplit},
      {"aten::conv2d", &Importer::hConv2d},
      {"aten::_convolution", &Importer::hConv2d},
      {"aten::max_pool2d", &Importer::hMaxPool2d},
      {"aten::avg_pool2d", &Importer::hMaxPool2d},
      {"aten::adaptive_avg_pool2d", &Importer::hAdaptiveAvgPool},
      // creation, masks and positions computed from shapes at run time
      {"aten::arange", &Importer::hArange},
      {"aten::full", &Importer::hFull},
      {"aten::zeros", &Importer::hFull},
      {"aten::ones", &Importer::hFull},
      {"aten::new_zeros", &Importer::hFull},
      {"aten::new_ones", &Importer::hFull},
      {"aten::new_full", &Importer::hFull},
      {"aten::zeros_like", &Importer::hFullLike},
      {"aten::ones_like", &Importer::hFullLike},
      {"aten::full_like", &Importer::hFullLike},
      {"aten::triu", &Importer::hTrilu},
      {"aten::tril", &Importer::hTrilu},
      {"aten::cumsum", &Importer::hCumsum},
      {"aten::outer", &Importer::hOuter},
      {"aten::cos", &Importer::hUnary},
      {"aten::sin", &Importer::hUnary},
      {"aten::erf", &Importer::hUnary},
      {"aten::reciprocal", &Importer::hUnary},
      {"aten::eq", &Importer::hCompare},
      {"aten::ne", &Importer::hCompare},
      {"aten::lt", &Importer::hCompare},
      {"aten::le", &Importer::hCompare},
      {"aten::gt", &Importer::hCompare},
      {"aten::ge", &Importer::hCompare},
      {"aten::__and__", &Importer::hLogic},
      {"aten::bitwise_and", &Importer::hLogic},
      {"aten::logical_and", &Importer::hLogic},
      {"aten::__or__", &Importer::hLogic},
      {"aten::bitwise_or", &Importer::hLogic},
      {"aten::logical_or", &Importer::hLogic},
      {"aten::__xor__", &Importer::hLogic},
      {"aten::bitwise_xor", &Importer::hLogic},
      {"aten::logical_xor", &Importer::hLogic},
      {"aten::bitwise_not", &Importer::hNot},
      {"aten::logical_not", &Importer::hNot},
      {"aten::masked_fill", &Importer::hMaskedFill},
      {"aten::where", &Importer::hWhere},
      {"aten::max", &Importer::hMaxMin},
      {"aten::min", &Importer::hMaxMin},
      {"aten::maximum", &Importer::hMaxMin},
      {"aten::minimum", &Importer::hMaxMin},
      {"aten::clamp", &Importer::hClamp},
      {"aten::clamp_min", &Importer::hClamp},
      {"aten::clamp_max", &Importer::hClamp},
      {"aten::baddbmm", &Importer::hBaddbmm},
      {"aten::einsum", &Importer::hEinsum},
      {"aten::sum", &Importer::hSum},
      {"aten::unbind", &Importer::hUnbind},
      {"aten::expand_as", &Importer::hExpandAs},
      {"aten::view_as", &Importer::hExpandAs},
      {"aten::reshape_as", &Importer::hExpandAs},
      // activations
      {"aten::hardswish", &Importer::hActivation},
      {"aten::hardsigmoid", &Importer::hActivation},
      {"aten::hardtanh", &Importer::hActivation},
      {"aten::relu6", &Importer::hActivation},
      {"aten::leaky_relu", &Importer::hActivation},
      {"aten::elu", &Importer::hActivation},
      // eval-time no-ops
      {"aten::feature_alpha_dropout", &Importer::hIdentity},
      {"aten::lift_fresh", &Importer::hIdentity},
      // normalization, padding, resizing, convolution
      {"aten::group_norm", &Importer::hGroupNorm},
      {"aten::instance_norm", &Importer::hInstanceNorm},
      {"aten::pad", &Importer::hPad},
      {"aten::constant_pad_nd", &Importer::hPad},
      {"aten::reflection_pad2d", &Importer::hPad},
      {"aten::replication_pad2d", &Importer::hPad},
      {"aten::upsample_nearest2d", &Importer::hUpsample},
      {"aten::upsample_bilinear2d", &Importer::hUpsample},
      {"aten::conv_transpose2d", &Importer::hConvTranspose},
      // fused fast paths, decomposed so passes see their linear layers
      {"aten::_transformer_encoder_layer_fwd", &Importer::hTransformerEncoderLayer},
      {"aten::_native_multi_head_attention", &Importer::hNativeMha},
  };
  return table;
}

namespace {
bool isInPlace(const std::string& kind) {
  return kind.size() > 1 && kind.back() == '_' && kind.compare(kind.size() - 2, 2, "__") != 0;
}

}  // namespace

Importer::Handler Importer::handlerFor(const std::string& kind) {
  const auto& t = handlerTable();
  auto it = t.find(kind);
  if (it != t.end()) return it->second;
  if (isInPlace(kind)) {
    it = t.find(kind.substr(0, kind.size() - 1));
    if (it != t.end()) return it->second;
  }
  return nullptr;
}

void Importer::checkSupported(jit::Graph& graph) {
  struct Missing {
    int count = 0;
    std::vector<std::string> where;
  };
  std::map<std::string, Missing> missing;
  for (jit::Node* n : graph.nodes()) {
    std::string k = n->kind().toQualString();
    if (handlerFor(k)) continue;
    auto& e = missing[k];
    const std::string src = sourceOf(n);
    if (e.count++ < 3 && !src.empty() && std::find(e.where.begin(), e.where.end(), src) == e.where.end()) e.where.push_back(src);
  }
  if (missing.empty()) return;
  std::string msg = "the model uses " + std::to_string(missing.size()) + " op" + (missing.size() > 1 ? "s" : "") +
                    " the importer does not support:";
  for (const auto& [op, e] : missing) {
    msg += "\n  - " + op + " (" + std::to_string(e.count) + "x";
    for (size_t i = 0; i < e.where.size(); ++i) msg += (i ? ", " : ", at ") + e.where[i];
    msg += ")";
  }
  msg += "\nSupported ops are listed by `compress passes --ops` (docs/models.md says how to trace a model so it "
         "imports); rewrite these parts of the model or open an issue.";
  fail(ErrorCategory::Model, msg);
}

void Importer::dispatch(jit::Node* n) {
  const std::string k = n->kind().toQualString();
  Handler h = handlerFor(k);
  if (!h) unsupported(n, "no mapping");  // checkSupported() lists everything first; this is a safety net
  jit::Value* out0 = n->outputs().empty() ? nullptr : n->outputs()[0];
  // handlers see the out-of-place name (aten::hardswish for aten::hardswish_)
  const std::string base = handlerTable().count(k) ? k : k.substr(0, k.size() - 1);
  Call c{*this, n, base, out0, out0 ? cleanName(out0->debugName()) : ""};
  (this->*h)(c);
  static const std::set<std::string> kViews = {"aten::slice", "aten::select", "aten::view", "aten::reshape", "aten::transpose",
                                               "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::t",
                                               "aten::narrow", "aten::expand_as", "aten::view_as", "aten::flatten"};
  if (kViews.count(k) && out0) {
    const IVal& v = env_[out0];
    if (v.kind == IVal::Tensor && v.name != get(n->inputs()[0]).name) view_values_.insert(v.name);
  }
  // An in-place op's result replaces its first input for everything after it (scripted models read the
  // input value again; traces already read the output).
  if (isInPlace(k) && !n->inputs().empty() && out0) {
    if (h != &Importer::hIdentity && view_values_.count(get(n->inputs()[0]).name))
      unsupported(n, "an in-place update of a view (slice, select, view, ...) of another tensor; write it out of place");
    env_[n->inputs()[0]] = env_[out0];
  }
}

void Importer::hPrimConstant(Call& c) {
  auto iv = jit::toIValue(c.out0);
  if (!iv || iv->isNone()) return c.set(IVal::none());
  if (iv->isInt()) return c.set(IVal::integer(iv->toInt()));
  if (iv->isDouble()) return c.set(IVal::number(iv->toDouble()));
  if (iv->isBool()) { IVal v; v.kind = IVal::Bool; v.b = iv->toBool(); return c.set(v); }
  if (iv->isString()) { IVal v; v.kind = IVal::Str; v.s = iv->toStringRef(); return c.set(v); }
  if (iv->isTensor()) return c.setT(constant(iv->toTensor()));
  if (iv->isIntList()) {
    IVal v; v.kind = IVal::List;
    for (auto x : iv->toIntVector()) v.items.push_back(IVal::integer(x));
    return c.set(v);
  }
  IVal v; v.kind = IVal::Other; v.obj = *iv;
  return c.set(v);

}

void Importer::hPrimGetAttr(Call& c) {
  jit::Node* n = c.n;
  IVal self = get(n->inputs()[0]);
  const std::string attr = n->s(c10::Symbol::attr("name"));
  if (self.kind != IVal::Object || !self.obj.isObject()) unsupported(n, "attribute access on a non-module");
  auto obj = self.obj.toObject();
  c10::IValue val = obj->getAttr(attr);
  std::string path = self.s.empty() ? attr : self.s + "." + attr;
  if (val.isTensor()) return c.setT(addParameter(path, val.toTensor()));
  if (val.isObject()) { IVal v = objectVal(val); v.s = path; return c.set(v); }
  if (val.isInt()) return c.set(IVal::integer(val.toInt()));
  if (val.isDouble()) return c.set(IVal::number(val.toDouble()));
  if (val.isBool()) { IVal v; v.kind = IVal::Bool; v.b = val.toBool(); return c.set(v); }
  unsupported(n, "module attribute '" + path + "' has an unsupported type");

}

void Importer::hPrimListConstruct(Call& c) {
  jit::Node* n = c.n;
  IVal v; v.kind = IVal::List;
  for (auto* i : n->inputs()) v.items.push_back(get(i));
  return c.set(v);

}

void Importer::hPrimListUnpack(Call& c) {
  jit::Node* n = c.n;
  IVal l = get(n->inputs()[0]);
  if (l.kind != IVal::List || l.items.size() != n->outputs().size()) unsupported(n, "cannot unpack this list");
  for (size_t i = 0; i < n->outputs().size(); ++i) env_[n->outputs()[i]] = l.items[i];
  return;

}

void Importer::hPrimNumToTensor(Call& c) {
  jit::Node* n = c.n;
  IVal v = get(n->inputs()[0]);
  if (v.kind == IVal::DynInt) v.kind = IVal::Tensor;
  return c.set(v);

}

void Importer::hInt(Call& c) {
  jit::Node* n = c.n;
  IVal v = get(n->inputs()[0]);
  if (v.kind == IVal::Tensor) {
    if (rank(v.name) != 0) unsupported(n, "converting a non-scalar tensor to a number");
    v.kind = c.k == "aten::Float" ? IVal::Tensor : IVal::DynInt;
  }
  return c.set(v);

}

void Importer::hSize(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  if (n->inputs().size() < 2) unsupported(n, "aten::size without a dim (use x.size(d))");
  int64_t d = constInt(n, get(n->inputs()[1]), "dim");
  return c.set(IVal::dynInt(emit1("Gather", {shapeOf(x), constant(at::scalar_tensor(d, at::kLong))}, {{"axis", int64_t{0}}})));

}

void Importer::hLinear(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0), w = c.T(1);
  std::string wt = emit1("Transpose", {w}, {{"perm", std::vector<int64_t>{1, 0}}});
  std::string y = emit1("MatMul", {x, wt}, {}, c.oname);
  IVal b = arg(n, "bias");
  if (b.kind != IVal::None) y = emit1("Add", {y, b.name}, {}, c.oname);
  return c.setT(y);

}

void Importer::hMatmul(Call& c) {
  return c.setT(emit1("MatMul", {c.T(0), c.T(1)}, {}, c.oname));
}

void Importer::hAddmm(Call& c) {
  jit::Node* n = c.n;
  double beta = get(n->inputs()[3]).kind == IVal::Int ? get(n->inputs()[3]).i : get(n->inputs()[3]).f;
  double alpha = get(n->inputs()[4]).kind == IVal::Int ? get(n->inputs()[4]).i : get(n->inputs()[4]).f;
  if (alpha == 1 && beta == 1) {  // HF Conv1D and nn.Linear traced as addmm: the MatMul + bias a linear layer is
    std::string y = emit1("MatMul", {c.T(1), c.T(2)}, {}, c.oname + ".mm");
    return c.setT(emit1("Add", {y, c.T(0)}, {}, c.oname));
  }
  return c.setT(emit1("Gemm", {c.T(1), c.T(2), c.T(0)}, {{"alpha", alpha}, {"beta", beta}}, c.oname));

}

void Importer::hAdd(Call& c) {
  jit::Node* n = c.n;
  IVal a = get(n->inputs()[0]), b = get(n->inputs()[1]);
  if (n->inputs().size() > 2) {
    IVal alpha = get(n->inputs()[2]);
    double al = alpha.kind == IVal::Int ? alpha.i : alpha.kind == IVal::Float ? alpha.f : 1.0;
    if (al != 1.0) {
      if (b.kind == IVal::Int || b.kind == IVal::Float) b = IVal::number((b.kind == IVal::Int ? b.i : b.f) * al);
      else b = IVal::tensor(emit1("Mul", {b.name, constScalar(al, stype(b.name))}));
    }
  }
  return binary(n, c.k == "aten::add" || c.k == "aten::add_" ? "Add" : "Sub", a, b, c.k == "aten::rsub");

}

void Importer::hMul(Call& c) {
  jit::Node* n = c.n;
  return binary(n, "Mul", get(n->inputs()[0]), get(n->inputs()[1]));
}

void Importer::hDiv(Call& c) {
  jit::Node* n = c.n;
  if (n->inputs().size() > 2) {
    IVal mode = get(n->inputs()[2]);
    if (mode.kind == IVal::Str && mode.s == "floor") return binary(n, "FloorDiv", get(n->inputs()[0]), get(n->inputs()[1]));
    if (mode.kind == IVal::Str && mode.s == "trunc") {
      IVal a = get(n->inputs()[0]);
      if (a.kind == IVal::Tensor && at::isFloatingType(stype(a.name))) unsupported(n, "trunc division of floating tensors");
      return binary(n, "FloorDiv", a, get(n->inputs()[1]));
    }
  }
  return binary(n, "Div", get(n->inputs()[0]), get(n->inputs()[1]));

}

void Importer::hFloordiv(Call& c) {
  jit::Node* n = c.n;
  return binary(n, "FloorDiv", get(n->inputs()[0]), get(n->inputs()[1]));
}

void Importer::hPow(Call& c) {
  jit::Node* n = c.n;
  return binary(n, "Pow", get(n->inputs()[0]), get(n->inputs()[1]));
}

void Importer::hRsqrt(Call& c) {
  return c.setT(emit1("Reciprocal", {emit1("Sqrt", {c.T(0)})}, {}, c.oname));
}

void Importer::hUnary(Call& c) {
  jit::Node* n = c.n;
  static const std::map<std::string, std::string> unaries = {
    {"aten::sqrt", "Sqrt"}, {"aten::neg", "Neg"},   {"aten::exp", "Exp"},         {"aten::log", "Log"},
    {"aten::abs", "Abs"},   {"aten::relu", "Relu"}, {"aten::relu_", "Relu"},      {"aten::tanh", "Tanh"},
    {"aten::sigmoid", "Sigmoid"}, {"aten::cos", "Cos"}, {"aten::sin", "Sin"}, {"aten::erf", "Erf"},
    {"aten::reciprocal", "Reciprocal"}};
  auto u = unaries.find(c.k);
  if (u == unaries.end()) unsupported(n, "no unary mapping");
  unaryOp(n, u->second);
}

void Importer::hSilu(Call& c) {
  std::string x = c.T(0);
  return c.setT(emit1("Mul", {x, emit1("Sigmoid", {x})}, {}, c.oname));
}

void Importer::hGelu(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  at::ScalarType st = stype(x);
  std::string approx = "none";
  if (hasArg(n, "approximate")) approx = arg(n, "approximate").s;
  std::string inner;
  if (approx == "tanh") {  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    std::string x3 = emit1("Mul", {emit1("Mul", {x, x}), x});
    std::string s = emit1("Add", {x, emit1("Mul", {x3, constScalar(0.044715, st)})});
    inner = emit1("Tanh", {emit1("Mul", {s, constScalar(std::sqrt(2.0 / M_PI), st)})});
  } else {  // 0.5 x (1 + erf(x / sqrt 2))
    inner = emit1("Erf", {emit1("Div", {x, constScalar(std::sqrt(2.0), st)})});
  }
  std::string y = emit1("Mul", {emit1("Mul", {x, constScalar(0.5, st)}), emit1("Add", {inner, constScalar(1.0, st)})}, {}, c.oname);
  return c.setT(y);

}

void Importer::hMean(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  if (n->inputs().size() <= 2) return c.setT(emit1("ReduceMean", {x}, {{"keepdims", int64_t{0}}}, c.oname));
  auto dims = constIntList(n, arg(n, "dim"), "dim");
  int64_t keep = constInt(n, arg(n, "keepdim"), "keepdim");
  return c.setT(emit1("ReduceMean", {x}, {{"axes", dims}, {"keepdims", keep}}, c.oname));

}

void Importer::hSoftmax(Call& c) {
  jit::Node* n = c.n;
  int64_t d = constInt(n, arg(n, "dim"), "dim");
  return c.setT(emit1(c.k == "aten::softmax" ? "Softmax" : "LogSoftmax", {c.T(0)}, {{"axis", d}}, c.oname));

}

void Importer::hLayerNorm(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  auto shape = constIntList(n, arg(n, "normalized_shape"), "normalized_shape");
  IVal w = arg(n, "weight"), b = arg(n, "bias");
  std::vector<int64_t> s(shape.begin(), shape.end());
  std::string wn = w.kind == IVal::None ? constant(at::ones(s, stype(x))) : w.name;
  std::vector<std::string> ins = {x, wn};
  if (b.kind != IVal::None) ins.push_back(b.name);
  double eps = arg(n, "eps").f;
  return c.setT(emit1("LayerNormalization", ins, {{"axis", -static_cast<int64_t>(shape.size())}, {"epsilon", eps}}, c.oname));

}

void Importer::hBatchNorm(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal w = arg(n, "weight"), b = arg(n, "bias"), rm = arg(n, "running_mean"), rv = arg(n, "running_var");
  if (rm.kind == IVal::None || rv.kind == IVal::None) unsupported(n, "batch_norm without running statistics");
  int64_t ch = probe_.at(x).size(1);
  std::string wn = w.kind == IVal::None ? constant(at::ones({ch}, stype(x))) : w.name;
  std::string bn = b.kind == IVal::None ? constant(at::zeros({ch}, stype(x))) : b.name;
  return c.setT(emit1("BatchNormalization", {x, wn, bn, rm.name, rv.name}, {{"epsilon", arg(n, "eps").f}}, c.oname));

}

void Importer::hEmbedding(Call& c) {
  return c.setT(emit1("Gather", {c.T(0), c.T(1)}, {{"axis", int64_t{0}}}, c.oname));
}

void Importer::hView(Call& c) {
  jit::Node* n = c.n;
  return c.setT(emit1("Reshape", {c.T(0), shapeTensor(n, get(n->inputs()[1]))}, {}, c.oname));
}

void Importer::hFlatten(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t r = rank(x);
  int64_t s = constInt(n, arg(n, "start_dim"), "start_dim"), e = constInt(n, arg(n, "end_dim"), "end_dim");
  if (s < 0) s += r;
  if (e < 0) e += r;
  if (r == 0) return c.setT(emit1("Reshape", {x, constInts({1})}, {}, c.oname));
  std::vector<std::string> parts;
  std::string shp = shapeOf(x);
  if (s > 0) parts.push_back(emit1("Slice", {shp, constInts({0}), constInts({s})}));
  parts.push_back(constInts({-1}));
  if (e + 1 < r) parts.push_back(emit1("Slice", {shp, constInts({e + 1}), constInts({r})}));
  std::string target = parts.size() == 1 ? parts[0] : emit1("Concat", parts, {{"axis", int64_t{0}}});
  return c.setT(emit1("Reshape", {x, target}, {}, c.oname));

}

void Importer::hTranspose(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t r = rank(x);
  int64_t a = constInt(n, get(n->inputs()[1]), "dim0"), b = constInt(n, get(n->inputs()[2]), "dim1");
  if (a < 0) a += r;
  if (b < 0) b += r;
  std::vector<int64_t> perm(r);
  for (int64_t i = 0; i < r; ++i) perm[i] = i;
  std::swap(perm[a], perm[b]);
  return c.setT(emit1("Transpose", {x}, {{"perm", perm}}, c.oname));

}

void Importer::hT(Call& c) {
  std::string x = c.T(0);
  if (rank(x) < 2) return c.setT(x);
  return c.setT(emit1("Transpose", {x}, {{"perm", std::vector<int64_t>{1, 0}}}, c.oname));
}

void Importer::hPermute(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  auto dims = constIntList(n, get(n->inputs()[1]), "dims");
  for (auto& d : dims) if (d < 0) d += rank(x);
  return c.setT(emit1("Transpose", {x}, {{"perm", dims}}, c.oname));

}

void Importer::hIdentity(Call& c) {
  jit::Node* n = c.n;
  return c.set(get(n->inputs()[0]));
}

void Importer::hSlice(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t dim = constInt(n, arg(n, "dim"), "dim");
  IVal start = arg(n, "start"), end = arg(n, "end"), step = arg(n, "step");
  if (start.kind == IVal::None) start = IVal::integer(0);
  if (end.kind == IVal::None) end = IVal::integer(INT64_MAX);
  int64_t st = step.kind == IVal::None ? 1 : constInt(n, step, "step");
  if (start.kind == IVal::Int && start.i == 0 && end.kind == IVal::Int && end.i == INT64_MAX && st == 1)
    return c.setT(x);  // a full slice is the identity (traces are full of them)
  return c.setT(emit1("Slice", {x, oneD(n, start), oneD(n, end), constInts({dim}), constInts({st})}, {}, c.oname));

}

void Importer::hSelect(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t dim = constInt(n, arg(n, "dim"), "dim");
  IVal idx = arg(n, "index");
  std::string in = idx.kind == IVal::Int ? constant(at::scalar_tensor(idx.i, at::kLong)) : idx.name;
  return c.setT(emit1("Gather", {x, in}, {{"axis", dim}}, c.oname));

}

void Importer::hIndex(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal list = get(n->inputs()[1]);
  int axis = -1;
  for (size_t i = 0; i < list.items.size(); ++i)
    if (list.items[i].kind != IVal::None) {
      if (axis >= 0) unsupported(n, "indexing with more than one index tensor");
      axis = static_cast<int>(i);
    }
  if (axis < 0) unsupported(n, "indexing without an index tensor");
  std::string idx = list.items[axis].name;
  if (stype(idx) == at::kBool) unsupported(n, "boolean mask indexing");
  return c.setT(emit1("Gather", {x, idx}, {{"axis", int64_t{axis}}}, c.oname));

}

void Importer::hStack(Call& c) {
  jit::Node* n = c.n;
  IVal list = get(n->inputs()[0]);
  int64_t dim = constInt(n, get(n->inputs()[1]), "dim");
  std::vector<std::string> parts;
  for (const auto& it : list.items) parts.push_back(asTensor(it));
  if (parts.empty()) unsupported(n, "empty tensor list");
  if (c.k == "aten::stack") {
    int64_t r = rank(parts[0]) + 1;
    if (dim < 0) dim += r;
    for (auto& p : parts) p = emit1("Unsqueeze", {p, constInts({dim})});
  }
  return c.setT(emit1("Concat", parts, {{"axis", dim}}, c.oname));

}

void Importer::hRepeatInterleave(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal rep = get(n->inputs()[1]);
  if (rep.kind != IVal::Int) unsupported(n, "repeat_interleave with a tensor of repeats");
  IVal dimv = arg(n, "dim");
  if (dimv.kind == IVal::None) unsupported(n, "repeat_interleave without dim");
  int64_t r = rank(x), d = dimv.i < 0 ? dimv.i + r : dimv.i;
  // x[..., n, ...] -> unsqueeze(d+1) -> expand repeats -> merge dims d and d+1.
  std::string shp = shapeOf(x);
  std::string u = emit1("Unsqueeze", {x, constInts({d + 1})});
  std::vector<std::string> tgt;
  tgt.push_back(emit1("Slice", {shp, constInts({0}), constInts({d + 1})}));
  tgt.push_back(constInts({rep.i}));
  if (d + 1 < r) tgt.push_back(emit1("Slice", {shp, constInts({d + 1}), constInts({r})}));
  std::string e = emit1("Expand", {u, emit1("Concat", tgt, {{"axis", int64_t{0}}})});
  std::vector<std::string> fin;
  if (d > 0) fin.push_back(emit1("Slice", {shp, constInts({0}), constInts({d})}));
  fin.push_back(constInts({-1}));
  if (d + 1 < r) fin.push_back(emit1("Slice", {shp, constInts({d + 1}), constInts({r})}));
  std::string target = fin.size() == 1 ? fin[0] : emit1("Concat", fin, {{"axis", int64_t{0}}});
  return c.setT(emit1("Reshape", {e, target}, {}, c.oname));

}

void Importer::hUnsqueeze(Call& c) {
  jit::Node* n = c.n;
  return c.setT(emit1("Unsqueeze", {c.T(0), constInts({constInt(n, get(n->inputs()[1]), "dim")})}, {}, c.oname));
}

void Importer::hSqueeze(Call& c) {
  jit::Node* n = c.n;
  if (n->inputs().size() == 1) return c.setT(emit1("Squeeze", {c.T(0)}, {}, c.oname));
  std::string x = c.T(0);
  int64_t d = constInt(n, get(n->inputs()[1]), "dim");
  if (probe_.at(x).size(d) != 1) return c.setT(x);  // torch: squeezing a non-1 dim is a no-op
  return c.setT(emit1("Squeeze", {x, constInts({d})}, {}, c.oname));

}

void Importer::hExpand(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  IVal sizes = get(n->inputs()[1]);
  for (auto& it : sizes.items) if (it.kind == IVal::Int && it.i == -1) it.i = 1;  // torch -1 = keep
  return c.setT(emit1("Expand", {x, shapeTensor(n, sizes)}, {}, c.oname));

}

void Importer::hTo(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  at::ScalarType st;
  if (c.k == "aten::type_as") st = stype(c.T(1));
  else if (hasArg(n, "dtype") && arg(n, "dtype").kind == IVal::Int) st = static_cast<at::ScalarType>(arg(n, "dtype").i);
  else return c.setT(x);  // device-only move
  if (st == stype(x)) return c.setT(x);
  return c.setT(emit1("Cast", {x}, {{"to", static_cast<int64_t>(dtypeFromScalarType(st))}}, c.oname));

}

void Importer::hSplit(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  int64_t dim = constInt(n, arg(n, "dim"), "dim");
  int64_t size = probe_.at(x).size(dim < 0 ? dim + rank(x) : dim);
  std::vector<int64_t> sizes;
  if (c.k == "aten::chunk") {
    int64_t c = constInt(n, arg(n, "chunks"), "chunks"), each = (size + c - 1) / c;
    for (int64_t s = 0; s < size; s += each) sizes.push_back(std::min(each, size - s));
  } else {
    IVal sp = get(n->inputs()[1]);
    if (sp.kind == IVal::Int)
      for (int64_t s = 0; s < size; s += sp.i) sizes.push_back(std::min(sp.i, size - s));
    else sizes = constIntList(n, sp, "split sizes");
  }
  auto outs = emit("Split", {x, constInts(sizes)}, {{"axis", dim}}, static_cast<int>(sizes.size()), c.oname);
  IVal l; l.kind = IVal::List;
  for (auto& o : outs) l.items.push_back(IVal::tensor(o));
  return c.set(l);

}

void Importer::hConv2d(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0), w = c.T(1);
  IVal b = arg(n, "bias");
  if (c.k == "aten::_convolution" && constInt(n, arg(n, "transposed"), "transposed")) return hConvTranspose(c);
  auto stride = constIntList(n, arg(n, "stride"), "stride");
  auto pad = constIntList(n, arg(n, "padding"), "padding");
  auto dil = constIntList(n, arg(n, "dilation"), "dilation");
  int64_t groups = constInt(n, arg(n, "groups"), "groups");
  int64_t sp = rank(w) - 2;
  if (stride.size() == 1) stride.assign(sp, stride[0]);
  if (pad.size() == 1) pad.assign(sp, pad[0]);
  if (dil.size() == 1) dil.assign(sp, dil[0]);
  std::vector<int64_t> pads = pad;
  pads.insert(pads.end(), pad.begin(), pad.end());
  std::vector<int64_t> ks(probe_.at(w).sizes().begin() + 2, probe_.at(w).sizes().end());
  std::vector<std::string> ins = {x, w};
  if (b.kind != IVal::None) ins.push_back(b.name);
  return c.setT(emit1("Conv", ins, {{"strides", stride}, {"pads", pads}, {"dilations", dil}, {"group", groups},
                                 {"kernel_shape", ks}}, c.oname));

}

void Importer::hMaxPool2d(Call& c) {
  jit::Node* n = c.n;
  std::string x = c.T(0);
  auto ks = constIntList(n, arg(n, "kernel_size"), "kernel_size");
  if (ks.size() == 1) ks.assign(2, ks[0]);
  auto stride = constIntList(n, arg(n, "stride"), "stride");
  if (stride.empty()) stride = ks;
  if (stride.size() == 1) stride.assign(2, stride[0]);
  auto pad = constIntList(n, arg(n, "padding"), "padding");
  if (pad.size() == 1) pad.assign(2, pad[0]);
  std::vector<int64_t> pads = pad;
  pads.insert(pads.end(), pad.begin(), pad.end());
  int64_t ceil = constInt(n, arg(n, "ceil_mode"), "ceil_mode");
  std::map<std::string, Attribute> at = {{"kernel_shape", ks}, {"strides", stride}, {"pads", pads}, {"ceil_mode", ceil}};
  if (c.k == "aten::max_pool2d") {
    auto dil = constIntList(n, arg(n, "dilation"), "dilation");
    if (dil.size() == 1) dil.assign(2, dil[0]);
    at["dilations"] = dil;
    return c.setT(emit1("MaxPool", {x}, at, c.oname));
  }
  if (arg(n, "divisor_override").kind != IVal::None) unsupported(n, "avg_pool2d with divisor_override");
  at["count_include_pad"] = constInt(n, arg(n, "count_include_pad"), "count_include_pad");
  return c.setT(emit1("AveragePool", {x}, at, c.oname));

}


}  // namespace import_detail

namespace {

using import_detail::Importer;
namespace jit = torch::jit;

/// Every tensor storage the module uses must have a record in the archive of exactly its size:
/// LibTorch 1.13 sizes storages from the pickle and fills them from the record, so a truncated record
/// would load silently as garbage (or reads past the record's end).
void checkTensorRecords(const std::string& path, const jit::Module& m) {
  std::multiset<size_t> records;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const std::string& name : reader.getAllRecords()) {
      const size_t slash = name.rfind('/');
      const std::string dir = slash == std::string::npos ? "" : name.substr(0, slash);
      const std::string leaf = name.substr(slash + 1);
      const bool tensor_record = (dir.size() >= 4 && (dir.compare(dir.size() - 4, 4, "data") == 0 ||
                                                      (dir.size() >= 9 && dir.compare(dir.size() - 9, 9, "constants") == 0))) &&
                                 !leaf.empty() && leaf.find_first_not_of("0123456789") == std::string::npos;
      if (tensor_record) records.insert(std::get<1>(reader.getRecord(name)));
    }
  } catch (const std::exception& e) {
    fail(ErrorCategory::Model, "'" + path + "' is not a readable TorchScript archive (" + withoutBacktrace(e.what(), 300) + ")");
  }
  std::map<const void*, std::pair<size_t, std::string>> storages;  // distinct storages and a tensor using each
  auto add = [&](const std::string& name, const at::Tensor& t) {
    if (!t.defined() || !t.has_storage() || t.storage().nbytes() == 0) return;
    storages.emplace(t.storage().data(), std::make_pair(t.storage().nbytes(), name));
    int64_t last = t.storage_offset();  // the last element the tensor reaches (LibTorch strides are >= 0)
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    if (t.numel() > 0 && (last + 1) * static_cast<int64_t>(t.element_size()) > static_cast<int64_t>(t.storage().nbytes()))
      fail(ErrorCategory::Model, "'" + path + "': tensor '" + name + "' reaches past the end of its storage (corrupt archive)");
  };
  for (const auto& p : m.named_parameters(true)) add(p.name, p.value);
  for (const auto& b : m.named_buffers(true)) add(b.name, b.value);
  for (const auto& a : m.named_attributes(true))
    if (a.value.isTensor()) add(a.name, a.value.toTensor());
  for (const auto& method : m.get_methods())
    for (const jit::Node* n : method.graph()->nodes())
      if (n->kind() == c10::prim::Constant && n->output()->type()->kind() == c10::TypeKind::TensorType)
        if (auto v = jit::toIValue(n->output()); v && v->isTensor()) add("a constant of " + method.name(), v->toTensor());
  for (const auto& [ptr, st] : storages) {
    auto it = records.find(st.first);
    if (it == records.end())
      fail(ErrorCategory::Model, "'" + path + "' is corrupt: no tensor record holds the " + std::to_string(st.first) + " bytes of '" +
                                     st.second + "' (a truncated or altered archive). Re-save the model with torch.jit.save(...)");
    records.erase(it);
  }
}

}  // namespace

std::vector<std::string> importableOps() {
  std::vector<std::string> ops;
  for (const auto& [k, h] : import_detail::handlerTable()) ops.push_back(k);
  std::sort(ops.begin(), ops.end());
  return ops;
}

Graph importTorchScript(const std::string& path, const ImportOptions& options) {
  checkRegularFile(path, "a TorchScript .pt file (relative paths in a recipe are relative to the recipe file)");
  jit::Module m;
  try {
    m = torch::jit::load(path, c10::Device(c10::kCPU));
  } catch (const std::exception& e) {
    const std::string what = withoutBacktrace(e.what(), 300);
    fail(ErrorCategory::Model, "'" + path + "' is not a loadable TorchScript file (" + what +
                                   "). Save the model with torch.jit.trace(...) or torch.jit.script(...) and then torch.jit.save(...).");
  }
  checkTensorRecords(path, m);
  m.eval();
  if (!m.find_method("forward"))
    fail(ErrorCategory::Model, "'" + path + "' has no forward() method");
  try {
    Importer imp(m, options);
    return imp.run();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(ErrorCategory::Model, "while importing '" + path + "': " + withoutBacktrace(e.what()));
  }
}

}  // namespace compress
