// session.cpp — loading an ONNX file into the runtime graph (checks, constant folding, weight packing) and
// running it with per-input-shape memory plans.
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/thread_pool.h"

namespace crt {
namespace detail {
namespace {

// ------------------------------------------------------------------------------------------- loading
bool supportedType(int t) {
  switch (t) {
    case 1: case 2: case 3: case 6: case 7: case 9: case 10: case 11: case 21: case 22: return true;
  }
  return false;
}

std::string typeName(int t) {
  static const char* names[] = {"undefined", "float32", "uint8", "int8", "uint16", "int16", "int32", "int64",
                                "string", "bool", "float16", "float64", "uint32", "uint64", "complex64",
                                "complex128", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
                                "float8e5m2fnuz", "uint4", "int4"};
  return t >= 0 && t < 23 ? names[t] : "type " + std::to_string(t);
}

/// Reads one initializer / Constant tensor into owned, aligned memory.
std::shared_ptr<AlignedBytes> readTensor(const onnx::TensorProto& t, const std::string& dir, Buf& b) {
  const std::string what = "initializer '" + t.name() + "'";
  if (!supportedType(t.data_type()))
    fail(StatusCode::ModelError, what + " has type " + typeName(t.data_type()) + ", which the runtime does not support");
  b.dt = static_cast<DType>(t.data_type());
  b.shape = Shape();
  for (int64_t d : t.dims()) {
    if (d < 0) fail(StatusCode::ModelError, what + " has a negative dim");
    b.shape.push(d);
  }
  const size_t need = b.bytes();
  auto own = std::make_shared<AlignedBytes>(need);
  b.data = own->data();
  char* dst = static_cast<char*>(own->data());
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : t.external_data()) {
      if (kv.key() == "location") location = kv.value();
      else if (kv.key() == "offset") offset = std::stoll(kv.value());
      else if (kv.key() == "length") length = std::stoll(kv.value());
    }
    if (location.empty() || location.find("..") != std::string::npos || location[0] == '/')
      fail(StatusCode::ModelError, what + ": bad external data location '" + location + "'");
    const std::string path = dir + "/" + location;
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(StatusCode::IoError, what + ": cannot open external data file " + path);
    if (length >= 0 && static_cast<size_t>(length) != need)
      fail(StatusCode::ModelError, what + ": external data length " + std::to_string(length) + " != " + std::to_string(need) + " bytes");
    f.seekg(offset);
    f.read(dst, static_cast<std::streamsize>(need));
    if (static_cast<size_t>(f.gcount()) != need)
      fail(StatusCode::ModelError, what + ": external data file " + path + " is shorter than the tensor (" + std::to_string(need) + " bytes at offset " + std::to_string(offset) + ")");
    return own;
  }
  if (t.has_raw_data()) {
    if (t.raw_data().size() != need)
      fail(StatusCode::ModelError, what + ": raw data has " + std::to_string(t.raw_data().size()) + " bytes, its shape " + b.shape.str() + " needs " + std::to_string(need));
    std::memcpy(dst, t.raw_data().data(), need);
    return own;
  }
  const int64_t n = b.numel();
  auto count = [&](int64_t have) {
    if (have != n && !(b.dt == kU4 || b.dt == kI4))
      fail(StatusCode::ModelError, what + " holds " + std::to_string(have) + " values, its shape " + b.shape.str() + " needs " + std::to_string(n));
  };
  switch (b.dt) {
    case DType::F32: count(t.float_data_size()); std::memcpy(dst, t.float_data().data(), need); break;
    case DType::F64: count(t.double_data_size()); std::memcpy(dst, t.double_data().data(), need); break;
    case DType::I64: count(t.int64_data_size()); std::memcpy(dst, t.int64_data().data(), need); break;
    case DType::I32: count(t.int32_data_size()); std::memcpy(dst, t.int32_data().data(), need); break;
    case DType::I8: case DType::U8: case DType::Bool:
      count(t.int32_data_size());
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<char>(t.int32_data(static_cast<int>(i)));
      break;
    case DType::F16:
      count(t.int32_data_size());
      for (int64_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(t.int32_data(static_cast<int>(i)));
      break;
    default:
      if (t.int32_data_size() != static_cast<int>(need)) fail(StatusCode::ModelError, what + ": packed 4-bit data of the wrong size");
      for (size_t i = 0; i < need; ++i) dst[i] = static_cast<char>(t.int32_data(static_cast<int>(i)));
  }
  return own;
}

IoInfo ioInfo(const onnx::ValueInfoProto& v) {
  IoInfo io;
  io.name = v.name();
  if (!v.type().has_tensor_type()) fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' is not a tensor");
  const auto& tt = v.type().tensor_type();
  if (!supportedType(tt.elem_type()))
    fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' has type " + typeName(tt.elem_type()) + ", which the runtime does not support");
  io.dtype = static_cast<DType>(tt.elem_type());
  if (tt.has_shape())
    for (const auto& d : tt.shape().dim()) {
      io.shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
      io.dim_names.push_back(d.has_dim_param() ? d.dim_param() : "");
    }
  return io;
}

Attr readAttr(const onnx::AttributeProto& a) {
  Attr r;
  switch (a.type()) {
    case onnx::AttributeProto::INT: r.kind = Attr::Int; r.i = a.i(); break;
    case onnx::AttributeProto::FLOAT: r.kind = Attr::Float; r.f = a.f(); break;
    case onnx::AttributeProto::INTS: r.kind = Attr::Ints; r.ints.assign(a.ints().begin(), a.ints().end()); break;
    case onnx::AttributeProto::FLOATS: r.kind = Attr::Floats; r.floats.assign(a.floats().begin(), a.floats().end()); break;
    case onnx::AttributeProto::STRING: r.kind = Attr::String; r.s = a.s(); break;
    default: break;
  }
  return r;
}

/// Heap allocation for constant folding at load: every buffer becomes a constant's storage.
class EagerAlloc : public Allocator {
 public:
  explicit EagerAlloc(Graph& g) : g_(g) {}
  void* output(int value, size_t bytes, int, bool) override {
    auto own = std::make_shared<AlignedBytes>(std::max<size_t>(bytes, 1));
    g_.values[value].own = own;
    return own->data();
  }
  void* scratch(size_t bytes, int, bool) override {
    scratch_.emplace_back(std::max<size_t>(bytes, 1));
    return scratch_.back().data();
  }
  void alias(int value, int src) override { g_.values[value].own = g_.values[src].own; }

 private:
  Graph& g_;
  std::vector<AlignedBytes> scratch_;
};

}  // namespace

/// Parses, checks and prepares the graph (fold, pack, mark static nodes, liveness).
Graph loadGraph(const std::string& path, ThreadPool& pool, const Kernels& k, SessionInfo& info) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(StatusCode::IoError, "cannot open " + path + ": check the path (crun expects an .onnx file from `compress`)");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  onnx::ModelProto model;
  if (bytes.empty() || !model.ParseFromString(bytes))
    fail(StatusCode::ModelError, path + " is not a valid ONNX model (protobuf parse failed; truncated or not ONNX?)");
  const std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  const onnx::GraphProto& gp = model.graph();

  Graph g;
  for (const auto& op : model.opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx") g.opset = static_cast<int>(op.version());
  auto valueId = [&](const std::string& name) {
    auto it = g.by_name.find(name);
    if (it != g.by_name.end()) return it->second;
    const int id = static_cast<int>(g.values.size());
    Value v;
    v.name = name;
    g.values.push_back(std::move(v));
    g.by_name[name] = id;
    return id;
  };
  for (const auto& t : gp.initializer()) {
    Value& v = g.values[valueId(t.name())];
    v.is_const = true;
    v.own = readTensor(t, dir, v.constant);
  }
  for (const auto& in : gp.input()) {
    if (g.by_name.count(in.name()) && g.values[g.by_name[in.name()]].is_const) continue;  // initializer listed as input
    g.inputs.push_back(valueId(in.name()));
    g.input_info.push_back(ioInfo(in));
  }
  // nodes; every unsupported op is collected and reported at once
  std::map<std::string, int> unsupported;
  for (const auto& np : gp.node()) {
    if (np.op_type() == "Constant" && (np.domain().empty() || np.domain() == "ai.onnx")) {
      if (np.output_size() != 1) fail(StatusCode::ModelError, "Constant node '" + np.name() + "' needs one output");
      bool done = false;
      for (const auto& a : np.attribute()) {
        Value& v = g.values[valueId(np.output(0))];
        if (a.name() == "value") {
          v.is_const = true;
          v.own = readTensor(a.t(), dir, v.constant);
          done = true;
        } else if (a.name() == "value_float" || a.name() == "value_int" || a.name() == "value_ints" || a.name() == "value_floats") {
          const bool isInt = a.name().find("int") != std::string::npos;
          const bool isList = a.name().back() == 's';
          const int64_t n = isList ? (isInt ? a.ints_size() : a.floats_size()) : 1;
          v.constant.dt = isInt ? DType::I64 : DType::F32;
          v.constant.shape = isList ? Shape{n} : Shape();
          v.own = std::make_shared<AlignedBytes>(std::max<size_t>(v.constant.bytes(), 1));
          v.constant.data = v.own->data();
          for (int64_t i = 0; i < n; ++i) {
            if (isInt) v.constant.as<int64_t>()[i] = isList ? a.ints(static_cast<int>(i)) : a.i();
            else v.constant.as<float>()[i] = isList ? a.floats(static_cast<int>(i)) : a.f();
          }
          v.is_const = true;
          done = true;
        }
      }
      if (!done) unsupported["Constant (sparse or string value)"]++;
      continue;
    }
    Node n;
    n.op = np.op_type();
    n.domain = np.domain() == "ai.onnx" ? "" : np.domain();
    n.name = np.name().empty() ? np.op_type() + "_" + std::to_string(g.nodes.size()) : np.name();
    for (const auto& a : np.attribute()) n.attrs[a.name()] = readAttr(a);
    for (const auto& i : np.input()) n.in.push_back(i.empty() ? -1 : valueId(i));
    for (const auto& o : np.output()) n.out.push_back(valueId(o));
    n.fn = findOp(n.domain, n.op);
    if (!n.fn) unsupported[(n.domain.empty() ? "" : n.domain + ".") + n.op]++;
    g.nodes.push_back(std::move(n));
  }
  if (!unsupported.empty()) {
    std::string msg = path + ": the runtime does not support " + std::to_string(unsupported.size()) + " op type(s): ";
    bool first = true;
    for (const auto& [op, count] : unsupported) {
      msg += (first ? "" : ", ") + op + " (x" + std::to_string(count) + ")";
      first = false;
    }
    fail(StatusCode::ModelError, msg + ". Supported: see `crun ops`.");
  }
  for (const auto& out : gp.output()) {
    auto it = g.by_name.find(out.name());
    if (it == g.by_name.end()) fail(StatusCode::ModelError, "graph output '" + out.name() + "' is produced by no node");
    g.outputs.push_back(it->second);
    g.output_info.push_back(ioInfo(out));
  }
  if (g.outputs.empty()) fail(StatusCode::ModelError, path + ": the graph has no outputs");
  info.nodes = static_cast<int>(g.nodes.size());

  // producers; every value read must be defined (input, constant or an earlier node's output)
  std::vector<char> defined(g.values.size(), 0);
  for (int i : g.inputs) defined[i] = 1;
  for (size_t i = 0; i < g.values.size(); ++i)
    if (g.values[i].is_const) defined[i] = 1;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    for (int v : g.nodes[ni].in)
      if (v >= 0 && !defined[v])
        fail(StatusCode::ModelError, g.nodes[ni].where() + " reads '" + g.values[v].name + "', which no earlier node, input or initializer defines (graph not topologically sorted?)");
    for (int v : g.nodes[ni].out) {
      g.values[v].producer = static_cast<int>(ni);
      defined[v] = 1;
    }
  }
  for (int o : g.outputs)
    if (!defined[o]) fail(StatusCode::ModelError, "graph output '" + g.values[o].name + "' is never computed");

  // 1. pack weights: MatMulNBits, and MatMul whose B is DequantizeLinear of constants
  auto isConst = [&](int v) { return v >= 0 && g.values[v].is_const; };
  for (Node& n : g.nodes) {
    if (n.domain == "com.microsoft" && n.op == "MatMulNBits") {
      if (n.in.size() < 3 || !isConst(n.in[1]) || !isConst(n.in[2]) || (n.in.size() > 3 && n.in[3] >= 0 && !isConst(n.in[3])))
        fail(StatusCode::ModelError, n.where() + ": B, scales and zero_points must be initializers");
      if (n.in.size() > 4 && n.in[4] >= 0) fail(StatusCode::ModelError, n.where() + ": g_idx (act-order) is not supported");
      n.packed = packMatMulNBits(n, g.values[n.in[1]].constant, g.values[n.in[2]].constant,
                                 n.in.size() > 3 && n.in[3] >= 0 ? &g.values[n.in[3]].constant : nullptr);
      const int bias = n.in.size() > 5 ? n.in[5] : -1;
      n.in = {n.in[0], bias};
    } else if (n.domain.empty() && n.op == "MatMul" && n.in.size() == 2 && n.in[1] >= 0) {
      const int p = g.values[n.in[1]].producer;
      if (p < 0) continue;
      const Node& dq = g.nodes[p];
      if (dq.op != "DequantizeLinear" || !dq.domain.empty() || dq.in.size() < 2 || !isConst(dq.in[0]) || !isConst(dq.in[1]) ||
          (dq.in.size() > 2 && dq.in[2] >= 0 && !isConst(dq.in[2])))
        continue;
      auto packed = packDequantize(g.values[dq.in[0]].constant, g.values[dq.in[1]].constant,
                                   dq.in.size() > 2 && dq.in[2] >= 0 ? &g.values[dq.in[2]].constant : nullptr,
                                   dq.attrInt("axis", 1), dq.attrInt("block_size", 0));
      if (!packed) continue;
      n.packed = packed;
      n.in = {n.in[0]};
    }
  }

  // 2. drop nodes nothing needs (e.g. DequantizeLinear nodes now packed into their MatMul)
  auto prune = [&]() {
    std::vector<char> needed(g.values.size(), 0);
    for (int o : g.outputs) needed[o] = 1;
    std::vector<Node> kept;
    std::vector<char> keep(g.nodes.size(), 0);
    for (int ni = static_cast<int>(g.nodes.size()) - 1; ni >= 0; --ni) {
      const Node& n = g.nodes[ni];
      bool any = false;
      for (int v : n.out) any |= needed[v] != 0;
      if (!any) continue;
      keep[ni] = 1;
      for (int v : n.in)
        if (v >= 0) needed[v] = 1;
    }
    for (size_t ni = 0; ni < g.nodes.size(); ++ni)
      if (keep[ni]) kept.push_back(std::move(g.nodes[ni]));
    g.nodes = std::move(kept);
    for (size_t v = 0; v < g.values.size(); ++v)
      if (!needed[v] && g.values[v].is_const) g.values[v].own.reset(), g.values[v].constant.data = nullptr;
    for (size_t ni = 0; ni < g.nodes.size(); ++ni)
      for (int v : g.nodes[ni].out) g.values[v].producer = static_cast<int>(ni);
  };
  prune();

  // 3. fold nodes whose inputs are all constants (weight transposes, casts, shape arithmetic on constants)
  {
    std::vector<int> uses(g.values.size(), 0);
    for (const Node& n : g.nodes)
      for (int v : n.in)
        if (v >= 0) ++uses[v];
    for (int o : g.outputs) ++uses[o];
    std::vector<Buf> vals(g.values.size());
    EagerAlloc alloc(g);
    RunEnv env{&g, vals.data(), &alloc, &pool, &k, 0};
    std::vector<Node> live;
    int folded = 0;
    for (Node& n : g.nodes) {
      bool allConst = !n.in.empty() && !n.packed;
      for (int v : n.in)
        if (v >= 0 && !g.values[v].is_const) allConst = false;
      if (!allConst) {
        live.push_back(std::move(n));
        continue;
      }
      for (int v : n.in)
        if (v >= 0) vals[v] = g.values[v].constant;
      OpCtx c{env, n};
      try {
        n.fn(c);
      } catch (const Failure& e) {
        fail(StatusCode::ModelError, std::string("while folding constants: ") + e.what());
      }
      for (int v : n.out) {
        g.values[v].is_const = true;
        g.values[v].constant = vals[v];
        g.values[v].producer = -1;
      }
      for (int v : n.in)
        if (v >= 0 && --uses[v] == 0) g.values[v].own.reset(), g.values[v].constant.data = nullptr;
      ++folded;
    }
    g.nodes = std::move(live);
    info.folded = folded;
  }

  // 4. MatMul with a constant float B: pre-pack it as rows of the output
  for (Node& n : g.nodes) {
    if (n.domain.empty() && n.op == "MatMul" && !n.packed && n.in.size() == 2 && isConst(n.in[1])) {
      auto p = packDense(g.values[n.in[1]].constant);
      if (!p) continue;
      n.packed = p;
      n.in = {n.in[0]};
    }
  }
  prune();
  for (const Node& n : g.nodes)
    if (n.packed) {
      ++info.packed_matmuls;
      info.weight_bytes += n.packed->bytes();
    }

  // 5. static nodes (their outputs depend only on input shapes and constants) run once per plan
  for (Node& n : g.nodes) {
    bool st = n.op == "Shape";
    if (!st) {
      bool anyStatic = false, allOk = !n.in.empty() && !n.packed;
      for (int v : n.in) {
        if (v < 0) continue;
        if (g.values[v].is_static) anyStatic = true;
        else if (!g.values[v].is_const) allOk = false;
      }
      st = allOk && anyStatic;
    }
    n.is_static = st;
    for (int v : n.out) g.values[v].is_static = st;
  }

  // 6. liveness: the last node reading each value
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    for (int v : g.nodes[ni].in)
      if (v >= 0) g.values[v].last_use = static_cast<int>(ni);
    for (int v : g.nodes[ni].out) g.values[v].producer = static_cast<int>(ni);
  }
  for (int o : g.outputs) g.values[o].last_use = INT_MAX;
  return g;
}

// ------------------------------------------------------------------------------------------- planning
struct Plan {
  std::vector<int64_t> key;  // concatenated input shapes
  AlignedBytes arena;
  std::vector<size_t> offset, size;  // per dynamic allocation, in request order
  std::vector<std::shared_ptr<AlignedBytes>> statics;
  std::vector<std::pair<int, Buf>> static_vals;
  uint64_t last_used = 0;
};

struct ReplanNeeded {};

/// First run for a shape set: plain heap buffers, recording sizes and lifetimes.
class Recorder : public Allocator {
 public:
  Recorder(const Graph& g, Plan& plan) : g_(g), plan_(plan), root_(g.values.size(), -1) {}
  void* output(int value, size_t bytes, int node, bool is_static) override {
    if (is_static) {
      plan_.statics.push_back(std::make_shared<AlignedBytes>(std::max<size_t>(bytes, 1)));
      return plan_.statics.back()->data();
    }
    root_[value] = add(bytes, node, node);
    ends_.back() = std::max(node, g_.values[value].last_use);
    return temp_.back().data();
  }
  void* scratch(size_t bytes, int node, bool is_static) override {
    if (is_static) {  // static nodes do not run on replay: their scratch is not part of the plan
      static_scratch_.emplace_back(std::max<size_t>(bytes, 1));
      return static_scratch_.back().data();
    }
    add(bytes, node, node);
    return temp_.back().data();
  }
  void alias(int value, int src) override {
    const int r = root_[src];
    root_[value] = r;
    if (r >= 0) ends_[r] = std::max(ends_[r], g_.values[value].last_use);
  }
  /// Lays the allocations out in one arena: greedy by size, reusing space of allocations whose lifetimes
  /// do not overlap.
  void finish() {
    const size_t n = sizes_.size();
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes_[a] != sizes_[b] ? sizes_[a] > sizes_[b] : a < b; });
    plan_.offset.assign(n, 0);
    plan_.size = sizes_;
    std::vector<size_t> placed;
    size_t total = 0;
    for (size_t i : order) {
      std::vector<std::pair<size_t, size_t>> busy;
      for (size_t j : placed)
        if (starts_[j] <= ends_[i] && starts_[i] <= ends_[j]) busy.push_back({plan_.offset[j], plan_.offset[j] + round(sizes_[j])});
      std::sort(busy.begin(), busy.end());
      size_t off = 0;
      for (const auto& [b, e] : busy) {
        if (off + round(sizes_[i]) <= b) break;
        off = std::max(off, e);
      }
      plan_.offset[i] = off;
      total = std::max(total, off + round(sizes_[i]));
      placed.push_back(i);
    }
    plan_.arena.resize(std::max<size_t>(total, 64));
  }
  std::vector<AlignedBytes> takeTemp() { return std::move(temp_); }

 private:
  static size_t round(size_t b) { return (std::max<size_t>(b, 1) + 63) / 64 * 64; }
  int add(size_t bytes, int start, int end) {
    temp_.emplace_back(std::max<size_t>(bytes, 1));
    sizes_.push_back(bytes);
    starts_.push_back(start);
    ends_.push_back(end);
    return static_cast<int>(sizes_.size()) - 1;
  }
  const Graph& g_;
  Plan& plan_;
  std::vector<int> root_;
  std::vector<AlignedBytes> temp_, static_scratch_;
  std::vector<size_t> sizes_;
  std::vector<int> starts_, ends_;
};

/// Later runs: the same requests in the same order, served from the arena.
class Replayer : public Allocator {
 public:
  explicit Replayer(const Plan& p) : p_(p) {}
  void* output(int, size_t bytes, int, bool) override { return next(bytes); }
  void* scratch(size_t bytes, int, bool) override { return next(bytes); }
  void alias(int, int) override {}

 private:
  void* next(size_t bytes) {
    if (i_ >= p_.size.size() || p_.size[i_] != bytes) throw ReplanNeeded{};
    return static_cast<char*>(p_.arena.data()) + p_.offset[i_++];
  }
  const Plan& p_;
  size_t i_ = 0;
};

}  // namespace detail

// ------------------------------------------------------------------------------------------- Session
struct Session::Impl {
  detail::Graph g;
  SessionOptions opts;
  SessionInfo info;
  std::unique_ptr<detail::ThreadPool> pool;
  const detail::Kernels* k = nullptr;
  std::vector<detail::Buf> vals;
  std::vector<std::unique_ptr<detail::Plan>> plans;
  std::vector<detail::AlignedBytes> last_temp;  // buffers of the last recording run (its outputs point here)
  uint64_t tick = 0;
  std::vector<double> node_ms;
  std::vector<int64_t> node_calls;

  void execute(detail::Allocator& alloc, bool skip_static) {
    detail::RunEnv env{&g, vals.data(), &alloc, pool.get(), k, 0};
    if (opts.profile && node_ms.empty()) node_ms.assign(g.nodes.size(), 0), node_calls.assign(g.nodes.size(), 0);
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const detail::Node& n = g.nodes[i];
      if (skip_static && n.is_static) continue;
      env.node_index = static_cast<int>(i);
      detail::OpCtx c{env, n};
      if (!opts.profile) {
        n.fn(c);
        continue;
      }
      const auto t0 = std::chrono::steady_clock::now();
      n.fn(c);
      node_ms[i] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ++node_calls[i];
    }
  }
};

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

const std::vector<IoInfo>& Session::inputs() const { return impl_->g.input_info; }
const std::vector<IoInfo>& Session::outputs() const { return impl_->g.output_info; }
const SessionInfo& Session::info() const { return impl_->info; }

std::vector<OpProfile> Session::profile() const {
  std::map<std::string, OpProfile> by;
  for (size_t i = 0; i < impl_->node_ms.size(); ++i) {
    const detail::Node& n = impl_->g.nodes[i];
    std::string key = (n.domain.empty() ? "" : n.domain + ".") + n.op;
    if (n.packed) key += n.packed->kind == detail::PackedWeight::F32 ? " (packed f32)" : n.packed->kind == detail::PackedWeight::F16 ? " (packed f16)" : n.packed->kind == detail::PackedWeight::Q8 ? " (packed q8)" : " (packed q4)";
    OpProfile& p = by[key];
    p.op = key;
    p.calls += impl_->node_calls[i];
    p.ms += impl_->node_ms[i];
  }
  std::vector<OpProfile> v;
  for (auto& [k, p] : by) v.push_back(p);
  std::sort(v.begin(), v.end(), [](const OpProfile& a, const OpProfile& b) { return a.ms > b.ms; });
  return v;
}

Result<Session> Session::create(const std::string& path, const SessionOptions& options) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->opts = options;
    int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
    if (options.threads < 0) return Status{StatusCode::InvalidArgument, "threads must be >= 0 (0 = all cores)"};
    if (options.max_plans < 1) return Status{StatusCode::InvalidArgument, "max_plans must be >= 1"};
    impl->pool = std::make_unique<detail::ThreadPool>(std::max(threads, 1));
    impl->k = &detail::kernelsFor(options.use_simd);
    impl->info.isa = impl->k->isa;
    impl->info.threads = impl->pool->size();
    impl->g = detail::loadGraph(path, *impl->pool, *impl->k, impl->info);
    impl->vals.resize(impl->g.values.size());
    for (size_t i = 0; i < impl->g.values.size(); ++i)
      if (impl->g.values[i].is_const) impl->vals[i] = impl->g.values[i].constant;
    return Session(std::move(impl));
  } catch (const detail::Failure& e) {
    return Status{e.code, e.what()};
  } catch (const std::bad_alloc&) {
    return Status{StatusCode::Internal, path + ": out of memory while loading"};
  } catch (const std::exception& e) {
    return Status{StatusCode::Internal, path + ": " + e.what()};
  }
}

Status Session::run(const std::vector<std::pair<std::string, TensorView>>& inputs, std::vector<TensorView>& outputs) {
  Impl& m = *impl_;
  detail::Graph& g = m.g;
  try {
    // bind and check inputs (no allocation: names are compared in place)
    if (inputs.size() != g.inputs.size())
      return Status{StatusCode::InvalidArgument, "the model takes " + std::to_string(g.inputs.size()) + " input(s), got " + std::to_string(inputs.size())};
    size_t keyLen = 0;
    for (size_t i = 0; i < g.inputs.size(); ++i) {
      const IoInfo& io = g.input_info[i];
      const TensorView* tv = nullptr;
      for (const auto& [name, view] : inputs)
        if (name == io.name) tv = &view;
      if (!tv) return Status{StatusCode::InvalidArgument, "missing input '" + io.name + "'"};
      if (tv->dtype != io.dtype)
        return Status{StatusCode::InvalidArgument, "input '" + io.name + "' must be " + dtypeName(io.dtype) + ", got " + dtypeName(tv->dtype)};
      if (!io.shape.empty() || tv->shape.empty()) {
        if (tv->shape.size() != io.shape.size())
          return Status{StatusCode::InvalidArgument, "input '" + io.name + "' must have rank " + std::to_string(io.shape.size()) + ", got " + std::to_string(tv->shape.size())};
        for (size_t d = 0; d < io.shape.size(); ++d)
          if (io.shape[d] >= 0 && tv->shape[d] != io.shape[d])
            return Status{StatusCode::InvalidArgument, "input '" + io.name + "' dim " + std::to_string(d) + " must be " + std::to_string(io.shape[d]) + ", got " + std::to_string(tv->shape[d])};
      }
      if (tv->shape.size() > static_cast<size_t>(detail::kMaxRank))
        return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has rank above 8"};
      for (int64_t d : tv->shape)
        if (d < 0) return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has a negative dim"};
      if (tv->numel() > 0 && !tv->data) return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has no data"};
      detail::Buf& b = m.vals[g.inputs[i]];
      b.dt = tv->dtype;
      b.shape = detail::Shape();
      for (int64_t d : tv->shape) b.shape.push(d);
      b.data = const_cast<void*>(tv->data);
      keyLen += tv->shape.size() + 1;
    }
    // find the plan for these shapes
    detail::Plan* plan = nullptr;
    for (auto& p : m.plans) {
      if (p->key.size() != keyLen) continue;
      size_t j = 0;
      bool same = true;
      for (int in : g.inputs) {
        const detail::Shape& s = m.vals[in].shape;
        same &= p->key[j++] == s.rank;
        for (int d = 0; d < s.rank && same; ++d) same &= p->key[j++] == s[d];
        if (!same) break;
      }
      if (same) {
        plan = p.get();
        break;
      }
    }
    bool replayed = false;
    if (plan) {
      plan->last_used = ++m.tick;
      for (const auto& [v, b] : plan->static_vals) m.vals[v] = b;
      try {
        detail::Replayer r(*plan);
        m.execute(r, true);
        replayed = true;
      } catch (const detail::ReplanNeeded&) {  // data-dependent shapes: record again
        for (auto it = m.plans.begin(); it != m.plans.end(); ++it)
          if (it->get() == plan) {
            m.plans.erase(it);
            break;
          }
        plan = nullptr;
      }
    }
    if (!replayed) {
      auto p = std::make_unique<detail::Plan>();
      for (int in : g.inputs) {
        const detail::Shape& s = m.vals[in].shape;
        p->key.push_back(s.rank);
        for (int d = 0; d < s.rank; ++d) p->key.push_back(s[d]);
      }
      m.last_temp.clear();
      detail::Recorder rec(g, *p);
      m.execute(rec, false);
      rec.finish();
      for (size_t v = 0; v < g.values.size(); ++v)
        if (g.values[v].is_static) p->static_vals.push_back({static_cast<int>(v), m.vals[v]});
      m.last_temp = rec.takeTemp();
      p->last_used = ++m.tick;
      if (static_cast<int>(m.plans.size()) >= m.opts.max_plans) {
        auto lru = std::min_element(m.plans.begin(), m.plans.end(), [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
        m.plans.erase(lru);
      }
      m.plans.push_back(std::move(p));
    }
    outputs.resize(g.outputs.size());
    for (size_t i = 0; i < g.outputs.size(); ++i) {
      const detail::Buf& b = m.vals[g.outputs[i]];
      outputs[i].dtype = b.dt;
      outputs[i].shape.assign(b.shape.d, b.shape.d + b.shape.rank);
      outputs[i].data = b.data;
    }
    return Status::Ok();
  } catch (const detail::Failure& e) {
    return Status{e.code, e.what()};
  } catch (const std::bad_alloc&) {
    return Status{StatusCode::Internal, "out of memory while running"};
  } catch (const std::exception& e) {
    return Status{StatusCode::Internal, e.what()};
  }
}

Result<std::vector<Tensor>> Session::run(const std::vector<std::pair<std::string, TensorView>>& inputs) {
  std::vector<TensorView> views;
  Status st = run(inputs, views);
  if (!st.ok()) return st;
  std::vector<Tensor> out;
  for (const TensorView& v : views) {
    Tensor t;
    t.dtype = v.dtype;
    t.shape = v.shape;
    const auto* p = static_cast<const uint8_t*>(v.data);
    t.bytes.assign(p, p + v.bytes());
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace crt
