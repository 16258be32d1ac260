// onnx_export.cpp — IR -> ONNX ModelProto, canonical dumps, ONNX's checker.
#include "export/onnx_export.h"
#include "export/sparse_weights.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>
#include <unordered_map>

#include "compress/error.h"
#include "compress/npy.h"
#include "quant/format.h"

namespace compress {
namespace {

using json = nlohmann::json;
constexpr int kUInt4 = 21, kInt4 = 22;  // TensorProto.DataType values ONNX 1.12's enum lacks

uint64_t fnv(const void* p, size_t n, uint64_t h = 1469598103934665603ULL) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

void setShape(onnx::TensorShapeProto* s, const Shape& shape) {
  for (const auto& d : shape) {
    auto* dim = s->add_dim();
    if (d.isFixed()) dim->set_dim_value(d.value);
    else if (d.symbol != "?") dim->set_dim_param(d.symbol);
  }
}

void setValueInfo(onnx::ValueInfoProto* vi, const std::string& name, const ValueInfo& info) {
  vi->set_name(name);
  auto* t = vi->mutable_type()->mutable_tensor_type();
  t->set_elem_type(static_cast<int>(info.dtype));
  if (info.shape) setShape(t->mutable_shape(), *info.shape);
}

void setRaw(onnx::TensorProto* t, const std::string& name, int dtype, const std::vector<int64_t>& dims, const void* data,
            size_t bytes) {
  t->set_name(name);
  t->set_data_type(dtype);
  for (auto d : dims) t->add_dims(d);
  t->set_raw_data(std::string(static_cast<const char*>(data), bytes));
}

void setTensor(onnx::TensorProto* t, const std::string& name, const at::Tensor& x) {
  at::Tensor c = x.detach().to(at::kCPU).contiguous();
  setRaw(t, name, static_cast<int>(dtypeFromScalarType(c.scalar_type())), c.sizes().vec(), c.data_ptr(), c.nbytes());
}

// Packs unsigned b-bit values along the last dim of `u` ([rows, n] int32), low bits first, `row_bytes` each.
std::vector<uint8_t> packRows(const at::Tensor& u, int bits, int64_t row_bytes) {
  at::Tensor c = u.to(at::kInt).contiguous();
  int64_t rows = c.size(0), n = c.size(1);
  const int32_t* p = c.data_ptr<int32_t>();
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      uint32_t v = static_cast<uint32_t>(p[r * n + j]) & ((1u << bits) - 1);
      for (int k = 0; k < bits; ++k)
        if (v >> k & 1u) {
          int64_t bit = j * bits + k;
          out[static_cast<size_t>(r * row_bytes + bit / 8)] |= static_cast<uint8_t>(1u << (bit % 8));
        }
    }
  return out;
}

bool isPow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

enum class Plan { QdqChannel, MatMulNBits, QdqBlocked };

struct Ctx {
  Ctx(const Graph& graph, const ExportOptions& options) : g(graph), opts(options) {}
  const Graph& g;
  const ExportOptions& opts;
  int opset = 17;
  std::map<std::string, Plan> plans;             // quantized weight -> how it is written
  std::map<std::string, std::string> nbits_of;   // Transpose output -> MatMulNBits weight
  std::map<std::string, std::string> transposed_qdq;  // QDQ weight stored [K, N] -> its DequantizeLinear output
  std::map<std::string, std::string> rename;     // dropped Transpose output -> the value that replaces it
  std::set<std::string> skip_nodes;              // Transpose outputs whose nodes are not written
  std::map<std::string, std::string> weight_of;  // initializer -> the weight it belongs to (size accounting)
  std::map<std::string, std::string> format_of;  // weight -> "int8-qdq", "int4-matmulnbits", ...
};

// A weight can become MatMulNBits only when every reader is Transpose([1,0]) feeding MatMul's B input.
bool onlyLinearReaders(const Graph& g, const std::string& w, std::vector<std::string>* transposes) {
  for (int ci : g.consumers(w)) {
    const Node& t = g.nodes[ci];
    if (t.op != "Transpose" || t.attrInts("perm") != std::vector<int64_t>{1, 0}) return false;
    for (int mi : g.consumers(t.outputs[0])) {
      const Node& m = g.nodes[mi];
      if (m.op != "MatMul" || m.inputs[1] != t.outputs[0] || m.inputs[0] == t.outputs[0]) return false;
    }
    if (std::find(g.outputs.begin(), g.outputs.end(), t.outputs[0]) != g.outputs.end()) return false;
    transposes->push_back(t.outputs[0]);
  }
  return std::find(g.outputs.begin(), g.outputs.end(), w) == g.outputs.end();
}

void planWeights(Ctx& c) {
  c.opset = c.opts.opset;
  if (c.opts.int4 != "matmulnbits" && c.opts.int4 != "qdq")
    fail(ErrorCategory::Config, "export int4 must be matmulnbits or qdq, got '" + c.opts.int4 + "'");
  for (const auto& [w, q] : c.g.quant) {
    if (q.group_size <= 0) {
      c.plans[w] = Plan::QdqChannel;
      c.format_of[w] = "int" + std::to_string(q.bits) + "-per-channel-qdq";
      continue;
    }
    std::vector<std::string> transposes;
    bool nbits_ok = c.opts.int4 == "matmulnbits" && isPow2(q.group_size) && q.group_size >= 16 &&
                    (q.bits == 2 || q.bits == 4 || q.bits == 8) && onlyLinearReaders(c.g, w, &transposes);
    if (nbits_ok) {
      c.plans[w] = Plan::MatMulNBits;
      for (const auto& t : transposes) c.nbits_of[t] = w;
      c.format_of[w] = "int" + std::to_string(q.bits) + "-g" + std::to_string(q.group_size) + "-matmulnbits";
      continue;
    } else {
      c.plans[w] = Plan::QdqBlocked;
      c.opset = std::max(c.opset, 21);  // block_size and INT4 need opset 21
      c.format_of[w] = "int" + std::to_string(q.bits) + "-g" + std::to_string(q.group_size) + "-qdq";
    }
  }
  // QDQ weights read only by linear layers are stored [K, N] (in, out), the layout ORT's quantizer writes:
  // DequantizeLinear then feeds MatMul directly and the weight Transpose disappears.
  for (const auto& [w, plan] : c.plans) {
    if (plan == Plan::MatMulNBits) continue;
    std::vector<std::string> transposes;
    if (!onlyLinearReaders(c.g, w, &transposes) || transposes.empty()) continue;
    c.transposed_qdq[w] = transposes[0];
    for (const auto& t : transposes) {
      c.skip_nodes.insert(t);
      c.rename[t] = transposes[0];
    }
  }
  // Per-token activation quantization (smoothquant.h's Dynamic) uses opset 21's blocked scales and output_dtype.
  for (const auto& n : c.g.nodes)
    if (n.op == "QuantizeLinear" && (n.hasAttr("block_size") || n.hasAttr("output_dtype")))
      c.opset = std::max(c.opset, 21);
  if (c.opset < 13 || c.opset > 21)
    fail(ErrorCategory::Config, "export opset must be between 13 and 21, got " + std::to_string(c.opset));
}

void addAttr(onnx::NodeProto* n, const std::string& k, const Attribute& a) {
  auto* at = n->add_attribute();
  at->set_name(k);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>) at->set_type(onnx::AttributeProto::INT), at->set_i(v);
        else if constexpr (std::is_same_v<T, double>) at->set_type(onnx::AttributeProto::FLOAT), at->set_f(static_cast<float>(v));
        else if constexpr (std::is_same_v<T, std::string>) at->set_type(onnx::AttributeProto::STRING), at->set_s(v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          at->set_type(onnx::AttributeProto::INTS);
          for (auto x : v) at->add_ints(x);
        } else {
          at->set_type(onnx::AttributeProto::FLOATS);
          for (auto x : v) at->add_floats(static_cast<float>(x));
        }
      },
      a);
}

// Writes the MatMulNBits initializers of weight `w`: B [N, blocks, bs*bits/8], scales [N, blocks], and
// zero points [N, ceil(blocks*bits/8)] when asymmetric (absent: MatMulNBits' default 2^(bits-1)).
void addNBitsWeight(Ctx& c, onnx::GraphProto* gp, const std::string& w) {
  QuantizedTensor q = quantizedOf(c.g, w);
  int bits = q.format.bits;
  int64_t bs = q.format.group_size, N = q.qdata.size(0), K = q.qdata.size(1), blocks = (K + bs - 1) / bs;
  at::Tensor u = q.qdata.to(at::kInt);
  if (q.format.symmetric) u = u + (1 << (bits - 1));  // symmetric q + 2^(b-1) with the default zero point
  int pad_value = q.format.symmetric ? (1 << (bits - 1)) : 0;
  at::Tensor zp = q.zero_points.defined() ? q.zero_points.to(at::kInt) : at::Tensor();
  if (blocks * bs != K) {
    // Pad the last block with its zero point (dequantizes to 0; ORT only reads K columns anyway).
    u = at::constant_pad_nd(u, {0, blocks * bs - K}, pad_value);
    if (zp.defined()) u.narrow(1, K, blocks * bs - K).copy_(zp.select(1, blocks - 1).unsqueeze(1).expand({N, blocks * bs - K}));
  }
  int64_t blob = bs * bits / 8;
  auto packed = packRows(u.reshape({N * blocks, bs}), bits, blob);
  setRaw(gp->add_initializer(), w + ".B", static_cast<int>(DType::UInt8), {N, blocks, blob}, packed.data(), packed.size());
  at::Tensor s = q.scales.to(at::kFloat).contiguous().reshape({N, blocks});
  setRaw(gp->add_initializer(), w + ".scales", static_cast<int>(DType::Float32), {N, blocks}, s.data_ptr(), s.nbytes());
  c.weight_of[w + ".B"] = c.weight_of[w + ".scales"] = w;
  if (zp.defined()) {
    int64_t zrow = (blocks * bits + 7) / 8;
    auto zpacked = packRows(zp.reshape({N, blocks}), bits, zrow);
    setRaw(gp->add_initializer(), w + ".zero_points", static_cast<int>(DType::UInt8), {N, zrow}, zpacked.data(), zpacked.size());
    c.weight_of[w + ".zero_points"] = w;
  }
}

// Opset-21 blocked QDQ initializers: sub-byte types are written packed, two values a byte, low nibble first.
void addBlockedQdqTensor(onnx::TensorProto* t, const std::string& name, const at::Tensor& x, int bits, bool is_signed) {
  at::Tensor c = x.to(at::kInt).contiguous();
  if (bits > 4) {
    setTensor(t, name, is_signed ? c.to(at::kChar) : c.to(at::kByte));
    return;
  }
  int64_t n = c.numel();
  auto packed = packRows((c.reshape({1, n}) & 0xF), 4, (n + 1) / 2);
  setRaw(t, name, is_signed ? kInt4 : kUInt4, c.sizes().vec(), packed.data(), packed.size());
}

/// What writing the nodes found out, for the initializers, the value info and the stats.
struct Written {
  std::set<std::string> used;            // initializers the emitted nodes read
  std::set<std::string> emitted_values;  // node outputs written
  bool any_nbits = false;
  int64_t int8_act_nodes = 0;  // MatMulNBits nodes written with accuracy_level 4 (int8 activations)
  int reduce_axes_id = 0;
};

/// The model's header: IR version, producer, opsets, metadata, graph inputs and outputs.
void writeHeader(const Ctx& c, onnx::ModelProto& model) {
  model.set_ir_version(c.opset >= 21 ? 10 : 8);
  model.set_producer_name("compress");
  model.set_producer_version(COMPRESS_VERSION);
  model.set_doc_string("Exported by compress " COMPRESS_VERSION);
  auto* op = model.add_opset_import();
  op->set_domain("");
  op->set_version(c.opset);
  for (const auto& [k, v] : c.opts.metadata) {
    auto* p = model.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  }
  onnx::GraphProto* gp = model.mutable_graph();
  gp->set_name("compress");
  for (const auto& i : c.g.inputs) setValueInfo(gp->add_input(), i, c.g.values.at(i));
  for (const auto& o : c.g.outputs) setValueInfo(gp->add_output(), o, c.g.values.at(o));
}

/// A MatMul whose weight is written as MatMulNBits: the node reading B, scales and zero points by the weight's name.
void writeMatMulNBits(Ctx& c, const Node& n, onnx::NodeProto* np, Written& out) {
  const std::string& w = c.nbits_of[n.inputs[1]];
  const QuantInfo& q = c.g.quant.at(w);
  const at::Tensor& qd = c.g.initializers.at(w + ".qdata");
  np->set_op_type("MatMulNBits");
  np->set_domain("com.microsoft");
  np->add_input(n.inputs[0]);
  np->add_input(w + ".B");
  np->add_input(w + ".scales");
  if (!q.symmetric) np->add_input(w + ".zero_points");
  np->add_output(n.outputs[0]);
  addAttr(np, "K", qd.size(1));
  addAttr(np, "N", qd.size(0));
  addAttr(np, "bits", static_cast<int64_t>(q.bits));
  addAttr(np, "block_size", q.group_size);
  if (c.opts.accuracy_level > 0) addAttr(np, "accuracy_level", c.opts.accuracy_level);
  out.int8_act_nodes += c.opts.accuracy_level == 4;
  out.any_nbits = true;
  out.emitted_values.insert(n.outputs[0]);
}

/// The attributes of node n as ONNX writes them: ConstantOfShape's value as a one-element float32 tensor, and from
/// opset 18 Reduce* axes as an input.
void writeAttributes(const Ctx& c, const Node& n, onnx::NodeProto* np, onnx::GraphProto* gp, Written& out) {
  bool axes_as_input = c.opset >= 18 && (n.op == "ReduceMean" || n.op == "ReduceMax") && n.hasAttr("axes");
  for (const auto& [k, a] : n.attrs) {
    if (axes_as_input && k == "axes") continue;
    if (n.op == "ConstantOfShape" && k == "value") {  // the IR's float fill -> ONNX's one-element float32 tensor
      auto* at = np->add_attribute();
      at->set_name("value");
      at->set_type(onnx::AttributeProto::TENSOR);
      const float v = static_cast<float>(n.attrFloat("value", 0.0));
      setRaw(at->mutable_t(), "value", static_cast<int>(DType::Float32), {1}, &v, sizeof v);
      continue;
    }
    addAttr(np, k, a);
  }
  if (axes_as_input) {  // opset 18 moved Reduce* axes from an attribute to an input
    std::string name = "axes." + n.name + "." + std::to_string(out.reduce_axes_id++);
    auto axes = n.attrInts("axes");
    setRaw(gp->add_initializer(), name, static_cast<int>(DType::Int64), {static_cast<int64_t>(axes.size())}, axes.data(),
           axes.size() * 8);
    np->add_input(name);
  }
}

/// Every node of the graph, as the weight plans say: MatMulNBits weights lose their DequantizeLinear and Transpose,
/// QDQ weights stored [K, N] lose their Transpose (their DequantizeLinear writes the transposed value).
void writeNodes(Ctx& c, onnx::GraphProto* gp, Written& out) {
  for (const Node& n : c.g.nodes) {
    if (n.op == "DequantizeLinear" && c.plans.count(n.outputs[0]) && c.plans[n.outputs[0]] == Plan::MatMulNBits) continue;
    if (n.op == "Transpose" && (c.nbits_of.count(n.outputs[0]) || c.skip_nodes.count(n.outputs[0]))) continue;
    onnx::NodeProto* np = gp->add_node();
    np->set_name(n.name);
    if (n.op == "MatMul" && c.nbits_of.count(n.inputs[1])) {
      writeMatMulNBits(c, n, np, out);
      continue;
    }
    np->set_op_type(n.op);
    if (!n.domain.empty()) np->set_domain(n.domain);
    for (const auto& i : n.inputs) {
      auto rn = c.rename.find(i);
      np->add_input(rn != c.rename.end() ? rn->second : i);
      if (c.g.isInitializer(i)) out.used.insert(i);
    }
    if (n.op == "DequantizeLinear" && c.transposed_qdq.count(n.outputs[0])) {
      // [K, N] storage: per-channel scales run along axis 1, blocks along axis 0.
      const std::string& w = n.outputs[0];
      const std::string& value = c.transposed_qdq.at(w);
      np->add_output(value);
      out.emitted_values.insert(value);
      bool blocked = c.g.quant.at(w).group_size > 0;
      addAttr(np, "axis", int64_t{blocked ? 0 : 1});
      if (blocked) addAttr(np, "block_size", c.g.quant.at(w).group_size);
      continue;
    }
    for (const auto& o : n.outputs) np->add_output(o), out.emitted_values.insert(o);
    writeAttributes(c, n, np, gp, out);
  }
}

/// The initializers: MatMulNBits weights in their layout, the QDQ weights stored [K, N] transposed, blocked QDQ
/// integers packed as opset 21's sub-byte types, every other initializer the nodes read as it is.
void writeInitializers(Ctx& c, onnx::GraphProto* gp, const std::set<std::string>& used) {
  for (const auto& [w, plan] : c.plans) {
    if (plan == Plan::MatMulNBits) addNBitsWeight(c, gp, w);
    for (const char* suffix : {".qdata", ".scale", ".zero_point"}) c.weight_of[w + suffix] = w;
  }
  for (const auto& name : used) {
    at::Tensor t = c.g.initializers.at(name);
    auto owner = c.weight_of.find(name);
    if (owner != c.weight_of.end() && c.transposed_qdq.count(owner->second) && t.dim() == 2) t = t.t().contiguous();
    if (owner != c.weight_of.end() && c.plans.at(owner->second) == Plan::QdqBlocked &&
        (name.size() > 6 && (name.compare(name.size() - 6, 6, ".qdata") == 0 || name.compare(name.size() - 11, 11, ".zero_point") == 0))) {
      const QuantInfo& q = c.g.quant.at(owner->second);
      addBlockedQdqTensor(gp->add_initializer(), name, t, q.bits, t.scalar_type() == at::kChar);
    } else {
      setTensor(gp->add_initializer(), name, t);
    }
  }
}

/// The compact form of the pruned linear weights (export/sparse_weights.h); their masks and values count as their
/// weight's bytes.
json writeCompactSparse(Ctx& c, onnx::GraphProto* gp) {
  std::set<std::string> pruned;
  for (const auto& l : findLinears(c.g)) pruned.insert(c.g.quant.count(l.weight) ? l.weight + ".qdata" : l.weight);
  json cs = compactSparseWeights(*gp, pruned);
  for (const auto& t : gp->initializer()) {
    const std::string& n = t.name();
    for (const char* suffix : {".mask", ".values"}) {
      const size_t len = std::strlen(suffix);
      if (n.size() <= len || n.compare(n.size() - len, len, suffix) != 0) continue;
      const std::string base = n.substr(0, n.size() - len);
      auto owner = c.weight_of.find(base);
      c.weight_of[n] = owner != c.weight_of.end() ? owner->second : base;
    }
  }
  return cs;
}

/// Intermediate shapes (from the IR's probe-based inference) for tools and readers.
void writeValueInfo(const Ctx& c, onnx::GraphProto* gp, const std::set<std::string>& emitted_values) {
  std::set<std::string> io(c.g.inputs.begin(), c.g.inputs.end());
  io.insert(c.g.outputs.begin(), c.g.outputs.end());
  for (const auto& v : emitted_values) {
    if (io.count(v) || c.g.isInitializer(v)) continue;
    auto it = c.g.values.find(v);
    if (it != c.g.values.end() && it->second.dtype != DType::Undefined) setValueInfo(gp->add_value_info(), v, it->second);
  }
}

/// The export's numbers for the report: bytes by format, the quantized weights against the float32 bytes they
/// replace (data, scales and zero points), opset, nodes, each weight's format.
void exportStats(Ctx& c, const onnx::ModelProto& model, const Written& out, json& stats) {
  const onnx::GraphProto& gp = model.graph();
  json bytes_by_format = json::object();
  int64_t linear_bytes = 0, total = 0;
  std::set<std::string> linear_weights;
  for (const auto& l : findLinears(c.g)) linear_weights.insert(l.weight);
  for (const auto& t : gp.initializer()) {
    int64_t b = static_cast<int64_t>(t.raw_data().size());
    total += b;
    auto owner = c.weight_of.find(t.name());
    std::string w = owner != c.weight_of.end() ? owner->second : t.name();
    std::string fmt = c.format_of.count(w) ? c.format_of[w] : (c.g.parameters.count(w) ? std::string(dtypeName(static_cast<DType>(t.data_type()))) : "constants");
    bytes_by_format[fmt] = bytes_by_format.value(fmt, int64_t{0}) + b;
    if (linear_weights.count(w)) linear_bytes += b;
  }
  int64_t q_bytes = 0, q_fp32 = 0;
  std::map<std::string, int64_t> per_weight;
  for (const auto& t : gp.initializer()) {
    auto owner = c.weight_of.find(t.name());
    if (owner != c.weight_of.end() && c.g.quant.count(owner->second)) per_weight[owner->second] += t.raw_data().size();
  }
  for (const auto& [w, b] : per_weight) {
    q_bytes += b;
    q_fp32 += c.g.initializers.at(w + ".qdata").numel() * 4;
  }
  stats["quantized_weight_bytes"] = q_bytes;
  stats["quantized_weight_fp32_bytes"] = q_fp32;
  stats["quantized_weight_ratio"] = q_fp32 ? static_cast<double>(q_bytes) / static_cast<double>(q_fp32) : 1.0;
  stats["opset"] = c.opset;
  stats["int8_activation_matmuls"] = out.int8_act_nodes;
  stats["ir_version"] = model.ir_version();
  stats["int4"] = c.opts.int4;
  stats["initializer_bytes"] = total;
  stats["linear_weight_bytes"] = linear_bytes;
  stats["bytes_by_format"] = bytes_by_format;
  stats["nodes"] = gp.node_size();
  json formats = json::object();
  for (const auto& [w, f] : c.format_of) formats[w] = f;
  stats["weight_formats"] = formats;
}

}  // namespace

void buildOnnx(const Graph& g, const ExportOptions& opts, onnx::ModelProto& model, json* stats) {
  Ctx c{g, opts};
  planWeights(c);
  writeHeader(c, model);
  onnx::GraphProto* gp = model.mutable_graph();
  Written out;
  writeNodes(c, gp, out);
  if (out.any_nbits) {
    auto* ms = model.add_opset_import();
    ms->set_domain("com.microsoft");
    ms->set_version(1);
  }
  writeInitializers(c, gp, out.used);
  if (opts.compact_sparse) {
    json cs = writeCompactSparse(c, gp);
    if (stats) (*stats)["sparse_weights"] = cs;
  }
  writeValueInfo(c, gp, out.emitted_values);
  if (stats) exportStats(c, model, out, *stats);
}

json exportOnnx(const Graph& g, const std::string& path, const ExportOptions& opts) {
  onnx::ModelProto model;
  json stats;
  buildOnnx(g, opts, model, &stats);
  int64_t weight_bytes = stats["initializer_bytes"].get<int64_t>();
  bool external = opts.external_data || weight_bytes > opts.external_threshold;
  int64_t external_bytes = 0;
  if (external) {
    // ONNX external data: tensors of 1 KiB and more go to <file>.data, 64-byte aligned.
    std::string data_name = std::filesystem::path(path).filename().string() + ".data";
    std::string data;
    for (auto& t : *model.mutable_graph()->mutable_initializer()) {
      if (t.raw_data().size() < 1024) continue;
      data.append((64 - data.size() % 64) % 64, '\0');
      size_t off = data.size();
      data += t.raw_data();
      t.clear_raw_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      for (auto [k, v] : {std::pair<std::string, std::string>{"location", data_name}, {"offset", std::to_string(off)},
                          {"length", std::to_string(data.size() - off)}}) {
        auto* e = t.add_external_data();
        e->set_key(k);
        e->set_value(v);
      }
    }
    external_bytes = static_cast<int64_t>(data.size());
    writeFileAtomic(path + ".data", data);
  }
  std::string bytes;
  if (!model.SerializeToString(&bytes)) fail(ErrorCategory::Internal, "protobuf could not serialize the ONNX model");
  if (bytes.size() > (size_t{2} << 30) - 1)
    fail(ErrorCategory::Io, "the ONNX graph is over 2 GB even without weights; it cannot be written as one protobuf");
  writeFileAtomic(path, bytes);
  stats["file"] = path;
  stats["file_bytes"] = static_cast<int64_t>(bytes.size());
  stats["external_data"] = external;
  stats["external_bytes"] = external_bytes;
  stats["total_bytes"] = static_cast<int64_t>(bytes.size()) + external_bytes;
  return stats;
}

std::string dumpOnnxFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorCategory::Io, "cannot open '" + path + "'");
  onnx::ModelProto m;
  if (!m.ParseFromIstream(&f)) fail(ErrorCategory::Model, "'" + path + "' is not an ONNX model (protobuf parse failed)");
  std::string dir = std::filesystem::path(path).parent_path().string();
  std::ostringstream os;
  os << "ir_version " << m.ir_version() << "\n";
  for (const auto& o : m.opset_import()) os << "opset " << (o.domain().empty() ? "ai.onnx" : o.domain()) << " " << o.version() << "\n";
  auto type = [](const onnx::TypeProto& t) {
    std::string s = dtypeName(static_cast<DType>(t.tensor_type().elem_type()));
    s += "[";
    const auto& sh = t.tensor_type().shape();
    for (int i = 0; i < sh.dim_size(); ++i) {
      if (i) s += ",";
      s += sh.dim(i).has_dim_value() ? std::to_string(sh.dim(i).dim_value()) : sh.dim(i).dim_param().empty() ? "?" : sh.dim(i).dim_param();
    }
    return s + "]";
  };
  const auto& g = m.graph();
  for (const auto& i : g.input()) os << "input " << i.name() << ": " << type(i.type()) << "\n";
  for (const auto& o : g.output()) os << "output " << o.name() << ": " << type(o.type()) << "\n";
  std::vector<const onnx::TensorProto*> inits;
  for (const auto& t : g.initializer()) inits.push_back(&t);
  std::sort(inits.begin(), inits.end(), [](auto* a, auto* b) { return a->name() < b->name(); });
  for (const auto* t : inits) {
    std::string raw = t->raw_data();
    if (t->data_location() == onnx::TensorProto::EXTERNAL) {
      std::string loc;
      int64_t off = 0, len = 0;
      for (const auto& e : t->external_data()) {
        if (e.key() == "location") loc = e.value();
        if (e.key() == "offset") off = std::stoll(e.value());
        if (e.key() == "length") len = std::stoll(e.value());
      }
      std::ifstream d(dir.empty() ? loc : dir + "/" + loc, std::ios::binary);
      raw.assign(static_cast<size_t>(len), '\0');
      d.seekg(off);
      d.read(raw.data(), len);
    }
    os << "init " << t->name() << ": type " << t->data_type() << " [";
    for (int i = 0; i < t->dims_size(); ++i) os << (i ? "," : "") << t->dims(i);
    os << "] " << raw.size() << "B #" << std::hex << std::setw(16) << std::setfill('0') << fnv(raw.data(), raw.size())
       << std::dec << std::setfill(' ') << "\n";
  }
  for (const auto& n : g.node()) {
    os << "node " << (n.domain().empty() ? "" : n.domain() + ".") << n.op_type() << "(";
    for (int i = 0; i < n.input_size(); ++i) os << (i ? ", " : "") << n.input(i);
    os << ") -> ";
    for (int i = 0; i < n.output_size(); ++i) os << (i ? ", " : "") << n.output(i);
    std::vector<const onnx::AttributeProto*> attrs;
    for (const auto& a : n.attribute()) attrs.push_back(&a);
    std::sort(attrs.begin(), attrs.end(), [](auto* a, auto* b) { return a->name() < b->name(); });
    for (const auto* a : attrs) {
      os << " " << a->name() << "=";
      if (a->type() == onnx::AttributeProto::INT) os << a->i();
      else if (a->type() == onnx::AttributeProto::FLOAT) os << std::setprecision(9) << a->f();
      else if (a->type() == onnx::AttributeProto::STRING) os << '"' << a->s() << '"';
      else if (a->type() == onnx::AttributeProto::INTS) {
        os << "[";
        for (int i = 0; i < a->ints_size(); ++i) os << (i ? "," : "") << a->ints(i);
        os << "]";
      }
    }
    os << "\n";
  }
  for (const auto& v : g.value_info()) os << "value " << v.name() << ": " << type(v.type()) << "\n";
  return os.str();
}

bool checkOnnxFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  onnx::ModelProto m;
  if (!f || !m.ParseFromIstream(&f)) fail(ErrorCategory::Model, "'" + path + "' is not a readable ONNX model");
  for (const auto& o : m.opset_import())
    if ((o.domain().empty() || o.domain() == "ai.onnx") && o.version() > 17) return false;  // ONNX 1.12 knows up to 17
  try {
    onnx::checker::check_model(path);
  } catch (const std::exception& e) {
    fail(ErrorCategory::Model, "ONNX checker rejected '" + path + "': " + e.what());
  }
  return true;
}

}  // namespace compress
