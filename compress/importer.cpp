// importer.cpp — TorchScript to IR.
// The forward graph is inlined, then walked once. Every emitted IR node is run at once on probe inputs
// (batch 2, seq 3), so the importer always knows each value's concrete dtype and rank — that is what
// lets it pick ONNX forms (Transpose perms, type promotion) without a shape-inference engine of its own.
// Integer shape arithmetic becomes Shape/Gather/Mul/Concat on int64 tensors, so batch and sequence stay
// dynamic; compile-time ints and lists are folded.
#include "compress/importer.h"

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
namespace {

namespace jit = torch::jit;

// What a TorchScript value is while importing.
struct IVal {
  enum Kind { Tensor, Int, Float, Bool, None, Str, DynInt, List, Object, Other } kind = Other;
  std::string name;  // IR value name (Tensor, DynInt)
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<IVal> items;  // List
  c10::IValue obj;          // Object (modules) and constant lists we keep whole

  static IVal tensor(std::string n) { IVal v; v.kind = Tensor; v.name = std::move(n); return v; }
  static IVal integer(int64_t x) { IVal v; v.kind = Int; v.i = x; return v; }
  static IVal dynInt(std::string n) { IVal v; v.kind = DynInt; v.name = std::move(n); return v; }
  static IVal number(double x) { IVal v; v.kind = Float; v.f = x; return v; }
  static IVal none() { IVal v; v.kind = None; return v; }
};

const std::set<std::string>& mappedOps() {
  static const std::set<std::string> ops = {
      "prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::ListUnpack", "prim::TupleConstruct",
      "prim::TupleUnpack", "prim::NumToTensor", "aten::Int", "aten::ScalarImplicit", "aten::Float",
      "aten::size", "aten::linear", "aten::matmul", "aten::mm", "aten::bmm", "aten::addmm", "aten::add",
      "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::div", "aten::floordiv", "aten::floor_divide",
      "aten::pow", "aten::rsqrt", "aten::sqrt", "aten::neg", "aten::exp", "aten::log", "aten::abs",
      "aten::mean", "aten::softmax", "aten::log_softmax", "aten::silu", "aten::gelu", "aten::relu",
      "aten::relu_", "aten::tanh", "aten::sigmoid", "aten::embedding", "aten::layer_norm", "aten::view",
      "aten::reshape", "aten::flatten", "aten::transpose", "aten::permute", "aten::t", "aten::contiguous",
      "aten::slice", "aten::select", "aten::index", "aten::stack", "aten::cat", "aten::repeat_interleave",
      "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::conv2d", "aten::_convolution",
      "aten::max_pool2d", "aten::avg_pool2d", "aten::adaptive_avg_pool2d", "aten::batch_norm",
      "aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::detach", "aten::clone",
      "aten::to", "aten::type_as", "aten::split", "aten::split_with_sizes", "aten::chunk"};
  return ops;
}

std::string sourceOf(const jit::Node* n) {
  auto range = n->sourceRange();
  if (auto gen = range.findSourceRangeThatGenerated()) range = *gen;
  if (auto flc = range.file_line_col()) {
    return std::get<0>(*flc) + ":" + std::to_string(std::get<1>(*flc));
  }
  return "";
}

std::string cleanName(const std::string& debug) {
  std::string s = debug;
  for (auto& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.')) c = '_';
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) s = "v" + s;  // TorchScript's %43 -> v43
  return s;
}

class Importer {
 public:
  Importer(jit::Module module, const ImportOptions& opts) : module_(std::move(module)), opts_(opts) {}

  Graph run() {
    auto graph = module_.get_method("forward").graph()->copy();
    jit::Inline(*graph);
    // Scripted models branch on module flags (`self.training`, `inplace`): fix them to inference values
    // and fold the constant branches away, so only dataflow is left.
    for (jit::Node* n : graph->nodes())
      if (n->kind() == c10::prim::GetAttr && n->s(c10::Symbol::attr("name")) == "training") {
        jit::WithInsertPoint guard(n);
        n->output()->replaceAllUsesWith(graph->insertConstant(false));
      }
    jit::ConstantPropagation(graph);
    jit::EliminateDeadCode(graph);
    checkSupported(*graph);
    for (const auto& p : module_.named_parameters(true)) param_names_.insert(p.name);

    // Inputs: the first graph input is the module itself.
    auto inputs = graph->inputs();
    env_[inputs[0]] = objectVal(module_._ivalue());
    std::vector<std::string> arg_names;
    for (size_t k = 1; k < inputs.size(); ++k) {
      std::string n = inputs[k]->debugName();
      auto dot = n.find('.');
      arg_names.push_back(dot == std::string::npos ? n : n.substr(0, dot));
    }
    for (size_t k = 0; k < arg_names.size(); ++k) {
      InputSpec spec{arg_names[k], DType::Int64, {Dim::sym("batch"), Dim::sym("seq")}};
      if (!opts_.inputs.empty()) {
        auto it = std::find_if(opts_.inputs.begin(), opts_.inputs.end(),
                               [&](const InputSpec& s) { return s.name == arg_names[k]; });
        if (it != opts_.inputs.end()) spec = *it;
        else if (opts_.inputs.size() == arg_names.size()) spec = opts_.inputs[k], spec.name = arg_names[k];
        else
          fail(ErrorCategory::Config, "the model's forward() takes '" + arg_names[k] +
                                          "' but the recipe's inputs: section does not describe it");
      }
      g_.inputs.push_back(spec.name);
      g_.values[spec.name] = ValueInfo{spec.dtype, spec.shape};
      specs_[spec.name] = {spec.dtype, spec.shape};
      probe_[spec.name] = probeTensor(spec.dtype, spec.shape, 2, 3);
      env_[inputs[k + 1]] = IVal::tensor(spec.name);
    }

    for (jit::Node* n : graph->nodes()) {
      current_source_ = sourceOf(n);
      convert(n);
    }

    // Outputs.
    std::vector<IVal> outs;
    for (jit::Value* v : graph->outputs()) {
      IVal iv = get(v);
      if (iv.kind == IVal::List) outs.insert(outs.end(), iv.items.begin(), iv.items.end());
      else outs.push_back(iv);
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      if (outs[k].kind != IVal::Tensor)
        fail(ErrorCategory::Model, "model output " + std::to_string(k) + " is not a tensor; only tensor outputs are supported");
      std::string want = k < opts_.output_names.size() ? opts_.output_names[k]
                         : outs.size() == 1            ? "logits"
                                                       : "output_" + std::to_string(k);
      // Give the output a stable name with an Identity when its value is also an internal one.
      std::string src = outs[k].name;
      if (g_.isInitializer(src) || std::find(g_.inputs.begin(), g_.inputs.end(), src) != g_.inputs.end() ||
          std::find(g_.outputs.begin(), g_.outputs.end(), src) != g_.outputs.end()) {
        src = emit("Identity", {src}, {}, 1, want)[0];
      } else {
        rename(src, want);
      }
      g_.outputs.push_back(want);
    }
    // Traces record a tied weight under the first path that reached it (the tracer dedups tensors), so the
    // other names are only found on the module: record every parameter sharing a used tensor's storage.
    for (const auto& p : module_.named_parameters(true)) {
      auto it = tensor_by_storage_.find(p.value.data_ptr());
      if (it != tensor_by_storage_.end() && it->second != p.name && g_.initializers.count(it->second) &&
          g_.initializers.at(it->second).sizes() == p.value.sizes())
        g_.aliases[p.name] = it->second;
    }
    g_.pruneUnused();
    inferShapes(g_, specs_);
    verify(g_);
    return std::move(g_);
  }

 private:
  jit::Module module_;
  ImportOptions opts_;
  Graph g_;
  std::unordered_map<const jit::Value*, IVal> env_;
  std::map<std::string, at::Tensor> probe_;
  std::map<std::string, std::pair<DType, Shape>> specs_;
  std::set<std::string> param_names_;
  std::map<const void*, std::string> tensor_by_storage_;  // for tied weights
  std::map<std::string, std::string> shape_of_;           // value -> its Shape node output
  std::map<std::string, std::string> small_consts_;  // value bytes -> initializer name
  std::string current_source_;
  int node_counter_ = 0;

  void checkSupported(jit::Graph& graph) {
    std::map<std::string, std::pair<int, std::string>> missing;
    for (jit::Node* n : graph.nodes()) {
      std::string k = n->kind().toQualString();
      if (mappedOps().count(k)) continue;
      auto& e = missing[k];
      if (e.first++ == 0) e.second = sourceOf(n);
    }
    if (missing.empty()) return;
    std::string msg = "the model uses " + std::to_string(missing.size()) + " op" + (missing.size() > 1 ? "s" : "") +
                      " the importer does not support:";
    for (const auto& [op, e] : missing)
      msg += "\n  - " + op + " (" + std::to_string(e.first) + "x" + (e.second.empty() ? "" : ", first at " + e.second) + ")";
    msg += "\nSupported ops are listed by `compress passes --ops`; rewrite these parts of the model or open an issue.";
    fail(ErrorCategory::Model, msg);
  }

  [[noreturn]] void unsupported(const jit::Node* n, const std::string& why) {
    fail(ErrorCategory::Model, std::string(n->kind().toQualString()) +
                                   (current_source_.empty() ? "" : " at " + current_source_) + ": " + why);
  }

  static IVal objectVal(const c10::IValue& v) {
    IVal r;
    r.kind = IVal::Object;
    r.obj = v;
    return r;
  }

  IVal get(const jit::Value* v) {
    auto it = env_.find(v);
    if (it != env_.end()) return it->second;
    fail(ErrorCategory::Internal, "TorchScript value %" + v->debugName() + " used before it was imported");
  }

  // Argument by schema name (robust across overloads), or by position for prim ops.
  IVal arg(const jit::Node* n, const std::string& name) {
    const auto* schema = n->maybeSchema();
    if (!schema) unsupported(n, "op has no schema");
    auto idx = schema->argumentIndexWithName(name);
    if (!idx) unsupported(n, "overload without argument '" + name + "'");
    return get(n->inputs()[*idx]);
  }
  bool hasArg(const jit::Node* n, const std::string& name) {
    const auto* schema = n->maybeSchema();
    return schema && schema->argumentIndexWithName(name).has_value();
  }

  std::string newNodeName(const std::string& op) { return op + "_" + std::to_string(node_counter_++); }

  std::string uniqueValueName(const std::string& base) {
    std::string n = base;
    for (int k = 1; g_.values.count(n) || probe_.count(n); ++k) n = base + "_" + std::to_string(k);
    g_.values[n] = ValueInfo{};
    return n;
  }

  void rename(const std::string& from, const std::string& to) {
    if (from == to) return;
    for (auto& nd : g_.nodes) {
      for (auto& i : nd.inputs) if (i == from) i = to;
      for (auto& o : nd.outputs) if (o == from) o = to;
    }
    probe_[to] = probe_.at(from);
    probe_.erase(from);
    g_.values[to] = g_.values[from];
    g_.values.erase(from);
  }

  std::vector<std::string> emit(const std::string& op, const std::vector<std::string>& inputs,
                                std::map<std::string, Attribute> attrs = {}, int nout = 1,
                                const std::string& out_base = "") {
    Node nd;
    nd.op = op;
    nd.name = newNodeName(op);
    nd.inputs = inputs;
    nd.attrs = std::move(attrs);
    nd.source = current_source_;
    for (int k = 0; k < nout; ++k) nd.outputs.push_back(uniqueValueName(out_base.empty() ? nd.name : out_base));
    std::vector<at::Tensor> ins;
    for (const auto& i : inputs) ins.push_back(i.empty() ? at::Tensor() : probe_.at(i));
    std::vector<at::Tensor> outs;
    try {
      outs = runNode(nd, ins);
    } catch (const Error& e) {
      std::string hint;
      if (opts_.inputs.empty())
        hint = "\nThe model's inputs were assumed to be int64 token ids [batch, seq]; if they are not, describe "
               "them in the recipe's inputs: section (or with --input for `compress inspect`).";
      fail(ErrorCategory::Model, "while importing" + (current_source_.empty() ? "" : " " + current_source_) +
                                     ": " + e.what() + hint);
    }
    for (int k = 0; k < nout; ++k) {
      probe_[nd.outputs[k]] = outs[k];
      g_.values[nd.outputs[k]].dtype = dtypeFromScalarType(outs[k].scalar_type());
    }
    g_.nodes.push_back(std::move(nd));
    return g_.nodes.back().outputs;
  }
  std::string emit1(const std::string& op, const std::vector<std::string>& inputs,
                    std::map<std::string, Attribute> attrs = {}, const std::string& out_base = "") {
    return emit(op, inputs, std::move(attrs), 1, out_base)[0];
  }

  std::string constant(const at::Tensor& t, const std::string& base = "const") {
    // Small constants (axes, shape pieces, scalars) are shared: one initializer per distinct value.
    std::string key;
    if (t.numel() <= 16) {
      at::Tensor c = t.contiguous();
      key = std::string(c10::toString(c.scalar_type())) + c10::str(c.sizes()) +
            std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
      auto it = small_consts_.find(key);
      if (it != small_consts_.end()) return it->second;
    }
    std::string n = uniqueValueName(base);
    if (!key.empty()) small_consts_[key] = n;
    g_.initializers[n] = t.detach().clone();
    g_.values[n].dtype = dtypeFromScalarType(t.scalar_type());
    probe_[n] = g_.initializers[n];
    return n;
  }
  std::string constInts(const std::vector<int64_t>& v) { return constant(at::tensor(v, at::kLong)); }
  std::string constScalar(double x, at::ScalarType st) { return constant(at::scalar_tensor(x, st)); }

  std::string addParameter(const std::string& name, const at::Tensor& t) {
    // Tied weights: the same storage seen under a second name becomes an alias of the first.
    const void* key = t.data_ptr();
    auto it = tensor_by_storage_.find(key);
    if (it != tensor_by_storage_.end() && g_.initializers.count(it->second) &&
        g_.initializers.at(it->second).sizes() == t.sizes()) {
      if (it->second != name) g_.aliases[name] = it->second;
      return it->second;
    }
    if (g_.initializers.count(name)) return name;
    g_.initializers[name] = t.detach();
    g_.values[name].dtype = dtypeFromScalarType(t.scalar_type());
    probe_[name] = g_.initializers[name];
    if (param_names_.count(name)) g_.parameters.insert(name);
    tensor_by_storage_[key] = name;
    return name;
  }

  at::ScalarType stype(const std::string& v) { return probe_.at(v).scalar_type(); }
  int64_t rank(const std::string& v) { return probe_.at(v).dim(); }

  // --- conversions between IVal kinds ---
  std::string asTensor(const IVal& v, at::ScalarType like = at::kFloat) {
    switch (v.kind) {
      case IVal::Tensor: case IVal::DynInt: return v.name;
      case IVal::Int: return constScalar(static_cast<double>(v.i), at::isFloatingType(like) ? like : at::kLong);
      case IVal::Float: return constScalar(v.f, at::isFloatingType(like) ? like : at::kFloat);
      case IVal::Bool: return constant(at::scalar_tensor(v.b, at::kBool));
      default: break;
    }
    fail(ErrorCategory::Model, "expected a tensor or number" + (current_source_.empty() ? "" : " at " + current_source_));
  }
  int64_t constInt(const jit::Node* n, const IVal& v, const std::string& what) {
    if (v.kind == IVal::Int) return v.i;
    if (v.kind == IVal::Bool) return v.b;
    unsupported(n, what + " must be a compile-time integer");
  }
  std::vector<int64_t> constIntList(const jit::Node* n, const IVal& v, const std::string& what) {
    if (v.kind == IVal::Int) return {v.i};
    if (v.kind != IVal::List) unsupported(n, what + " must be a list of compile-time integers");
    std::vector<int64_t> out;
    for (const auto& it : v.items) out.push_back(constInt(n, it, what));
    return out;
  }
  // A list of (possibly dynamic) ints as a 1-D int64 tensor.
  std::string shapeTensor(const jit::Node* n, const IVal& v) {
    if (v.kind != IVal::List) unsupported(n, "expected a list of sizes");
    bool all_const = std::all_of(v.items.begin(), v.items.end(), [](const IVal& x) { return x.kind == IVal::Int; });
    if (all_const) return constInts(constIntList(n, v, "size"));
    std::vector<std::string> parts;
    for (const auto& it : v.items) parts.push_back(oneD(n, it));
    return emit1("Concat", parts, {{"axis", int64_t{0}}});
  }
  std::string oneD(const jit::Node* n, const IVal& v) {
    if (v.kind == IVal::Int) return constInts({v.i});
    if (v.kind == IVal::DynInt || (v.kind == IVal::Tensor && rank(v.name) == 0))
      return emit1("Unsqueeze", {v.name, constInts({0})});
    unsupported(n, "expected an integer");
  }
  std::string shapeOf(const std::string& v) {
    auto it = shape_of_.find(v);
    if (it != shape_of_.end()) return it->second;
    return shape_of_[v] = emit1("Shape", {v});
  }

  // Binary arithmetic with torch's promotion rules for the cases models use.
  void binary(const jit::Node* n, const std::string& onnx_op, IVal a, IVal b, bool swap = false) {
    if (swap) std::swap(a, b);
    bool a_num = a.kind == IVal::Int || a.kind == IVal::Float, b_num = b.kind == IVal::Int || b.kind == IVal::Float;
    const jit::Value* out = n->outputs()[0];
    if (a_num && b_num) {  // fold
      double x = a.kind == IVal::Int ? a.i : a.f, y = b.kind == IVal::Int ? b.i : b.f;
      bool ints = a.kind == IVal::Int && b.kind == IVal::Int && onnx_op != "Div";
      double r = onnx_op == "Add" ? x + y : onnx_op == "Sub" ? x - y : onnx_op == "Mul" ? x * y
               : onnx_op == "Pow" ? std::pow(x, y) : x / y;
      if (onnx_op == "FloorDiv") r = std::floor(x / y), ints = a.kind == IVal::Int && b.kind == IVal::Int;
      env_[out] = ints ? IVal::integer(static_cast<int64_t>(r)) : IVal::number(r);
      return;
    }
    std::string op = onnx_op == "FloorDiv" ? "Div" : onnx_op;
    bool int_result = out->type()->kind() == c10::TypeKind::IntType;
    if (int_result) {  // dynamic shape arithmetic on 0-d int64 tensors
      std::string x = asTensor(a, at::kLong), y = asTensor(b, at::kLong);
      env_[out] = IVal::dynInt(emit1(op, {x, y}));
      return;
    }
    // Tensor op: the dtype of a "dimensioned" tensor wins over scalars and 0-d tensors of its category.
    auto isDimTensor = [&](const IVal& v) { return v.kind == IVal::Tensor && rank(v.name) > 0; };
    at::ScalarType st;
    if (isDimTensor(a) && isDimTensor(b)) st = at::promote_types(stype(a.name), stype(b.name));
    else if (isDimTensor(a) || isDimTensor(b)) {
      const IVal& t = isDimTensor(a) ? a : b;
      const IVal& o = isDimTensor(a) ? b : a;
      st = stype(t.name);
      bool o_float = o.kind == IVal::Float || (o.kind == IVal::Tensor && at::isFloatingType(stype(o.name)));
      if (!at::isFloatingType(st) && o_float) st = at::kFloat;
    } else {
      st = at::kFloat;
      if (a.kind == IVal::Tensor) st = stype(a.name);
      if (b.kind == IVal::Tensor) st = at::promote_types(st, stype(b.name));
    }
    if (op == "Div" && onnx_op == "Div" && !at::isFloatingType(st)) st = at::kFloat;  // true division
    auto prep = [&](const IVal& v) {
      std::string t = asTensor(v, st);
      if (stype(t) != st) {
        if (g_.isInitializer(t) && !g_.parameters.count(t)) return constant(probe_.at(t).to(st));
        return emit1("Cast", {t}, {{"to", static_cast<int64_t>(dtypeFromScalarType(st))}});
      }
      return t;
    };
    std::string x = prep(a), y = prep(b);
    std::string r = emit1(op, {x, y}, {}, cleanName(out->debugName()));
    if (onnx_op == "FloorDiv" && at::isFloatingType(st)) unsupported(n, "floor division of floating tensors");
    env_[out] = IVal::tensor(r);
  }

  void unaryOp(const jit::Node* n, const std::string& op) {
    env_[n->outputs()[0]] = IVal::tensor(emit1(op, {asTensor(get(n->inputs()[0]))}, {}, cleanName(n->outputs()[0]->debugName())));
  }

  void convert(jit::Node* n) {
    const std::string k = n->kind().toQualString();
    jit::Value* out0 = n->outputs().empty() ? nullptr : n->outputs()[0];
    std::string oname = out0 ? cleanName(out0->debugName()) : "";
    auto set = [&](IVal v) { env_[out0] = std::move(v); };
    auto setT = [&](const std::string& name) { env_[out0] = IVal::tensor(name); };
    auto T = [&](size_t i) { return asTensor(get(n->inputs()[i])); };

    if (k == "prim::Constant") {
      auto iv = jit::toIValue(out0);
      if (!iv || iv->isNone()) return set(IVal::none());
      if (iv->isInt()) return set(IVal::integer(iv->toInt()));
      if (iv->isDouble()) return set(IVal::number(iv->toDouble()));
      if (iv->isBool()) { IVal v; v.kind = IVal::Bool; v.b = iv->toBool(); return set(v); }
      if (iv->isString()) { IVal v; v.kind = IVal::Str; v.s = iv->toStringRef(); return set(v); }
      if (iv->isTensor()) return setT(constant(iv->toTensor()));
      if (iv->isIntList()) {
        IVal v; v.kind = IVal::List;
        for (auto x : iv->toIntVector()) v.items.push_back(IVal::integer(x));
        return set(v);
      }
      IVal v; v.kind = IVal::Other; v.obj = *iv;
      return set(v);
    }
    if (k == "prim::GetAttr") {
      IVal self = get(n->inputs()[0]);
      const std::string attr = n->s(c10::Symbol::attr("name"));
      if (self.kind != IVal::Object || !self.obj.isObject()) unsupported(n, "attribute access on a non-module");
      auto obj = self.obj.toObject();
      c10::IValue val = obj->getAttr(attr);
      std::string path = self.s.empty() ? attr : self.s + "." + attr;
      if (val.isTensor()) return setT(addParameter(path, val.toTensor()));
      if (val.isObject()) { IVal v = objectVal(val); v.s = path; return set(v); }
      if (val.isInt()) return set(IVal::integer(val.toInt()));
      if (val.isDouble()) return set(IVal::number(val.toDouble()));
      if (val.isBool()) { IVal v; v.kind = IVal::Bool; v.b = val.toBool(); return set(v); }
      unsupported(n, "module attribute '" + path + "' has an unsupported type");
    }
    if (k == "prim::ListConstruct" || k == "prim::TupleConstruct") {
      IVal v; v.kind = IVal::List;
      for (auto* i : n->inputs()) v.items.push_back(get(i));
      return set(v);
    }
    if (k == "prim::ListUnpack" || k == "prim::TupleUnpack") {
      IVal l = get(n->inputs()[0]);
      if (l.kind != IVal::List || l.items.size() != n->outputs().size()) unsupported(n, "cannot unpack this list");
      for (size_t i = 0; i < n->outputs().size(); ++i) env_[n->outputs()[i]] = l.items[i];
      return;
    }
    if (k == "prim::NumToTensor") {
      IVal v = get(n->inputs()[0]);
      if (v.kind == IVal::DynInt) v.kind = IVal::Tensor;
      return set(v);
    }
    if (k == "aten::Int" || k == "aten::ScalarImplicit" || k == "aten::Float") {
      IVal v = get(n->inputs()[0]);
      if (v.kind == IVal::Tensor) {
        if (rank(v.name) != 0) unsupported(n, "converting a non-scalar tensor to a number");
        v.kind = k == "aten::Float" ? IVal::Tensor : IVal::DynInt;
      }
      return set(v);
    }
    if (k == "aten::size") {
      std::string x = T(0);
      if (n->inputs().size() < 2) unsupported(n, "aten::size without a dim (use x.size(d))");
      int64_t d = constInt(n, get(n->inputs()[1]), "dim");
      return set(IVal::dynInt(emit1("Gather", {shapeOf(x), constant(at::scalar_tensor(d, at::kLong))}, {{"axis", int64_t{0}}})));
    }
    // --- linear algebra ---
    if (k == "aten::linear") {
      std::string x = T(0), w = T(1);
      std::string wt = emit1("Transpose", {w}, {{"perm", std::vector<int64_t>{1, 0}}});
      std::string y = emit1("MatMul", {x, wt}, {}, oname);
      IVal b = arg(n, "bias");
      if (b.kind != IVal::None) y = emit1("Add", {y, b.name}, {}, oname);
      return setT(y);
    }
    if (k == "aten::matmul" || k == "aten::mm" || k == "aten::bmm") return setT(emit1("MatMul", {T(0), T(1)}, {}, oname));
    if (k == "aten::addmm") {
      double beta = get(n->inputs()[3]).kind == IVal::Int ? get(n->inputs()[3]).i : get(n->inputs()[3]).f;
      double alpha = get(n->inputs()[4]).kind == IVal::Int ? get(n->inputs()[4]).i : get(n->inputs()[4]).f;
      return setT(emit1("Gemm", {T(1), T(2), T(0)}, {{"alpha", alpha}, {"beta", beta}}, oname));
    }
    // --- elementwise ---
    if (k == "aten::add" || k == "aten::add_" || k == "aten::sub" || k == "aten::rsub") {
      IVal a = get(n->inputs()[0]), b = get(n->inputs()[1]);
      if (n->inputs().size() > 2) {
        IVal alpha = get(n->inputs()[2]);
        double al = alpha.kind == IVal::Int ? alpha.i : alpha.kind == IVal::Float ? alpha.f : 1.0;
        if (al != 1.0) {
          if (b.kind == IVal::Int || b.kind == IVal::Float) b = IVal::number((b.kind == IVal::Int ? b.i : b.f) * al);
          else b = IVal::tensor(emit1("Mul", {b.name, constScalar(al, stype(b.name))}));
        }
      }
      return binary(n, k == "aten::add" || k == "aten::add_" ? "Add" : "Sub", a, b, k == "aten::rsub");
    }
    if (k == "aten::mul") return binary(n, "Mul", get(n->inputs()[0]), get(n->inputs()[1]));
    if (k == "aten::div") {
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
    if (k == "aten::floordiv" || k == "aten::floor_divide") return binary(n, "FloorDiv", get(n->inputs()[0]), get(n->inputs()[1]));
    if (k == "aten::pow") return binary(n, "Pow", get(n->inputs()[0]), get(n->inputs()[1]));
    if (k == "aten::rsqrt") return setT(emit1("Reciprocal", {emit1("Sqrt", {T(0)})}, {}, oname));
    static const std::map<std::string, std::string> unaries = {
        {"aten::sqrt", "Sqrt"}, {"aten::neg", "Neg"},   {"aten::exp", "Exp"},         {"aten::log", "Log"},
        {"aten::abs", "Abs"},   {"aten::relu", "Relu"}, {"aten::relu_", "Relu"},      {"aten::tanh", "Tanh"},
        {"aten::sigmoid", "Sigmoid"}};
    if (auto u = unaries.find(k); u != unaries.end()) return unaryOp(n, u->second);
    if (k == "aten::silu") {
      std::string x = T(0);
      return setT(emit1("Mul", {x, emit1("Sigmoid", {x})}, {}, oname));
    }
    if (k == "aten::gelu") {
      std::string x = T(0);
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
      std::string y = emit1("Mul", {emit1("Mul", {x, constScalar(0.5, st)}), emit1("Add", {inner, constScalar(1.0, st)})}, {}, oname);
      return setT(y);
    }
    // --- reductions and normalizations ---
    if (k == "aten::mean") {
      std::string x = T(0);
      if (n->inputs().size() <= 2) return setT(emit1("ReduceMean", {x}, {{"keepdims", int64_t{0}}}, oname));
      auto dims = constIntList(n, arg(n, "dim"), "dim");
      int64_t keep = constInt(n, arg(n, "keepdim"), "keepdim");
      return setT(emit1("ReduceMean", {x}, {{"axes", dims}, {"keepdims", keep}}, oname));
    }
    if (k == "aten::softmax" || k == "aten::log_softmax") {
      int64_t d = constInt(n, arg(n, "dim"), "dim");
      return setT(emit1(k == "aten::softmax" ? "Softmax" : "LogSoftmax", {T(0)}, {{"axis", d}}, oname));
    }
    if (k == "aten::layer_norm") {
      std::string x = T(0);
      auto shape = constIntList(n, arg(n, "normalized_shape"), "normalized_shape");
      IVal w = arg(n, "weight"), b = arg(n, "bias");
      std::vector<int64_t> s(shape.begin(), shape.end());
      std::string wn = w.kind == IVal::None ? constant(at::ones(s, stype(x))) : w.name;
      std::vector<std::string> ins = {x, wn};
      if (b.kind != IVal::None) ins.push_back(b.name);
      double eps = arg(n, "eps").f;
      return setT(emit1("LayerNormalization", ins, {{"axis", -static_cast<int64_t>(shape.size())}, {"epsilon", eps}}, oname));
    }
    if (k == "aten::batch_norm") {
      std::string x = T(0);
      IVal w = arg(n, "weight"), b = arg(n, "bias"), rm = arg(n, "running_mean"), rv = arg(n, "running_var");
      if (rm.kind == IVal::None || rv.kind == IVal::None) unsupported(n, "batch_norm without running statistics");
      int64_t c = probe_.at(x).size(1);
      std::string wn = w.kind == IVal::None ? constant(at::ones({c}, stype(x))) : w.name;
      std::string bn = b.kind == IVal::None ? constant(at::zeros({c}, stype(x))) : b.name;
      return setT(emit1("BatchNormalization", {x, wn, bn, rm.name, rv.name}, {{"epsilon", arg(n, "eps").f}}, oname));
    }
    if (k == "aten::embedding") return setT(emit1("Gather", {T(0), T(1)}, {{"axis", int64_t{0}}}, oname));
    // --- shape ops ---
    if (k == "aten::view" || k == "aten::reshape") return setT(emit1("Reshape", {T(0), shapeTensor(n, get(n->inputs()[1]))}, {}, oname));
    if (k == "aten::flatten") {
      std::string x = T(0);
      int64_t r = rank(x);
      int64_t s = constInt(n, arg(n, "start_dim"), "start_dim"), e = constInt(n, arg(n, "end_dim"), "end_dim");
      if (s < 0) s += r;
      if (e < 0) e += r;
      if (r == 0) return setT(emit1("Reshape", {x, constInts({1})}, {}, oname));
      std::vector<std::string> parts;
      std::string shp = shapeOf(x);
      if (s > 0) parts.push_back(emit1("Slice", {shp, constInts({0}), constInts({s})}));
      parts.push_back(constInts({-1}));
      if (e + 1 < r) parts.push_back(emit1("Slice", {shp, constInts({e + 1}), constInts({r})}));
      std::string target = parts.size() == 1 ? parts[0] : emit1("Concat", parts, {{"axis", int64_t{0}}});
      return setT(emit1("Reshape", {x, target}, {}, oname));
    }
    if (k == "aten::transpose") {
      std::string x = T(0);
      int64_t r = rank(x);
      int64_t a = constInt(n, get(n->inputs()[1]), "dim0"), b = constInt(n, get(n->inputs()[2]), "dim1");
      if (a < 0) a += r;
      if (b < 0) b += r;
      std::vector<int64_t> perm(r);
      for (int64_t i = 0; i < r; ++i) perm[i] = i;
      std::swap(perm[a], perm[b]);
      return setT(emit1("Transpose", {x}, {{"perm", perm}}, oname));
    }
    if (k == "aten::t") {
      std::string x = T(0);
      if (rank(x) < 2) return setT(x);
      return setT(emit1("Transpose", {x}, {{"perm", std::vector<int64_t>{1, 0}}}, oname));
    }
    if (k == "aten::permute") {
      std::string x = T(0);
      auto dims = constIntList(n, get(n->inputs()[1]), "dims");
      for (auto& d : dims) if (d < 0) d += rank(x);
      return setT(emit1("Transpose", {x}, {{"perm", dims}}, oname));
    }
    if (k == "aten::contiguous" || k == "aten::dropout" || k == "aten::feature_dropout" ||
        k == "aten::alpha_dropout" || k == "aten::detach" || k == "aten::clone")
      return set(get(n->inputs()[0]));
    if (k == "aten::slice") {
      std::string x = T(0);
      int64_t dim = constInt(n, arg(n, "dim"), "dim");
      IVal start = arg(n, "start"), end = arg(n, "end"), step = arg(n, "step");
      if (start.kind == IVal::None) start = IVal::integer(0);
      if (end.kind == IVal::None) end = IVal::integer(INT64_MAX);
      int64_t st = step.kind == IVal::None ? 1 : constInt(n, step, "step");
      if (start.kind == IVal::Int && start.i == 0 && end.kind == IVal::Int && end.i == INT64_MAX && st == 1)
        return setT(x);  // a full slice is the identity (traces are full of them)
      return setT(emit1("Slice", {x, oneD(n, start), oneD(n, end), constInts({dim}), constInts({st})}, {}, oname));
    }
    if (k == "aten::select") {
      std::string x = T(0);
      int64_t dim = constInt(n, arg(n, "dim"), "dim");
      IVal idx = arg(n, "index");
      std::string in = idx.kind == IVal::Int ? constant(at::scalar_tensor(idx.i, at::kLong)) : idx.name;
      return setT(emit1("Gather", {x, in}, {{"axis", dim}}, oname));
    }
    if (k == "aten::index") {
      std::string x = T(0);
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
      return setT(emit1("Gather", {x, idx}, {{"axis", int64_t{axis}}}, oname));
    }
    if (k == "aten::stack" || k == "aten::cat") {
      IVal list = get(n->inputs()[0]);
      int64_t dim = constInt(n, get(n->inputs()[1]), "dim");
      std::vector<std::string> parts;
      for (const auto& it : list.items) parts.push_back(asTensor(it));
      if (parts.empty()) unsupported(n, "empty tensor list");
      if (k == "aten::stack") {
        int64_t r = rank(parts[0]) + 1;
        if (dim < 0) dim += r;
        for (auto& p : parts) p = emit1("Unsqueeze", {p, constInts({dim})});
      }
      return setT(emit1("Concat", parts, {{"axis", dim}}, oname));
    }
    if (k == "aten::repeat_interleave") {
      std::string x = T(0);
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
      return setT(emit1("Reshape", {e, target}, {}, oname));
    }
    if (k == "aten::unsqueeze") return setT(emit1("Unsqueeze", {T(0), constInts({constInt(n, get(n->inputs()[1]), "dim")})}, {}, oname));
    if (k == "aten::squeeze") {
      if (n->inputs().size() == 1) return setT(emit1("Squeeze", {T(0)}, {}, oname));
      std::string x = T(0);
      int64_t d = constInt(n, get(n->inputs()[1]), "dim");
      if (probe_.at(x).size(d) != 1) return setT(x);  // torch: squeezing a non-1 dim is a no-op
      return setT(emit1("Squeeze", {x, constInts({d})}, {}, oname));
    }
    if (k == "aten::expand") {
      std::string x = T(0);
      IVal sizes = get(n->inputs()[1]);
      for (auto& it : sizes.items) if (it.kind == IVal::Int && it.i == -1) it.i = 1;  // torch -1 = keep
      return setT(emit1("Expand", {x, shapeTensor(n, sizes)}, {}, oname));
    }
    if (k == "aten::to" || k == "aten::type_as") {
      std::string x = T(0);
      at::ScalarType st;
      if (k == "aten::type_as") st = stype(T(1));
      else if (hasArg(n, "dtype") && arg(n, "dtype").kind == IVal::Int) st = static_cast<at::ScalarType>(arg(n, "dtype").i);
      else return setT(x);  // device-only move
      if (st == stype(x)) return setT(x);
      return setT(emit1("Cast", {x}, {{"to", static_cast<int64_t>(dtypeFromScalarType(st))}}, oname));
    }
    if (k == "aten::split" || k == "aten::split_with_sizes" || k == "aten::chunk") {
      std::string x = T(0);
      int64_t dim = constInt(n, arg(n, "dim"), "dim");
      int64_t size = probe_.at(x).size(dim < 0 ? dim + rank(x) : dim);
      std::vector<int64_t> sizes;
      if (k == "aten::chunk") {
        int64_t c = constInt(n, arg(n, "chunks"), "chunks"), each = (size + c - 1) / c;
        for (int64_t s = 0; s < size; s += each) sizes.push_back(std::min(each, size - s));
      } else {
        IVal sp = get(n->inputs()[1]);
        if (sp.kind == IVal::Int)
          for (int64_t s = 0; s < size; s += sp.i) sizes.push_back(std::min(sp.i, size - s));
        else sizes = constIntList(n, sp, "split sizes");
      }
      auto outs = emit("Split", {x, constInts(sizes)}, {{"axis", dim}}, static_cast<int>(sizes.size()), oname);
      IVal l; l.kind = IVal::List;
      for (auto& o : outs) l.items.push_back(IVal::tensor(o));
      return set(l);
    }
    // --- convolution and pooling ---
    if (k == "aten::conv2d" || k == "aten::_convolution") {
      std::string x = T(0), w = T(1);
      IVal b = arg(n, "bias");
      if (k == "aten::_convolution" && constInt(n, arg(n, "transposed"), "transposed")) unsupported(n, "transposed convolution");
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
      return setT(emit1("Conv", ins, {{"strides", stride}, {"pads", pads}, {"dilations", dil}, {"group", groups},
                                     {"kernel_shape", ks}}, oname));
    }
    if (k == "aten::max_pool2d" || k == "aten::avg_pool2d") {
      std::string x = T(0);
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
      if (k == "aten::max_pool2d") {
        auto dil = constIntList(n, arg(n, "dilation"), "dilation");
        if (dil.size() == 1) dil.assign(2, dil[0]);
        at["dilations"] = dil;
        return setT(emit1("MaxPool", {x}, at, oname));
      }
      if (arg(n, "divisor_override").kind != IVal::None) unsupported(n, "avg_pool2d with divisor_override");
      at["count_include_pad"] = constInt(n, arg(n, "count_include_pad"), "count_include_pad");
      return setT(emit1("AveragePool", {x}, at, oname));
    }
    if (k == "aten::adaptive_avg_pool2d") {
      auto os = constIntList(n, arg(n, "output_size"), "output_size");
      for (auto o : os) if (o != 1) unsupported(n, "adaptive_avg_pool2d to a size other than 1x1");
      return setT(emit1("GlobalAveragePool", {T(0)}, {}, oname));
    }
    unsupported(n, "no mapping");  // checkSupported() lists everything first; this is a safety net
  }
};

}  // namespace

namespace {

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

std::vector<std::string> importableOps() { return {mappedOps().begin(), mappedOps().end()}; }

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
