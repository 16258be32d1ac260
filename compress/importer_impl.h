// importer_impl.h — the TorchScript importer's machinery, shared by importer.cpp (core, prim ops, the
// handler table) and import_ops.cpp (the op handlers added for the model zoo). Includes <torch/script.h>:
// only these two files include it.
#pragma once

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "runtime/op_table.h"

namespace compress::import_detail {

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


inline std::string sourceOf(const jit::Node* n) {
  auto range = n->sourceRange();
  if (auto gen = range.findSourceRangeThatGenerated()) range = *gen;
  if (auto flc = range.file_line_col()) {
    return std::get<0>(*flc) + ":" + std::to_string(std::get<1>(*flc));
  }
  return "";
}

inline std::string cleanName(const std::string& debug) {
  std::string s = debug;
  for (auto& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.')) c = '_';
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) s = "v" + s;  // TorchScript's %43 -> v43
  return s;
}

class Importer {
 public:
  /// One TorchScript node being converted: its op name, first output and helpers to bind outputs.
  struct Call {
    Importer& im;
    jit::Node* n;
    std::string k;       // "aten::linear"
    jit::Value* out0;    // first output (nullptr when none)
    std::string oname;   // a clean IR name for it
    IVal in(size_t i) const { return im.get(n->inputs()[i]); }
    std::string T(size_t i) const { return im.asTensor(im.get(n->inputs()[i])); }
    void set(IVal v) const { im.env_[out0] = std::move(v); }
    void setT(const std::string& name) const { im.env_[out0] = IVal::tensor(name); }
  };
  using Handler = void (Importer::*)(Call&);
  /// The handler of a TorchScript op (in-place `aten::x_` falls back to `aten::x`), or nullptr.
  static Handler handlerFor(const std::string& kind);

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
      dispatch(n);
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
    canonicalizeLinearLayout(g_);  // HF Conv1D's [in, out] weights read as nn.Linear's
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
  std::set<std::string> view_values_;  // IR values that are views of another tensor (in-place updates refused)

  /// Every op without a handler, each with its count and up to three source lines, in one error.
  void checkSupported(jit::Graph& graph);

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
    if (!crt::findOpInfo("", op)) fail(ErrorCategory::Internal, "the importer emits " + op + ", which op_table.def lacks");
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
    at::ScalarType st = resultType(a, b);  // torch promotion (import_ops.cpp)
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

 public:  // handlers: rows of handlerTable()
  // --- handlers (importer.cpp) ---
  void hPrimConstant(Call& c);
  void hPrimGetAttr(Call& c);
  void hPrimListConstruct(Call& c);
  void hPrimListUnpack(Call& c);
  void hPrimNumToTensor(Call& c);
  void hInt(Call& c);
  void hSize(Call& c);
  void hLinear(Call& c);
  void hMatmul(Call& c);
  void hAddmm(Call& c);
  void hAdd(Call& c);
  void hMul(Call& c);
  void hDiv(Call& c);
  void hFloordiv(Call& c);
  void hPow(Call& c);
  void hRsqrt(Call& c);
  void hUnary(Call& c);
  void hSilu(Call& c);
  void hGelu(Call& c);
  void hMean(Call& c);
  void hSoftmax(Call& c);
  void hLayerNorm(Call& c);
  void hBatchNorm(Call& c);
  void hEmbedding(Call& c);
  void hView(Call& c);
  void hFlatten(Call& c);
  void hTranspose(Call& c);
  void hT(Call& c);
  void hPermute(Call& c);
  void hIdentity(Call& c);
  void hSlice(Call& c);
  void hSelect(Call& c);
  void hIndex(Call& c);
  void hStack(Call& c);
  void hRepeatInterleave(Call& c);
  void hUnsqueeze(Call& c);
  void hSqueeze(Call& c);
  void hExpand(Call& c);
  void hTo(Call& c);
  void hSplit(Call& c);
  void hConv2d(Call& c);
  void hMaxPool2d(Call& c);

  // --- handlers added for the model zoo (import_ops.cpp) ---
  void hArange(Call& c);
  void hFull(Call& c);
  void hFullLike(Call& c);
  void hTrilu(Call& c);
  void hCumsum(Call& c);
  void hOuter(Call& c);
  void hCompare(Call& c);
  void hLogic(Call& c);
  void hNot(Call& c);
  void hMaskedFill(Call& c);
  void hWhere(Call& c);
  void hMaxMin(Call& c);
  void hClamp(Call& c);
  void hBaddbmm(Call& c);
  void hEinsum(Call& c);
  void hActivation(Call& c);
  void hGroupNorm(Call& c);
  void hInstanceNorm(Call& c);
  void hPad(Call& c);
  void hUpsample(Call& c);
  void hConvTranspose(Call& c);
  void hAdaptiveAvgPool(Call& c);
  void hUnbind(Call& c);
  void hExpandAs(Call& c);
  void hSum(Call& c);
  void hTransformerEncoderLayer(Call& c);
  void hNativeMha(Call& c);

  // --- helpers of the handlers ---
  void dispatch(jit::Node* n);
  double number(const jit::Node* n, const IVal& v, const std::string& what);
  at::ScalarType resultType(const IVal& a, const IVal& b);
  std::string castTo(const IVal& v, at::ScalarType st);
  std::string linear(const std::string& x, const std::string& w, const std::string& b, const std::string& out = "");
  std::string layerNorm(const std::string& x, const std::string& w, const std::string& b, double eps);
  std::string selfAttention(const jit::Node* n, const std::string& x, int64_t embed, int64_t heads, const std::string& qkv_w,
                            const std::string& qkv_b, const std::string& proj_w, const std::string& proj_b,
                            std::string* probs = nullptr);
  std::string dimOf(const std::string& v, int64_t d);  // 1-D int64 [size of dim d]
};

/// Every TorchScript op the importer converts and its handler (importer.cpp).
const std::unordered_map<std::string, Importer::Handler>& handlerTable();

}  // namespace compress::import_detail
