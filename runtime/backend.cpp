// backend.cpp — node placement for a device backend (which nodes, which copies, which constants to upload),
// the copy ops, and the emulated device (backend.h).
#include "runtime/backend.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "runtime/cuda/cuda_backend.h"
#include "runtime/fuse.h"
#include "runtime/kv_cache.h"
#include "runtime/op_table.h"

namespace crt::detail {

// ------------------------------------------------------------------------------------------- what may move
namespace {

bool isView(const Node& n) { return n.domain.empty() && opHas(n.op, op_trait::View); }

struct NamedKind {
  std::string_view name;
  DeviceOpKind kind;
};
constexpr bool kHalf = true;
// The ONNX ops: every one has float32 and float16 kernels (the fp16 export's activations; deviceOpOf marks them half).
constexpr NamedKind kDeviceOps[] = {
    {"Add", {DeviceOp::Binary, int(device::Binary::Add)}},      {"Sub", {DeviceOp::Binary, int(device::Binary::Sub)}},
    {"Mul", {DeviceOp::Binary, int(device::Binary::Mul)}},      {"Div", {DeviceOp::Binary, int(device::Binary::Div)}},
    {"Pow", {DeviceOp::Binary, int(device::Binary::Pow)}},      {"Max", {DeviceOp::Binary, int(device::Binary::Max)}},
    {"Min", {DeviceOp::Binary, int(device::Binary::Min)}},      {"Sqrt", {DeviceOp::Unary, int(device::Unary::Sqrt)}},
    {"Reciprocal", {DeviceOp::Unary, int(device::Unary::Reciprocal)}}, {"Neg", {DeviceOp::Unary, int(device::Unary::Neg)}},
    {"Exp", {DeviceOp::Unary, int(device::Unary::Exp)}},        {"Tanh", {DeviceOp::Unary, int(device::Unary::Tanh)}},
    {"Sigmoid", {DeviceOp::Unary, int(device::Unary::Sigmoid)}}, {"Relu", {DeviceOp::Unary, int(device::Unary::Relu)}},
    {"Erf", {DeviceOp::Unary, int(device::Unary::Erf)}},          {"Cos", {DeviceOp::Unary, int(device::Unary::Cos)}},
    {"Sin", {DeviceOp::Unary, int(device::Unary::Sin)}},          {"Gather", {DeviceOp::Gather, 0}},
    {"Cast", {DeviceOp::Cast, 0}},
    {"Softmax", {DeviceOp::Softmax, 0}},                        {"ReduceMean", {DeviceOp::ReduceMean, 0}},
    {"Transpose", {DeviceOp::Transpose, 0}},                    {"Slice", {DeviceOp::Slice, 0}},
    {"Concat", {DeviceOp::Concat, 0}},                          {"MatMul", {DeviceOp::BatchMatMul, 0}},
    {"Expand", {DeviceOp::Expand, 0}},                          {"LayerNormalization", {DeviceOp::LayerNorm, 0}},
    {"Split", {DeviceOp::Split, 0}},                            {"Where", {DeviceOp::Where, 0}},
};

// The load-time rewrites: float32 only (fuse.h fuses float32 chains; the fused attention takes float32), but the KV
// cache's products (an fp16 export's queries, keys, values and weights) and the last-row slice.
constexpr NamedKind kCrtDeviceOps[] = {
    {"RMSNorm", {DeviceOp::RMSNorm, 0}}, {"SiluMul", {DeviceOp::SiluMul, 0}}, {"Rope", {DeviceOp::Rope, 0}},
    {"ScaleMaskSoftmax", {DeviceOp::ScaleMaskSoftmax, 0}}, {"KvScores", {DeviceOp::KvScores, 0, kHalf}},
    {"KvValues", {DeviceOp::KvValues, 0, kHalf}}, {"KvAttention", {DeviceOp::KvAttention, 0}}, {"LastRow", {DeviceOp::LastRow, 0, kHalf}},
    {"Gelu", {DeviceOp::Gelu, 0}},               {"Elementwise", {DeviceOp::Elementwise, 0, kHalf}},
};

/// A Gather whose indices are a constant of one element (llama2.c's x[..., 0] and x[..., 1] of its rotary pairs): a
/// strided copy (op_geometry.h's gatherView). Per-run indices (an embedding's tokens) keep the Gather on the host,
/// where its table stays.
bool oneConstantIndex(const Graph& g, const Node& n) {
  if (n.in.size() < 2 || n.in[1] < 0) return false;
  const Value& idx = g.values[n.in[1]];
  return idx.is_const && idx.constant.numel() == 1;
}

}  // namespace

namespace {

/// The kind of ONNX op node n is for a device backend (None: it stays on the host).
DeviceOpKind onnxDeviceOp(const Graph& g, const Node& n) {
  for (const NamedKind& k : kDeviceOps) {
    if (n.op != k.name) continue;
    if (k.kind.op == DeviceOp::Softmax) {
      auto it = n.attrs.find("axis");
      const bool last = it != n.attrs.end() ? it->second.i == -1 : g.opset >= 13;
      return last ? k.kind : DeviceOpKind{};
    }
    if (k.kind.op == DeviceOp::ReduceMean) return isLastAxisMean(g, n) ? k.kind : DeviceOpKind{};
    if (k.kind.op == DeviceOp::Gather) return oneConstantIndex(g, n) ? k.kind : DeviceOpKind{};
    if (k.kind.op == DeviceOp::Binary && n.in.size() != 2) return {};  // (Max and Min take 1-8 inputs)
    if (k.kind.op == DeviceOp::Cast) {  // to float32, float16 or bool (OPT's padding mask)
      const auto to = static_cast<DType>(n.attrInt("to", 0));
      return to == DType::F32 || to == DType::F16 || to == DType::Bool ? DeviceOpKind{DeviceOp::Cast, int(to)} : DeviceOpKind{};
    }
    return k.kind;
  }
  return {};
}

}  // namespace

DeviceOpKind deviceOpOf(const Graph& g, const Node& n) {
  if (n.packed) {
    const PackedWeight& w = *n.packed;
    const bool plain = !n.act_quant && !w.sparse && !w.int8 && (n.in.size() == 1 || n.in[1] < 0);
    return plain ? DeviceOpKind{DeviceOp::MatMul, 0, kHalf} : DeviceOpKind{};
  }
  if (n.domain == "crt") {  // the load-time rewrites (fuse.h, kv_cache.h)
    for (const NamedKind& k : kCrtDeviceOps)
      if (n.op == k.name) return k.kind;
    return {};
  }
  if (!n.domain.empty()) return {};
  DeviceOpKind k = onnxDeviceOp(g, n);
  k.half = k.op != DeviceOp::None;
  return k;
}

bool readsShapeOnly(const Node& n) { return n.domain.empty() && opHas(n.op, op_trait::ShapeOnly); }

bool readsOnDevice(const Node& n, int input) {
  if (isView(n)) return input == 0;  // Reshape's shape, Unsqueeze's axes: host integers
  if (n.domain.empty() && (n.op == "ReduceMean" || n.op == "Slice" || n.op == "Expand" || n.op == "Split" || n.op == "Gather"))
    return input == 0;  // axes, bounds, shape, split sizes, the index
  return true;
}

// ------------------------------------------------------------------------------------------- weights
device::WeightView weightView(const PackedWeight& w, const void* bytes, const float* scale, const float* zp) {
  device::WeightView v;
  v.N = w.N, v.K = w.K, v.block = w.block, v.nblk = w.nblk, v.P = w.P;
  switch (w.kind) {
    case PackedWeight::F32: v.kind = device::WeightView::F32; break;
    case PackedWeight::F16: v.kind = device::WeightView::F16; break;
    case PackedWeight::Q8: v.kind = device::WeightView::Q8; break;
    case PackedWeight::Q4: v.kind = device::WeightView::Q4; break;
    case PackedWeight::Q8P:
    case PackedWeight::Q4P:
    case PackedWeight::F16P: fail(StatusCode::Internal, "a panel-ordered weight reached the device");  // (choosePanelForms skips device sessions)
  }
  if (w.kind == PackedWeight::Q8 || w.kind == PackedWeight::Q4) v.row_bytes = w.rowBytes();
  v.w = static_cast<const uint8_t*>(bytes);
  v.scale = scale;
  v.zp = zp;
  return v;
}

std::vector<float> panelsToRows(const PackedWeight& w) {
  std::vector<float> rows(static_cast<size_t>(w.N * w.K));
  const float* panels = static_cast<const float*>(w.w.data());
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k) rows[n * w.K + k] = panels[(n / kPanel) * w.K * kPanel + k * kPanel + n % kPanel];
  return rows;
}

// ------------------------------------------------------------------------------------------- copies
void opCopyToDevice(OpCtx& c) {
  const Buf& x = c.in(0);
  void* y = c.out(0, x.dt, x.shape);
  if (x.bytes() > 0) c.env.g->device->upload(y, x.data, x.bytes());
}

void opCopyToHost(OpCtx& c) {
  const Buf& x = c.in(0);
  void* y = c.out(0, x.dt, x.shape);
  if (x.bytes() > 0) c.env.g->device->download(y, x.data, x.bytes());
}

// ------------------------------------------------------------------------------------------- placement
/// Each value's element type where it is known at load (0 where not): constants and inputs; Cast's target; bool for
/// comparisons (op_table.def's BoolOut); Where's second input's type; every op that keeps its input's type (op_table.def:
/// all but the OwnType ops; the load-time fusions, the KV-cache ops and the last-row slice) input 0's. A MatMul on a
/// packed weight keeps its activation's type.
std::vector<int> knownTypes(const Graph& g) {
  std::vector<int> t(g.values.size(), 0);
  for (size_t v = 0; v < g.values.size(); ++v)
    if (g.values[v].is_const) t[v] = static_cast<int>(g.values[v].constant.dt);
  for (size_t i = 0; i < g.inputs.size() && i < g.input_info.size(); ++i) t[g.inputs[i]] = static_cast<int>(g.input_info[i].dtype);
  const auto of = [&](const Node& n, size_t i) { return i < n.in.size() && n.in[i] >= 0 ? t[n.in[i]] : 0; };
  for (const Node& n : g.nodes) {
    const OpInfo* info = findOpInfo(n.domain, n.op);
    int out = 0;
    if (isElementwise(n)) out = static_cast<int>(n.attrInt("type", 0));
    else if (info && n.domain.empty() && n.op == "Cast") out = static_cast<int>(n.attrInt("to", 0));
    else if (info && info->has(op_trait::BoolOut)) out = static_cast<int>(DType::Bool);
    else if (info && n.domain.empty() && n.op == "Where") out = of(n, 1) == of(n, 2) ? of(n, 1) : 0;
    else if ((info && !info->has(op_trait::OwnType)) || fusedKeepsType(n) || isKvAttention(n) || isLastRow(n)) out = of(n, 0);
    for (size_t o = 0; o < n.out.size(); ++o) t[n.out[o]] = o == 0 || (info && info->outputs == -1) ? out : 0;  // (Split: all)
  }
  return t;
}

std::vector<char> knownFloat32(const Graph& g) {
  const std::vector<int> t = knownTypes(g);
  std::vector<char> f32(t.size());
  for (size_t v = 0; v < t.size(); ++v) f32[v] = t[v] == static_cast<int>(DType::F32);
  return f32;
}

namespace {

/// Whether a device kernel takes `n`'s data inputs as their types are known at load: all of one float type, float32,
/// or float16 where the op has float16 kernels (DeviceOpKind::half; a View follows either), each either for
/// crt.Elementwise; Where's condition bool.
/// An input whose shape is set per run (an in-session KV cache view) stays on the host.
bool takesInputTypes(const Graph& g, const Node& n, bool half, const std::vector<int>& types) {
  const bool mixed = isElementwise(n);  // (each input float32 or float16)
  int data = 0;
  for (size_t k = 0; k < n.in.size(); ++k) {
    const int v = n.in[k];
    if (v < 0 || !readsOnDevice(n, static_cast<int>(k))) continue;
    if (g.values[v].per_run_shape) return false;  // (a static input is copied once per plan)
    if (k == 0 && n.domain.empty() && n.op == "Where") {
      if (types[v] != static_cast<int>(DType::Bool)) return false;
      continue;
    }
    if (data == 0 || mixed) data = types[v];
    if (types[v] != data || (mixed && data != static_cast<int>(DType::F32) && data != static_cast<int>(DType::F16))) return false;
  }
  return data == static_cast<int>(DType::F32) || (half && data == static_cast<int>(DType::F16));
}

/// The device kernel of each node that may run there, null for the rest: the backend has its kernel, its data inputs
/// are known to have types its kernel takes (takesInputTypes) and it is not static; a View op follows its data input
/// (a null kernel and a mark in `view`).
std::vector<OpFn> deviceCandidates(const Graph& g, Backend& b, std::vector<char>& view) {
  const std::vector<int> types = knownTypes(g);
  std::vector<char> onDevice(g.values.size(), 0);
  std::vector<OpFn> fn(g.nodes.size(), nullptr);
  view.assign(g.nodes.size(), 0);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    // (load-time rewrites name their nodes in the crt domain: deviceOpOf takes the fusions and the in-session KV
    // cache's attention among them)
    const bool ok = !n.is_static && !n.out.empty() && takesInputTypes(g, n, isView(n) || deviceOpOf(g, n).half, types);
    if (ok && isView(n)) view[i] = onDevice[n.in[0]];
    else if (ok) fn[i] = b.kernelFor(g, n);
    for (int o : n.out) onDevice[o] = fn[i] != nullptr || view[i];
  }
  return fn;
}

/// Islands of the device's candidates (nodes joined by the values one hands another on the device) that do no heavy
/// work (no MatMul on a weight or between activations, no KV-cache attention) and whose results are read on the host
/// only (none is a graph output) stay on the host: their data comes from the host and goes back to it, so on the
/// device they cost a copy per crossing value and save nothing. Examples: GPT-NeoX's positions (a Slice between the
/// host's Range and Einsum), the float32 RMSNorm islands between an fp16 export's Casts (44 copies per run on
/// stories260K before). An island with a graph output stays where the user asked.
void keepLightIslandsOnHost(const Graph& g, std::vector<OpFn>& fn, const std::vector<char>& view) {
  const int n = static_cast<int>(g.nodes.size());
  std::vector<int> parent(n);
  for (int i = 0; i < n; ++i) parent[i] = i;
  const auto root = [&](int i) {  // (iterative, with path halving: a crafted graph's chain may be long)
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  const auto onDevice = [&](int i) { return fn[i] != nullptr || view[i]; };
  std::vector<int> producer(g.values.size(), -1);
  for (int i = 0; i < n; ++i)
    for (int o : g.nodes[i].out) producer[o] = i;
  for (int i = 0; i < n; ++i) {
    if (!onDevice(i)) continue;
    for (size_t k = 0; k < g.nodes[i].in.size(); ++k) {
      const int v = g.nodes[i].in[k];
      if (v < 0 || !readsOnDevice(g.nodes[i], static_cast<int>(k)) || producer[v] < 0 || !onDevice(producer[v])) continue;
      parent[root(i)] = root(producer[v]);
    }
  }
  std::vector<char> keep(n, 0);  // per island root: stays on the device
  for (int i = 0; i < n; ++i) {
    if (!onDevice(i)) continue;
    const Node& nd = g.nodes[i];
    bool heavy = nd.packed || isKvAttention(nd) || (fn[i] && deviceOpOf(g, nd).op == DeviceOp::BatchMatMul);
    for (int o : nd.out)
      heavy = heavy || std::find(g.outputs.begin(), g.outputs.end(), o) != g.outputs.end();
    if (heavy) keep[root(i)] = 1;
  }
  for (int i = 0; i < n; ++i)
    if (onDevice(i) && !keep[root(i)]) fn[i] = nullptr;  // (views follow their input at assignment)
}

/// Decides each node's side (deviceCandidates, less keepLightIslandsOnHost) and prepares the device's nodes: the device
/// kernel, the packed weight's upload, an attention op's cache entry moved to device memory. View ops follow their
/// data input.
int assignNodes(Graph& g, Backend& b) {
  std::vector<char> view;
  std::vector<OpFn> fn = deviceCandidates(g, b, view);
  keepLightIslandsOnHost(g, fn, view);
  std::vector<char> onDevice(g.values.size(), 0);
  int assigned = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& n = g.nodes[i];
    if (view[i]) {
      n.on_device = onDevice[n.in[0]] != 0;
    } else if (fn[i]) {
      n.on_device = true;
      n.device_code = deviceOpOf(g, n).code;
      n.fn = fn[i];
      b.prepare(n);
      if (isKvAttention(n)) kvEntryToDevice(g, n);
    }
    for (int o : n.out) onDevice[o] = n.on_device;
    assigned += n.on_device;
  }
  return assigned;
}

int newValue(Graph& g, const Value& like, const std::string& suffix, bool onDevice) {
  Value v;
  v.name = like.name + suffix;
  v.on_device = onDevice;
  g.values.push_back(v);
  return static_cast<int>(g.values.size()) - 1;
}

Node copyNode(int from, int to, bool toDevice, const std::string& name) {
  Node c;
  c.domain = "crt";
  c.op = toDevice ? "CopyToDevice" : "CopyToHost";
  c.name = name;
  c.in = {from};
  c.out = {to};
  c.fn = toDevice ? opCopyToDevice : opCopyToHost;
  c.on_device = toDevice;  // where its output lives
  return c;
}

/// A constant a device node reads, uploaded once at load.
int uploadConstant(Graph& g, int v) {
  const Buf host = g.values[v].constant;
  const size_t bytes = host.bytes();
  std::shared_ptr<Backend> b = g.device;
  std::shared_ptr<void> mem(b->alloc(std::max<size_t>(bytes, 1)), [b](void* p) { b->release(p); });
  if (bytes > 0) b->upload(mem.get(), host.data, bytes);
  g.device_constants.push_back(mem);
  const int d = newValue(g, g.values[v], "@device", true);
  Value& dv = g.values[d];
  dv.is_const = true;
  dv.constant = host;
  dv.constant.data = mem.get();
  return d;
}

/// Rewires every input that sits on the wrong side through a copy (one per value and side; a Shape reads the shape
/// its value has on either side, so it needs none) and moves device outputs of the graph back to the host under their
/// own names. Returns the copies inserted.
int insertCopies(Graph& g) {
  const size_t nv = g.values.size();
  std::vector<int> there(nv, -1);  // the value's copy on the other side
  std::vector<Node> out;
  out.reserve(g.nodes.size() * 2);
  int copies = 0;
  for (Node& n : g.nodes) {
    for (int o : n.out) g.values[o].on_device = n.on_device;
    for (size_t i = 0; i < n.in.size(); ++i) {
      const int v = n.in[i];
      if (v < 0) continue;
      const bool want = n.on_device && readsOnDevice(n, static_cast<int>(i));
      if (g.values[v].on_device == want || readsShapeOnly(n)) continue;
      if (there[v] < 0) {
        if (g.values[v].is_const && want) {
          there[v] = uploadConstant(g, v);
        } else {
          there[v] = newValue(g, g.values[v], want ? "@device" : "@host", want);
          out.push_back(copyNode(v, there[v], want, g.values[v].name + (want ? " to device" : " to host")));
          ++copies;
        }
      }
      n.in[i] = there[v];
    }
    out.push_back(std::move(n));
  }
  // Graph outputs made on the device: the device value is renamed, the output keeps its id and name.
  for (int& o : g.outputs) {
    if (!g.values[o].on_device) continue;
    const int d = newValue(g, g.values[o], "@device", true);
    for (Node& n : out) {
      for (int& v : n.out) v = v == o ? d : v;
      for (int& v : n.in) v = v == o ? d : v;
    }
    g.values[o].on_device = false;
    out.push_back(copyNode(d, o, false, g.values[o].name + " to host"));
    ++copies;
  }
  g.nodes = std::move(out);
  return copies;
}

// ------------------------------------------------------------------------------------------- emulated device
/// Host memory in buffers of its own, the CPU kernels, memcpy for copies: every line of the boundary
/// (placement, copies, device plans, uploaded constants) runs, and results are bit-identical to the CPU's.
/// It takes the ops the CUDA backend takes (deviceOpOf), so tests place nodes as a GPU session would. Its
/// buffers are AlignedBytes, so allocationCount() counts them as it counts the host's.
class EmulatedBackend final : public Backend {
 public:
  const char* name() const override { return "emulated"; }
  void* alloc(size_t bytes) override {
    auto b = std::make_unique<AlignedBytes>(std::max<size_t>(bytes, 1));
    void* p = b->data();
    blocks_.emplace(p, std::move(b));
    return p;
  }
  void release(void* p) noexcept override { blocks_.erase(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  OpFn kernelFor(const Graph& g, const Node& n) override { return deviceOpOf(g, n).op != DeviceOp::None ? n.fn : nullptr; }
  void prepare(Node&) override {}
  int64_t liveAllocations() const override { return static_cast<int64_t>(blocks_.size()); }

 private:
  std::unordered_map<void*, std::unique_ptr<AlignedBytes>> blocks_;
};

}  // namespace

int placeNodes(Graph& g) {
  if (!g.device) return 0;
  const int assigned = assignNodes(g, *g.device);
  if (assigned > 0) insertCopies(g);
  return assigned;
}

std::shared_ptr<Backend> makeBackend(Device d, int index) {
  switch (d) {
    case Device::Cpu: return nullptr;
    case Device::Emulated: return std::make_shared<EmulatedBackend>();
    case Device::Cuda: return makeCudaBackend(true, index);
    case Device::Auto: return makeCudaBackend(false, index);
  }
  return nullptr;
}

}  // namespace crt::detail
