// onnx_import.cpp — ONNX to IR (onnx_import.h), in named steps: read the file, the initializers, the
// inputs' dims, the nodes (adapted to the IR's forms), the outputs; then shape inference and the verifier.
#include "compress/onnx_import.h"
#include "quant/format.h"

#include <onnx/onnx_pb.h>

#include <cctype>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "compress/error.h"
#include "compress/executor.h"
#include "runtime/size_check.h"

namespace compress {
namespace {

constexpr int kMinOpset = 13, kMaxOpset = 21;

/// The symbolic dim a KV-cache input's named dim stands for: "past" (the cached length: our exports' name, and names
/// such as Optimum's "past_sequence_length") or "past+seq" (a mask over cached and new positions: "past+seq",
/// "past_sequence_length + 1", "total_sequence_length"); null for any other name. The probes that infer shapes give
/// these their own lengths (executor.cpp's probeTensor), which fit a short context; taken as an image's height, a
/// cache of a model with a 32-token context was probed at 40 positions and the import failed.
const char* cacheDimName(const std::string& param) {
  std::string p;
  for (char ch : param)
    if (ch != ' ') p += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (p == "past+seq" || p.find("total_seq") != std::string::npos) return "past+seq";
  if (p.find("past") == std::string::npos) return nullptr;
  return p.find('+') != std::string::npos ? "past+seq" : "past";
}

std::string readFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(ErrorCategory::Io, "cannot read " + path + ": not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size >= (uint64_t{2} << 30)) fail(ErrorCategory::Model, path + ": unreadable or larger than 2 GiB (the protobuf limit; use external data)");
  std::ifstream f(path, std::ios::binary);
  std::string bytes(static_cast<size_t>(size), '\0');
  f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) fail(ErrorCategory::Io, "cannot read all of " + path);
  return bytes;
}

at::ScalarType scalarTypeOf(int onnx_type, const std::string& what) {
  switch (onnx_type) {
    case 1: return at::kFloat;
    case 2: return at::kByte;
    case 3: return at::kChar;
    case 6: return at::kInt;
    case 7: return at::kLong;
    case 9: return at::kBool;
    case 10: return at::kHalf;
    case 11: return at::kDouble;
    case 16: return at::kBFloat16;
    default: break;
  }
  fail(ErrorCategory::Model, what + " has ONNX element type " + std::to_string(onnx_type) +
                                 ", which the IR lacks (it has float32/16, bfloat16, float64, int64/32/8, uint8, bool)");
}

class OnnxReader {
 public:
  OnnxReader(const std::string& path, const ImportOptions& o) : path_(path), opts_(o) {
    const std::string dir = std::filesystem::path(path).parent_path().string();
    dir_ = std::filesystem::weakly_canonical(dir.empty() ? "." : dir).string();
  }

  Graph read() {
    onnx::ModelProto m;
    {
      const std::string bytes = readFile(path_);
      if (bytes.empty() || !m.ParseFromString(bytes)) fail(ErrorCategory::Model, path_ + " is not an ONNX model (protobuf parse failed)");
    }
    checkOpset(m);
    const onnx::GraphProto& gp = m.graph();
    for (const auto& t : gp.initializer()) addInitializer(t);
    readInputs(gp);
    for (const auto& n : gp.node()) addNode(n);  // what the IR cannot run is listed at once, after the read-back below
    for (const auto& o : gp.output()) {
      if (!g_.values.count(o.name()) && !g_.isInitializer(o.name())) fail(ErrorCategory::Model, path_ + ": output '" + o.name() + "' is never computed");
      g_.outputs.push_back(o.name());
    }
    markParameters();
    readBackQuantizedWeights(g_, four_bit_);  // DequantizeLinear of integers, MatMulNBits: quantized weights, as the passes make them
    for (const Node& n : g_.nodes)
      if (n.op == "MatMulNBits") unsupported_["com.microsoft.MatMulNBits whose weights are not plain initializers (or with g_idx)"]++;
    reportUnsupported();
    canonicalizeLinearLayout(g_);  // MatMul(x, W[in, out]) and torch.onnx's folded transposes read as nn.Linear's
    inferShapes(g_, specs_);
    for (const Node& n : g_.nodes)  // values the executor computes fused (Sqrt+Reciprocal, Sigmoid+Mul) keep their input's type
      for (const auto& o : n.outputs)
        if (!o.empty() && g_.values[o].dtype == DType::Undefined && !n.inputs.empty() && g_.values.count(n.inputs[0]))
          g_.values[o].dtype = g_.values[n.inputs[0]].dtype;
    g_.pruneUnused();
    verify(g_);
    return std::move(g_);
  }

 private:
  // ------------------------------------------------------------------ opsets
  void checkOpset(const onnx::ModelProto& m) {
    for (const auto& op : m.opset_import()) {
      if (!op.domain().empty() && op.domain() != "ai.onnx") continue;
      opset_ = static_cast<int>(op.version());
    }
    if (opset_ < kMinOpset || opset_ > kMaxOpset)
      fail(ErrorCategory::Model, path_ + " uses opset " + std::to_string(opset_) + "; import takes opsets " + std::to_string(kMinOpset) + "-" +
                                     std::to_string(kMaxOpset) + " (convert it with onnx.version_converter)");
  }

  // ------------------------------------------------------------------ tensors
  at::Tensor tensorOf(const onnx::TensorProto& t, const std::string& what) {
    if (t.data_type() == kUint4 || t.data_type() == kInt4) return fourBitTensor(t, what);
    const at::ScalarType st = scalarTypeOf(t.data_type(), what);
    std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
    int64_t n = 0;
    if (!crt::checkedNumel(dims.data(), dims.size(), &n)) fail(ErrorCategory::Model, what + ": its shape is negative or too large");
    at::Tensor x = at::empty(dims, at::TensorOptions().dtype(st));
    const size_t need = static_cast<size_t>(n) * x.element_size();
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      readExternal(t, what, static_cast<char*>(x.data_ptr()), need);
    } else if (t.has_raw_data()) {
      if (t.raw_data().size() != need)
        fail(ErrorCategory::Model, what + ": raw data has " + std::to_string(t.raw_data().size()) + " bytes, its shape needs " + std::to_string(need));
      std::memcpy(x.data_ptr(), t.raw_data().data(), need);
    } else {
      copyTyped(t, x, n, what);
    }
    return x;
  }

  // UINT4 / INT4 (opset 21): two values per byte, the first in the low nibble; read one per byte (uint8 /
  // sign-extended int8), as the IR keeps quantized integers.
  static constexpr int kUint4 = 21, kInt4 = 22;
  at::Tensor fourBitTensor(const onnx::TensorProto& t, const std::string& what) {
    std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
    int64_t n = 0;
    if (!crt::checkedNumel(dims.data(), dims.size(), &n)) fail(ErrorCategory::Model, what + ": its shape is negative or too large");
    const size_t bytes = static_cast<size_t>((n + 1) / 2);
    std::string packed(bytes, '\0');
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      readExternal(t, what, packed.data(), bytes);
    } else if (t.has_raw_data()) {
      if (t.raw_data().size() != bytes)
        fail(ErrorCategory::Model, what + ": raw data has " + std::to_string(t.raw_data().size()) + " bytes, its 4-bit shape needs " + std::to_string(bytes));
      packed = t.raw_data();
    } else {
      if (static_cast<size_t>(t.int32_data_size()) != bytes)
        fail(ErrorCategory::Model, what + " holds " + std::to_string(t.int32_data_size()) + " packed values, its 4-bit shape needs " + std::to_string(bytes));
      for (size_t i = 0; i < bytes; ++i) packed[i] = static_cast<char>(t.int32_data(static_cast<int>(i)));
    }
    const bool sign = t.data_type() == kInt4;
    at::Tensor x = at::empty(dims, at::TensorOptions().dtype(sign ? at::kChar : at::kByte));
    auto* out = static_cast<uint8_t*>(x.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      uint8_t v = static_cast<uint8_t>((static_cast<uint8_t>(packed[static_cast<size_t>(i / 2)]) >> (4 * (i % 2))) & 0xF);
      out[i] = sign && v >= 8 ? static_cast<uint8_t>(v | 0xF0) : v;
    }
    four_bit_.insert(t.name());
    return x;
  }

  void copyTyped(const onnx::TensorProto& t, at::Tensor& x, int64_t n, const std::string& what) {
    auto check = [&](int64_t have) {
      if (have != n) fail(ErrorCategory::Model, what + " holds " + std::to_string(have) + " values, its shape needs " + std::to_string(n));
    };
    switch (t.data_type()) {
      case 1: check(t.float_data_size()); std::memcpy(x.data_ptr(), t.float_data().data(), n * 4); break;
      case 11: check(t.double_data_size()); std::memcpy(x.data_ptr(), t.double_data().data(), n * 8); break;
      case 7: check(t.int64_data_size()); std::memcpy(x.data_ptr(), t.int64_data().data(), n * 8); break;
      default: {  // int32_data carries int32, int8, uint8, bool, float16 and bfloat16 (as 16-bit patterns)
        check(t.int32_data_size());
        char* p = static_cast<char*>(x.data_ptr());
        const size_t es = x.element_size();
        for (int64_t i = 0; i < n; ++i) {
          const int32_t v = t.int32_data(static_cast<int>(i));
          std::memcpy(p + i * es, &v, es);  // little-endian: the low bytes
        }
      }
    }
  }

  void readExternal(const onnx::TensorProto& t, const std::string& what, char* dst, size_t need) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : t.external_data()) {
      if (kv.key() == "location") location = kv.value();
      else if (kv.key() == "offset") offset = std::stoll(kv.value());
      else if (kv.key() == "length") length = std::stoll(kv.value());
    }
    if (location.empty() || offset < 0 || (length >= 0 && static_cast<size_t>(length) != need))
      fail(ErrorCategory::Model, what + ": external data needs a location and " + std::to_string(need) + " bytes");
    const std::string file = std::filesystem::weakly_canonical(std::filesystem::path(dir_) / location).string();
    if (file.compare(0, dir_.size() + 1, dir_ + "/") != 0)
      fail(ErrorCategory::Model, what + ": external data '" + location + "' is outside the model's folder");
    std::ifstream f(file, std::ios::binary);
    f.seekg(offset);
    f.read(dst, static_cast<std::streamsize>(need));
    if (!f) fail(ErrorCategory::Io, what + ": cannot read " + std::to_string(need) + " bytes at " + std::to_string(offset) + " of " + file);
  }

  void addInitializer(const onnx::TensorProto& t) {
    if (t.name().empty()) fail(ErrorCategory::Model, path_ + ": an initializer has no name");
    if (g_.initializers.count(t.name())) fail(ErrorCategory::Model, path_ + ": initializer '" + t.name() + "' is defined twice");
    g_.initializers[t.name()] = tensorOf(t, "initializer '" + t.name() + "'");
  }

  // ------------------------------------------------------------------ inputs
  Dim dimOf(const onnx::TensorShapeProto::Dimension& d, size_t axis, size_t rank, bool integer, const std::string& input) {
    if (d.has_dim_value() && d.dim_value() >= 0) return Dim::fixed(d.dim_value());
    if (const char* cache = cacheDimName(d.dim_param())) return Dim::sym(cache);  // a KV-cache export's past / past+seq
    if (axis == 0) return Dim::sym("batch");
    if (axis == 1 && ((integer && rank == 2) || (!integer && rank == 3))) return Dim::sym("seq");
    if (!integer && rank == 4 && axis >= 2) return Dim::sym(axis == 2 ? "height" : "width");
    fail(ErrorCategory::Model, "input '" + input + "' dim " + std::to_string(axis) + " is symbolic ('" + d.dim_param() +
                                   "') where no batch/seq/height/width dim is expected; give the input's shape in the recipe's inputs:");
  }

  void readInputs(const onnx::GraphProto& gp) {
    for (const auto& in : gp.input()) {
      if (g_.isInitializer(in.name())) continue;  // IR < 4 lists initializers as inputs
      const auto& tt = in.type().tensor_type();
      if (!in.type().has_tensor_type()) fail(ErrorCategory::Model, "input '" + in.name() + "' is not a tensor");
      const DType dt = dtypeFromScalarType(scalarTypeOf(tt.elem_type(), "input '" + in.name() + "'"));
      Shape s;
      const InputSpec* spec = nullptr;
      for (const auto& o : opts_.inputs)
        if (o.name == in.name()) spec = &o;
      if (spec) {
        s = spec->shape;
      } else {
        const int rank = tt.shape().dim_size();
        const bool integer = dt == DType::Int64 || dt == DType::Int32 || dt == DType::Bool;
        for (int a = 0; a < rank; ++a) s.push_back(dimOf(tt.shape().dim(a), static_cast<size_t>(a), static_cast<size_t>(rank), integer, in.name()));
      }
      g_.inputs.push_back(in.name());
      g_.values[in.name()] = ValueInfo{dt, s};
      specs_[in.name()] = {dt, s};
    }
  }

  // ------------------------------------------------------------------ nodes
  std::string fresh(const std::string& base) {
    std::string n = base;
    for (int i = 1; used_.count(n) || g_.values.count(n) || g_.isInitializer(n); ++i) n = base + "_" + std::to_string(i);
    used_.insert(n);
    return n;
  }

  Attribute attributeOf(const onnx::AttributeProto& a, const onnx::NodeProto& n) {
    switch (a.type()) {
      case onnx::AttributeProto::INT: return a.i();
      case onnx::AttributeProto::FLOAT: return static_cast<double>(a.f());
      case onnx::AttributeProto::STRING: return a.s();
      case onnx::AttributeProto::INTS: return std::vector<int64_t>(a.ints().begin(), a.ints().end());
      case onnx::AttributeProto::FLOATS: return std::vector<double>(a.floats().begin(), a.floats().end());
      default: break;
    }
    unsupported_[n.op_type() + " with a " + onnx::AttributeProto::AttributeType_Name(a.type()) + " attribute"]++;
    return int64_t{0};
  }

  void emit(Node n) {
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      if (g_.values.count(o) || g_.isInitializer(o)) fail(ErrorCategory::Model, path_ + ": '" + o + "' is defined twice");
      g_.values[o] = ValueInfo{};
      used_.insert(o);
    }
    g_.nodes.push_back(std::move(n));
  }

  std::string constI64(const std::vector<int64_t>& v, const std::string& base) {
    const std::string name = fresh(base);
    g_.initializers[name] = at::tensor(v, at::kLong);
    return name;
  }

  void addNode(const onnx::NodeProto& np) {
    Node n;
    n.op = np.op_type();
    n.domain = np.domain() == "ai.onnx" ? "" : np.domain();
    n.name = fresh(np.name().empty() ? np.op_type() : np.name());
    n.inputs.assign(np.input().begin(), np.input().end());
    n.outputs.assign(np.output().begin(), np.output().end());
    while (n.outputs.size() > 1 && n.outputs.back().empty()) n.outputs.pop_back();  // omitted optional outputs
    n.source = path_ + ":node " + std::to_string(g_.nodes.size());
    if (n.op == "Constant") return addConstant(np);
    for (const auto& a : np.attribute()) {
      if (n.op == "ConstantOfShape" && a.name() == "value") continue;
      n.attrs[a.name()] = attributeOf(a, np);
    }
    if (n.domain == "com.microsoft" && n.op == "MatMulNBits") return emit(std::move(n));  // read back below, or refused
    if (!n.domain.empty() || !isSupportedOp(n.op)) {
      unsupported_[(n.domain.empty() ? "" : n.domain + ".") + n.op]++;
      emit(std::move(n));
      return;
    }
    if (n.op == "ConstantOfShape") return addConstantOfShape(np, std::move(n));
    if (n.op == "Gemm") return addGemm(std::move(n));
    if (n.op.rfind("Reduce", 0) == 0 && n.op != "ReduceSum" && n.inputs.size() > 1) axesToAttribute(n);
    emit(std::move(n));
  }

  void addConstant(const onnx::NodeProto& np) {
    if (np.output_size() != 1) fail(ErrorCategory::Model, path_ + ": a Constant node needs one output");
    for (const auto& a : np.attribute()) {
      at::Tensor t;
      if (a.name() == "value" && a.type() == onnx::AttributeProto::TENSOR) t = tensorOf(a.t(), "Constant '" + np.output(0) + "'");
      else if (a.name() == "value_float") t = at::tensor(a.f(), at::kFloat).reshape({});
      else if (a.name() == "value_int") t = at::tensor(a.i(), at::kLong).reshape({});
      else if (a.name() == "value_ints") t = at::tensor(std::vector<int64_t>(a.ints().begin(), a.ints().end()), at::kLong);
      else if (a.name() == "value_floats") t = at::tensor(std::vector<float>(a.floats().begin(), a.floats().end()), at::kFloat);
      else continue;
      if (g_.isInitializer(np.output(0)) || g_.values.count(np.output(0))) fail(ErrorCategory::Model, path_ + ": '" + np.output(0) + "' is defined twice");
      g_.initializers[np.output(0)] = t;
      return;
    }
    unsupported_["Constant without a tensor, float or int value"]++;
  }

  /// The IR holds ConstantOfShape's fill as a float attribute (a float32 result); other types get a Cast.
  void addConstantOfShape(const onnx::NodeProto& np, Node n) {
    double value = 0;
    int type = 1;
    for (const auto& a : np.attribute())
      if (a.name() == "value" && a.type() == onnx::AttributeProto::TENSOR) {
        at::Tensor t = tensorOf(a.t(), "ConstantOfShape value");
        if (t.numel() != 1) fail(ErrorCategory::Model, n.name + ": ConstantOfShape's value must hold one element");
        value = t.to(at::kDouble).item<double>();
        type = a.t().data_type();
      }
    n.attrs["value"] = value;
    if (type == 1) return emit(std::move(n));
    const std::string out = n.outputs[0];
    n.outputs[0] = fresh(out + ".float");
    Node cast;
    cast.op = "Cast";
    cast.name = fresh(n.name + "_cast");
    cast.inputs = {n.outputs[0]};
    cast.outputs = {out};
    cast.attrs["to"] = int64_t{type};
    cast.source = n.source;
    emit(std::move(n));
    emit(std::move(cast));
  }

  /// Gemm(A, B, C) with a constant B: MatMul(A, B or Transpose(B)) * alpha + beta * C, the linear-layer form.
  void addGemm(Node n) {
    const bool ta = n.attrInt("transA", 0) != 0, tb = n.attrInt("transB", 0) != 0;
    if (ta || n.inputs.size() < 2 || !g_.isInitializer(n.inputs[1])) return emit(std::move(n));
    const double alpha = n.attrFloat("alpha", 1.0), beta = n.attrFloat("beta", 1.0);
    const std::string out = n.outputs[0];
    std::string w = n.inputs[1];
    if (tb) {
      Node t;
      t.op = "Transpose";
      t.name = fresh(n.name + "_wT");
      t.inputs = {w};
      t.outputs = {fresh(w + ".T")};
      t.attrs["perm"] = std::vector<int64_t>{1, 0};
      t.source = n.source;
      w = t.outputs[0];
      emit(std::move(t));
    }
    const bool bias = n.inputs.size() > 2 && !n.inputs[2].empty() && beta != 0;
    std::string y = bias || alpha != 1 ? fresh(out + ".mm") : out;
    Node mm;
    mm.op = "MatMul";
    mm.name = n.name;
    mm.inputs = {n.inputs[0], w};
    mm.outputs = {y};
    mm.source = n.source;
    emit(std::move(mm));
    auto scaled = [&](const std::string& x, double s, const std::string& name, const std::string& result) {
      const std::string c = fresh(name + ".scale");
      g_.initializers[c] = at::tensor(static_cast<float>(s), at::kFloat).reshape({});
      Node m;
      m.op = "Mul";
      m.name = fresh(name + "_scale");
      m.inputs = {x, c};
      m.outputs = {result};
      m.source = n.source;
      emit(std::move(m));
      return result;
    };
    if (alpha != 1) y = scaled(y, alpha, n.name, bias ? fresh(out + ".alpha") : out);
    if (!bias) return;
    std::string c = n.inputs[2];
    if (beta != 1) c = scaled(c, beta, n.name + "_bias", fresh(c + ".beta"));
    Node add;
    add.op = "Add";
    add.name = fresh(n.name + "_bias");
    add.inputs = {y, c};
    add.outputs = {out};
    add.source = n.source;
    emit(std::move(add));
  }

  /// Opset 18 moved Reduce* axes from an attribute to an input; the IR keeps opset 17's attribute.
  void axesToAttribute(Node& n) {
    const std::string& a = n.inputs[1];
    if (a.empty()) {
      n.inputs.resize(1);
      return;
    }
    if (!g_.isInitializer(a)) {
      unsupported_[n.op + " with computed axes"]++;
      return;
    }
    at::Tensor t = g_.initializers.at(a).to(at::kLong).reshape({-1});
    n.attrs["axes"] = std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    n.inputs.resize(1);
    if (n.attrInt("noop_with_empty_axes", 0) != 0) unsupported_[n.op + " with noop_with_empty_axes"]++;
  }

  void reportUnsupported() {
    if (unsupported_.empty()) return;
    std::string msg = path_ + " uses what the IR cannot run:";
    for (const auto& [op, count] : unsupported_) msg += "\n  " + op + " (" + std::to_string(count) + "x)";
    msg += "\n(`compress passes --ops` lists the supported ops)";
    fail(ErrorCategory::Model, msg);
  }

  /// Float initializers that layers own (weights, biases, norm scales, embeddings) are parameters: the
  /// weight reported and compressed; the rest (masks, RoPE tables, shape constants) are constants.
  void markParameters() {
    static const std::set<std::string> kWeightOps = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "LayerNormalization",
                                                     "BatchNormalization", "InstanceNormalization", "GroupNormalization"};
    std::map<std::string, std::string> transposed;  // Transpose output -> its initializer (weights stored [out, in])
    for (const Node& n : g_.nodes)
      if (n.op == "Transpose" && g_.isInitializer(n.inputs[0])) transposed[n.outputs[0]] = n.inputs[0];
    for (const Node& n : g_.nodes)
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        std::string v = n.inputs[i];
        if (transposed.count(v) && kWeightOps.count(n.op)) v = transposed.at(v);
        if (!g_.isInitializer(v) || !at::isFloatingType(g_.initializers.at(v).scalar_type())) continue;
        const at::Tensor& t = g_.initializers.at(v);
        const bool layer = kWeightOps.count(n.op) && !(n.op == "Gather" && i != 0);
        const bool vector = (n.op == "Mul" || n.op == "Add") && t.dim() == 1 && t.numel() > 1;  // norm scales, biases
        if (layer || vector) g_.parameters.insert(v);
      }
  }

  std::string path_, dir_;
  const ImportOptions& opts_;
  Graph g_;
  int opset_ = 0;
  std::set<std::string> used_;
  std::map<std::string, int> unsupported_;
  std::map<std::string, std::pair<DType, Shape>> specs_;
  std::set<std::string> four_bit_;  // initializers read from UINT4/INT4 data
};

}  // namespace

Graph importOnnx(const std::string& path, const ImportOptions& options) { return OnnxReader(path, options).read(); }

}  // namespace compress
