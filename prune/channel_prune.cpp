// channel_prune.cpp — channel pruning with dependency groups. A Tracer walks the graph once in
// topological order, giving every output channel of a conv or linear layer an id and following the ids
// through the ops that keep channels apart (elementwise ops, pooling, normalizations, depthwise convs,
// concatenation, flattening and transposes), recording every tensor that must be sliced with them.
// Channels that meet in an elementwise op (a residual add, a squeeze-excitation multiply) are merged by
// union-find; what it cannot follow freezes the channels it reads. Importance is the activation-weighted
// norm of the reading layers' input columns ‖x_c‖₂·‖W[:, c]‖₂ (the structured-prune score) or a
// weight-magnitude score, each tensor's contribution normalized by its mean so layers of different sizes
// weigh alike; every group loses the same fraction of its lowest-scored channels.
// Changes: the shapes of every sliced weight, bias, normalization parameter and constant; depthwise convs'
// `group`; value shapes (re-inferred). Keeps: topology (no nodes are added or removed).
#include "prune/channel_prune.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "prune/sparsity.h"
#include "runtime/op_table.h"

namespace compress {

namespace {

struct UnionFind {
  std::vector<int> parent;
  int make() {
    parent.push_back(static_cast<int>(parent.size()));
    return parent.back();
  }
  int find(int x) {
    while (parent[static_cast<size_t>(x)] != x) x = parent[static_cast<size_t>(x)] = parent[static_cast<size_t>(parent[static_cast<size_t>(x)])];
    return x;
  }
  void unite(int a, int b) {
    a = find(a), b = find(b);
    if (a != b) parent[static_cast<size_t>(std::max(a, b))] = std::min(a, b);
  }
};

/// The traced channels of a value: which axis holds them and the slot id of each index along it.
struct Chan {
  int64_t axis = 0;
  std::vector<int> slot;
};

class Tracer {
 public:
  explicit Tracer(const Graph& g) : g_(g) {
    for (const auto& l : findLinears(g)) linear_.emplace(l.node, l);
  }

  ChannelAnalysis trace(const std::set<std::string>& selected);

 private:
  const Graph& g_;
  mutable UnionFind uf_;  // find() compresses paths
  std::map<std::string, Chan> chan_;
  std::map<int, LinearRef> linear_;
  std::vector<int> origin_;                                 // slot -> node that created it
  std::vector<std::pair<int, std::string>> frozen_;         // slot, why
  std::map<std::pair<std::string, int64_t>, size_t> slice_of_;
  std::vector<ChannelSlice> slices_;
  std::map<std::string, std::set<int>> readers_;            // sliced tensor -> nodes that account for it
  std::vector<std::pair<int, std::vector<int>>> depthwise_;
  std::vector<ShapeConst> shape_consts_;

  const Chan* chanOf(const std::string& v) const {
    auto it = chan_.find(v);
    return it == chan_.end() ? nullptr : &it->second;
  }
  int64_t rankOf(const std::string& v) const {
    if (g_.isInitializer(v)) return g_.initializers.at(v).dim();
    auto it = g_.values.find(v);
    if (it != g_.values.end() && it->second.shape) return static_cast<int64_t>(it->second.shape->size());
    // The executor computes some values inside a fused op (Sigmoid of SiLU) and never records their shape.
    const int p = g_.producer(v);
    if (p >= 0 && crt::opHas(g_.nodes[static_cast<size_t>(p)].op, crt::op_trait::Unary)) return rankOf(g_.nodes[static_cast<size_t>(p)].inputs[0]);
    return -1;
  }
  const Shape* shapeOf(const std::string& v) const {
    auto it = g_.values.find(v);
    return it == g_.values.end() || !it->second.shape ? nullptr : &*it->second.shape;
  }
  /// Fixed size of `v` along `axis`, or -1.
  int64_t sizeAt(const std::string& v, int64_t axis) const {
    if (g_.isInitializer(v)) return g_.initializers.at(v).size(axis);
    const Shape* s = shapeOf(v);
    return s && axis < static_cast<int64_t>(s->size()) && (*s)[static_cast<size_t>(axis)].isFixed() ? (*s)[static_cast<size_t>(axis)].value : -1;
  }
  std::optional<std::vector<int64_t>> constInts(const std::string& v) const {
    if (v.empty() || !g_.isInitializer(v)) return std::nullopt;
    at::Tensor t = g_.initializers.at(v).to(at::kLong).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }
  std::string where(const Node& n) const { return n.op + " node '" + n.name + "'" + (n.source.empty() ? "" : " (" + n.source + ")"); }

  std::vector<int> fresh(int64_t n, int node) {
    std::vector<int> s;
    for (int64_t i = 0; i < n; ++i) {
      s.push_back(uf_.make());
      origin_.push_back(node);
    }
    return s;
  }
  void freeze(const std::vector<int>& slots, const std::string& why) {
    for (int s : slots) frozen_.emplace_back(s, why);
  }
  void freezeInputs(const Node& n, const std::string& why) {
    for (const auto& in : n.inputs)
      if (const Chan* c = chanOf(in)) freeze(c->slot, why);
  }
  void setOut(const Node& n, Chan c, size_t k = 0) { chan_[n.outputs[k]] = std::move(c); }
  void passThrough(const Node& n, const Chan& c) {
    for (size_t k = 0; k < n.outputs.size(); ++k) setOut(n, c, k);
  }
  /// Records that `tensor` is sliced along `axis` with channels `cls` (read by `node`). A tensor recorded
  /// twice along one axis ties the two channel sets together.
  void addSlice(const std::string& tensor, int64_t axis, const std::vector<int>& cls, ChannelRole role, int node,
                int reader = -1, int64_t reader_axis = -1) {
    readers_[tensor].insert(node);
    auto key = std::make_pair(tensor, axis);
    auto it = slice_of_.find(key);
    if (it != slice_of_.end()) {
      ChannelSlice& s = slices_[it->second];
      for (size_t i = 0; i < cls.size() && i < s.cls.size(); ++i) uf_.unite(s.cls[i], cls[i]);
      return;
    }
    slice_of_.emplace(key, slices_.size());
    slices_.push_back({tensor, axis, cls, role, reader, reader_axis});
  }

  void visit(int i);
  void conv(int i);
  void convTranspose(int i);
  void linear(int i, const LinearRef& l);
  void normalization(int i, size_t first_param, size_t last_param);
  void layerNorm(int i);
  void elementwise(int i);
  void concat(int i);
  std::optional<Chan> viewed(int i) const;
  void view(int i);
  void reshape(int i);
  void transpose(int i);
  void reduce(int i);
  void axisKept(int i, const std::vector<int64_t>& axes, const std::string& what);
  void checkReaders();
  ChannelAnalysis collect(const std::set<std::string>& selected);
};

void Tracer::conv(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (n.inputs.size() < 2 || !g_.isInitializer(n.inputs[1]) || (n.inputs.size() > 2 && !n.inputs[2].empty() && !g_.isInitializer(n.inputs[2]))) {
    if (x) freeze(x->slot, "read by " + where(n) + " whose weight is not a float initializer");
    return;
  }
  const std::string& w = n.inputs[1];
  const std::string b = n.inputs.size() > 2 ? n.inputs[2] : "";
  const at::Tensor& W = g_.initializers.at(w);
  const int64_t groups = n.attrInt("group", 1), cout = W.size(0), cin = W.size(1) * groups;
  if (groups == 1) {
    if (x) addSlice(w, 1, x->slot, ChannelRole::Weight, i, i, x->axis);
    Chan out{1, fresh(cout, i)};
    addSlice(w, 0, out.slot, ChannelRole::Weight, i);
    if (!b.empty()) addSlice(b, 0, out.slot, ChannelRole::Other, i);
    setOut(n, out);
  } else if (x && groups == cin && cout == cin && x->axis == 1) {  // depthwise: channel c in, channel c out
    addSlice(w, 0, x->slot, ChannelRole::Weight, i);
    if (!b.empty()) addSlice(b, 0, x->slot, ChannelRole::Other, i);
    depthwise_.emplace_back(i, x->slot);
    setOut(n, *x);
  } else if (x && x->axis == 1 && cin == static_cast<int64_t>(x->slot.size()) && cout % groups == 0) {
    // A grouped conv: every group must keep as many inputs and outputs as the others, so input l of each
    // group is one channel (they go together), and so is output m of each group.
    const int64_t cin_g = W.size(1), cout_g = cout / groups;
    for (int64_t j = 1; j < groups; ++j)
      for (int64_t l = 0; l < cin_g; ++l) uf_.unite(x->slot[static_cast<size_t>(l)], x->slot[static_cast<size_t>(j * cin_g + l)]);
    addSlice(w, 1, std::vector<int>(x->slot.begin(), x->slot.begin() + cin_g), ChannelRole::Weight, i);
    Chan out{1, fresh(cout, i)};
    for (int64_t j = 1; j < groups; ++j)
      for (int64_t m = 0; m < cout_g; ++m) uf_.unite(out.slot[static_cast<size_t>(m)], out.slot[static_cast<size_t>(j * cout_g + m)]);
    addSlice(w, 0, out.slot, ChannelRole::Weight, i);
    if (!b.empty()) addSlice(b, 0, out.slot, ChannelRole::Other, i);
    setOut(n, out);
  } else if (x) {
    freeze(x->slot, "read by " + where(n) + ", a grouped conv (group " + std::to_string(groups) + ") on untraced channels");
  }
}

void Tracer::convTranspose(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  const bool plain = n.inputs.size() >= 2 && g_.isInitializer(n.inputs[1]) && n.attrInt("group", 1) == 1 &&
                     (n.inputs.size() < 3 || n.inputs[2].empty() || g_.isInitializer(n.inputs[2]));
  if (!plain) {
    if (x) freeze(x->slot, "read by " + where(n) + " (grouped or with a computed weight)");
    return;
  }
  const std::string& w = n.inputs[1];  // [in, out, k...]
  if (x) addSlice(w, 0, x->slot, ChannelRole::Weight, i, i, x->axis);
  Chan out{1, fresh(g_.initializers.at(w).size(1), i)};
  addSlice(w, 1, out.slot, ChannelRole::Weight, i);
  if (n.inputs.size() > 2 && !n.inputs[2].empty()) addSlice(n.inputs[2], 0, out.slot, ChannelRole::Other, i);
  setOut(n, out);
}

void Tracer::linear(int i, const LinearRef& l) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const at::Tensor& W = g_.initializers.at(l.weight);
  const int64_t in_axis = l.transposed ? 1 : 0, out_axis = l.transposed ? 0 : 1;
  const int wt = g_.producer(n.inputs[1]);  // the Transpose reading the weight, when stored [out, in]
  if (const Chan* x = chanOf(n.inputs[0])) {
    const int64_t r = rankOf(n.inputs[0]);
    if (x->axis == r - 1) addSlice(l.weight, in_axis, x->slot, ChannelRole::Weight, i, i, x->axis);
    else freeze(x->slot, "read by " + where(n) + " along an axis other than its features");
  }
  Chan out{rankOf(n.outputs[0]) - 1, fresh(W.size(out_axis), i)};
  addSlice(l.weight, out_axis, out.slot, ChannelRole::Weight, i);
  if (wt >= 0) readers_[l.weight].insert(wt);
  setOut(n, out);
}

void Tracer::normalization(int i, size_t first_param, size_t last_param) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  if (x->axis != 1) return freeze(x->slot, "read by " + where(n) + " along an axis other than 1");
  for (size_t k = first_param; k <= last_param && k < n.inputs.size(); ++k) {
    const std::string& p = n.inputs[k];
    if (p.empty()) continue;
    if (!g_.isInitializer(p)) return freeze(x->slot, "read by " + where(n) + " with computed parameters");
    addSlice(p, 0, x->slot, k == first_param ? ChannelRole::Weight : ChannelRole::Other, i);
  }
  setOut(n, *x);
}

void Tracer::layerNorm(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  const int64_t r = rankOf(n.inputs[0]);
  int64_t axis = n.attrInt("axis", -1);
  if (axis < 0) axis += r;
  if (x->axis < axis) return setOut(n, *x);  // normalizes within each channel
  if (x->axis != r - 1 || axis != r - 1) return freeze(x->slot, "normalized together with other axes by " + where(n));
  for (size_t k = 1; k < n.inputs.size(); ++k) {
    if (n.inputs[k].empty()) continue;
    if (!g_.isInitializer(n.inputs[k])) return freeze(x->slot, "read by " + where(n) + " with computed parameters");
    addSlice(n.inputs[k], 0, x->slot, k == 1 ? ChannelRole::Weight : ChannelRole::Other, i);
  }
  setOut(n, *x);
}

void Tracer::elementwise(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  int64_t R = 0;  // broadcasting: the output has the largest input rank
  for (const auto& in : n.inputs)
    if (!in.empty()) R = rankOf(in) < 0 || R < 0 ? -1 : std::max(R, rankOf(in));
  if (R < 0) return freezeInputs(n, "read by " + where(n) + " with an input of unknown rank");
  const Chan* first = nullptr;
  int64_t axis = -1;
  for (const auto& in : n.inputs) {
    const Chan* c = chanOf(in);
    if (!c) continue;
    const int64_t a = c->axis + R - rankOf(in);
    if (!first) first = c, axis = a;
    else if (a != axis || c->slot.size() != first->slot.size())
      return freezeInputs(n, "combined on different axes by " + where(n));
  }
  if (!first) return;
  const std::vector<int> slots = first->slot;
  for (const auto& in : n.inputs) {
    if (in.empty()) continue;
    if (const Chan* c = chanOf(in)) {
      for (size_t j = 0; j < slots.size(); ++j) uf_.unite(slots[j], c->slot[j]);
      continue;
    }
    const int64_t r = rankOf(in), a = axis - (R - r);
    if (r >= 0 && a < 0) continue;  // broadcast from below the channel axis
    const int64_t s = r < 0 ? -1 : sizeAt(in, a);
    if (s == 1) continue;
    if (s == static_cast<int64_t>(slots.size()) && g_.isInitializer(in)) addSlice(in, a, slots, ChannelRole::Other, i);
    else return freezeInputs(n, "combined by " + where(n) + " with '" + in + "', whose channels are not traced");
  }
  setOut(n, {axis, slots});
}

void Tracer::concat(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const int64_t R = rankOf(n.outputs[0]);
  int64_t axis = n.attrInt("axis", 0);
  if (axis < 0) axis += R;
  bool any = false, along = true;
  for (const auto& in : n.inputs)
    if (const Chan* c = chanOf(in)) any = true, along = along && c->axis == axis;
  if (!any) return;
  if (!along) return elementwise(i);  // concatenated along another axis: channels must agree, as in an add
  Chan out{axis, {}};
  for (const auto& in : n.inputs) {
    if (const Chan* c = chanOf(in)) {
      out.slot.insert(out.slot.end(), c->slot.begin(), c->slot.end());
      continue;
    }
    const int64_t s = sizeAt(in, axis);
    if (s < 0) return freezeInputs(n, "concatenated by " + where(n) + " with '" + in + "' of unknown size");
    std::vector<int> f = fresh(s, -1);  // no layer's: frozen, in no group
    freeze(f, "not produced by a traced layer");
    out.slot.insert(out.slot.end(), f.begin(), f.end());
  }
  setOut(n, out);
}

// Reshape, Flatten, Squeeze, Unsqueeze: the channel axis survives as its own axis k (size-1 dims come and
// go, the dims before it keep their product) or is flattened with fixed trailing dims into the last axis
// (`inner` entries per channel). Returns the output's channels, or nothing when the view mixes channels.
std::optional<Chan> Tracer::viewed(int i) const {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  const Shape* in = shapeOf(n.inputs[0]);
  const Shape* out = shapeOf(n.outputs[0]);
  if (!x || !in || !out) return std::nullopt;
  const auto before = dimsKey(*in, static_cast<size_t>(x->axis));
  const int64_t C = static_cast<int64_t>(x->slot.size());
  int64_t inner = 1;
  bool fixed_tail = true;
  for (size_t k = static_cast<size_t>(x->axis) + 1; k < in->size(); ++k) {
    if ((*in)[k].isFixed()) inner *= (*in)[k].value;
    else fixed_tail = false;
  }
  for (size_t k = 0; k < out->size(); ++k) {
    if (dimsKey(*out, k) != before || !(*out)[k].isFixed()) continue;
    if ((*out)[k].value == C) return Chan{static_cast<int64_t>(k), x->slot};
    if (fixed_tail && (*out)[k].value == C * inner && k + 1 == out->size()) {
      Chan c{static_cast<int64_t>(k), {}};
      for (int64_t j = 0; j < C * inner; ++j) c.slot.push_back(x->slot[static_cast<size_t>(j / inner)]);
      return c;
    }
  }
  return std::nullopt;
}

void Tracer::view(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  if (auto c = viewed(i)) return setOut(n, *c);
  freeze(x->slot, "reshaped by " + where(n) + " in a way that mixes channels");
}

// A Reshape keeps its channels when its target shape follows them: the channel element is -1, copied from
// a tensor with the same channels, or a constant (rewritten when channels go); no other element reads a
// traced channel axis.
void Tracer::reshape(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  const std::string why = "reshaped by " + where(n);
  auto out = viewed(i);
  if (!out) return freeze(x->slot, why + " in a way that mixes channels");
  auto src = traceShapeVector(g_, n.inputs[1], i, 1);
  if (!src || src->size() != static_cast<size_t>(rankOf(n.outputs[0]))) return freeze(x->slot, why + " to a computed shape");
  auto sameChannels = [&](const std::string& t, int64_t axis) {
    const Chan* c = chanOf(t);
    if (!c || c->axis != axis || c->slot.size() != out->slot.size()) return false;
    for (size_t j = 0; j < c->slot.size(); ++j)
      if (uf_.find(c->slot[j]) != uf_.find(out->slot[j])) return false;
    return true;
  };
  std::vector<ShapeConst> fixes;
  for (size_t j = 0; j < src->size(); ++j) {
    const ShapeSource& e = (*src)[j];
    if (static_cast<int64_t>(j) != out->axis) {
      const Chan* c = e.kind == ShapeSource::Dim ? chanOf(e.tensor) : nullptr;
      if (e.kind == ShapeSource::Unknown || (c && c->axis == e.axis)) return freeze(x->slot, why + " to a shape that depends on channels");
      continue;
    }
    const bool ok = (e.kind == ShapeSource::Const && (e.value == -1 || e.value == static_cast<int64_t>(out->slot.size()) ||
                                                    (e.value == 0 && x->axis == out->axis && x->slot.size() == out->slot.size()))) ||
                    (e.kind == ShapeSource::Dim && sameChannels(e.tensor, e.axis));
    if (!ok) return freeze(x->slot, why + " to a shape whose channel size does not follow the channels");
    if (e.kind == ShapeSource::Const && e.value > 0 && e.node < 0) return freeze(x->slot, why + " to a channel size computed from constants");
    if (e.kind == ShapeSource::Const && e.value > 0) fixes.push_back({e.node, e.input, e.index, out->slot});
  }
  shape_consts_.insert(shape_consts_.end(), fixes.begin(), fixes.end());
  setOut(n, *out);
}

void Tracer::transpose(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  std::vector<int64_t> perm = n.attrInts("perm");
  const int64_t r = rankOf(n.inputs[0]);
  if (perm.empty())
    for (int64_t k = r - 1; k >= 0; --k) perm.push_back(k);
  for (size_t k = 0; k < perm.size(); ++k)
    if (perm[k] == x->axis) return setOut(n, {static_cast<int64_t>(k), x->slot});
  freeze(x->slot, "read by " + where(n));
}

void Tracer::reduce(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  const int64_t r = rankOf(n.inputs[0]);
  std::vector<int64_t> axes = n.attrInts("axes");
  if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
    auto c = constInts(n.inputs[1]);
    if (!c) return freeze(x->slot, "reduced by " + where(n) + " over computed axes");
    axes = *c;
  }
  if (axes.empty()) return freeze(x->slot, "reduced over every axis by " + where(n));
  int64_t pos = x->axis;
  for (int64_t& a : axes) {
    if (a < 0) a += r;
    if (a == x->axis) return freeze(x->slot, "reduced over its channels by " + where(n));
  }
  if (n.attrInt("keepdims", 1) == 0)
    for (int64_t a : axes) pos -= a < x->axis ? 1 : 0;
  setOut(n, {pos, x->slot});
}

// Slice, Pad, Split, Resize: channels pass through when the op leaves the channel axis alone.
void Tracer::axisKept(int i, const std::vector<int64_t>& axes, const std::string& what) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  const Chan* x = chanOf(n.inputs[0]);
  if (!x) return;
  if (std::find(axes.begin(), axes.end(), x->axis) != axes.end()) return freeze(x->slot, what + " by " + where(n));
  for (size_t k = 1; k < n.inputs.size(); ++k)
    if (const Chan* c = chanOf(n.inputs[k])) freeze(c->slot, "used as a shape by " + where(n));
  passThrough(n, *x);
}

void Tracer::visit(int i) {
  const Node& n = g_.nodes[static_cast<size_t>(i)];
  auto lin = linear_.find(i);
  if (lin != linear_.end() && g_.isInitializer(lin->second.weight)) return linear(i, lin->second);
  const int64_t r = n.inputs.empty() ? 0 : rankOf(n.inputs[0]);
  auto normAxes = [&](std::vector<int64_t> a) {
    for (auto& e : a) e = e < 0 ? e + r : e;
    return a;
  };
  if (n.domain.empty()) {
    if (n.op == "Conv") return conv(i);
    if (n.op == "ConvTranspose") return convTranspose(i);
    if (n.op == "BatchNormalization") return normalization(i, 1, 4);
    if (n.op == "InstanceNormalization") return normalization(i, 1, 2);
    if (n.op == "LayerNormalization") return layerNorm(i);
    if (n.op == "Concat") return concat(i);
    if (n.op == "Flatten" || n.op == "Squeeze" || n.op == "Unsqueeze") return view(i);
    if (n.op == "Reshape") return reshape(i);
    if (n.op == "Transpose") return transpose(i);
    if (n.op.rfind("Reduce", 0) == 0) return reduce(i);
    if (n.op == "Split") return axisKept(i, normAxes({n.attrInt("axis", 0)}), "split along its channels");
    if (n.op == "Slice") {
      std::vector<int64_t> axes;
      if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
        auto c = constInts(n.inputs[3]);
        if (!c) return freezeInputs(n, "sliced along computed axes by " + where(n));
        axes = *c;
      } else if (auto s = constInts(n.inputs[1])) {
        for (size_t k = 0; k < s->size(); ++k) axes.push_back(static_cast<int64_t>(k));
      }
      return axisKept(i, normAxes(axes), "sliced along its channels");
    }
    if (n.op == "Pad") {
      auto pads = constInts(n.inputs.size() > 1 ? n.inputs[1] : "");
      const Chan* x = chanOf(n.inputs[0]);
      if (!x) return;
      const bool plain = pads && (n.inputs.size() < 4 || n.inputs[3].empty()) && static_cast<int64_t>(pads->size()) == 2 * r;
      if (!plain) return freezeInputs(n, "padded by " + where(n) + " with computed or per-axis pads");
      const bool touches = (*pads)[static_cast<size_t>(x->axis)] != 0 || (*pads)[static_cast<size_t>(x->axis + r)] != 0;
      return axisKept(i, touches ? std::vector<int64_t>{x->axis} : std::vector<int64_t>{}, "padded along its channels");
    }
    if (n.op == "Resize") {
      const Chan* x = chanOf(n.inputs[0]);
      if (!x) return;
      if (n.inputs.size() > 3 && !n.inputs[3].empty() && g_.isInitializer(n.inputs[3]))
        return freeze(x->slot, "resized by " + where(n) + " to constant sizes");
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
        if (!g_.isInitializer(n.inputs[2])) return freeze(x->slot, "resized by " + where(n) + " with computed scales");
        at::Tensor s = g_.initializers.at(n.inputs[2]).to(at::kDouble);
        if (s.numel() > x->axis && s[x->axis].item<double>() != 1.0) return freeze(x->slot, "resized along its channels by " + where(n));
      }
      return axisKept(i, {}, "");
    }
    if (crt::opHas(n.op, crt::op_trait::PerChannel)) {
      const Chan* x = chanOf(n.inputs[0]);
      if (x && x->axis != 1) return freeze(x->slot, "pooled along an axis other than 1 by " + where(n));
      if (x) setOut(n, *x);
      return;
    }
    if (crt::opHas(n.op, crt::op_trait::Unary) || crt::opHas(n.op, crt::op_trait::Bcast)) return elementwise(i);
    if (crt::opHas(n.op, crt::op_trait::ShapeOnly)) return;
  }
  freezeInputs(n, "read by " + where(n));
}

// A sliced tensor read by a node that did not account for it (an embedding tied to a classifier, a bias
// shared with an untraced op) must keep its size: its channels are frozen.
void Tracer::checkReaders() {
  for (const auto& s : slices_) {
    const auto& known = readers_[s.tensor];
    for (int c : g_.consumers(s.tensor))
      if (!known.count(c)) freeze(s.cls, "'" + s.tensor + "' is also read by " + where(g_.nodes[static_cast<size_t>(c)]));
  }
}

ChannelAnalysis Tracer::collect(const std::set<std::string>& selected) {
  ChannelAnalysis a;
  // Channel ids: union-find roots, numbered densely.
  std::map<int, int> id_of_root;
  auto idOf = [&](int slot) {
    int r = uf_.find(slot);
    auto it = id_of_root.emplace(r, static_cast<int>(id_of_root.size()));
    return it.first->second;
  };
  for (int s = 0; s < static_cast<int>(origin_.size()); ++s) idOf(s);
  a.channels = static_cast<int>(id_of_root.size());
  // Groups: channels created by one layer stay together; channels tied across layers join their groups.
  UnionFind groups;
  for (int k = 0; k < a.channels; ++k) groups.make();
  std::map<int, int> first_of_node;
  for (int s = 0; s < static_cast<int>(origin_.size()); ++s) {
    if (origin_[static_cast<size_t>(s)] < 0) continue;
    auto it = first_of_node.emplace(origin_[static_cast<size_t>(s)], idOf(s)).first;
    groups.unite(it->second, idOf(s));
  }
  std::map<int, std::string> why;  // group root -> first reason it is frozen
  for (const auto& [slot, reason] : frozen_) why.emplace(groups.find(idOf(slot)), reason);
  std::map<int, ChannelGroup> by_root;
  std::map<int, std::set<int>> channel_set;
  for (int s = 0; s < static_cast<int>(origin_.size()); ++s) channel_set[groups.find(idOf(s))].insert(idOf(s));
  for (const auto& [node, first] : first_of_node) {
    const Node& n = g_.nodes[static_cast<size_t>(node)];
    const std::string w = n.op == "MatMul" ? linear_.at(node).weight : n.inputs[1];
    by_root[groups.find(first)].producers.push_back(w);
  }
  for (auto& [root, grp] : by_root) {
    grp.channels.assign(channel_set[root].begin(), channel_set[root].end());
    std::string names;
    for (const auto& p : grp.producers) names += (names.empty() ? "" : ", ") + p;
    auto unselected = std::find_if(grp.producers.begin(), grp.producers.end(), [&](const std::string& p) { return !selected.count(p); });
    if (why.count(root)) a.frozen.push_back(names + ": " + why.at(root));
    else if (unselected != grp.producers.end()) a.frozen.push_back(names + ": '" + *unselected + "' is not targeted");
    else a.groups.push_back(std::move(grp));
  }
  for (auto& s : slices_) {
    for (int& c : s.cls) c = idOf(c);
    a.slices.push_back(s);
  }
  for (auto& [node, cls] : depthwise_) {
    for (int& c : cls) c = idOf(c);
    a.depthwise.emplace_back(node, cls);
  }
  for (auto& sc : shape_consts_) {
    for (int& c : sc.cls) c = idOf(c);
    a.shape_consts.push_back(sc);
  }
  return a;
}

ChannelAnalysis Tracer::trace(const std::set<std::string>& selected) {
  for (size_t i = 0; i < g_.nodes.size(); ++i) visit(static_cast<int>(i));
  for (const auto& o : g_.outputs)
    if (const Chan* c = chanOf(o)) freeze(c->slot, "reaches the graph output '" + o + "'");
  checkReaders();
  return collect(selected);
}

}  // namespace

ChannelAnalysis findChannelGroups(const Graph& g, const std::vector<std::string>& targets, const std::vector<std::string>& ignore) {
  auto sel = selectWeights(g, targets, ignore);
  return Tracer(g).trace(std::set<std::string>(sel.begin(), sel.end()));
}

void removeChannels(Graph& g, const ChannelAnalysis& a, const std::set<int>& removed) {
  auto keptOf = [&](const std::vector<int>& cls) {
    std::vector<int64_t> keep;
    for (size_t k = 0; k < cls.size(); ++k)
      if (!removed.count(cls[k])) keep.push_back(static_cast<int64_t>(k));
    return keep;
  };
  for (const auto& s : a.slices) {
    auto keep = keptOf(s.cls);
    if (keep.size() == s.cls.size()) continue;
    sliceInitializer(g, s.tensor, s.axis, at::tensor(keep, at::kLong));
    g.values[s.tensor].shape = Shape{};
    for (int64_t d : g.initializers.at(s.tensor).sizes()) g.values[s.tensor].shape->push_back(Dim::fixed(d));
  }
  for (const auto& [node, cls] : a.depthwise) g.nodes[static_cast<size_t>(node)].attrs["group"] = static_cast<int64_t>(keptOf(cls).size());
  for (const auto& sc : a.shape_consts) {  // a fresh constant: the old one may have other readers
    std::string& in = g.nodes[static_cast<size_t>(sc.node)].inputs[sc.input];
    at::Tensor t = g.initializers.at(in).clone();
    t.view(-1)[sc.index] = static_cast<int64_t>(keptOf(sc.cls).size());
    const std::string name = g.freshName(in);
    g.initializers[name] = t;
    g.values[name] = g.values.at(in);
    in = name;
  }
}

int64_t macsPerSample(const Graph& g, const at::Tensor& input) {
  Executor ex(g);
  int64_t macs = 0;
  ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>& in, const std::vector<at::Tensor>& out) {
    if (!n.domain.empty() || out.empty() || in.size() < 2) return;
    if (n.op == "Conv") macs += out[0].numel() * (in[1].numel() / std::max<int64_t>(1, in[1].size(0)));
    else if (n.op == "ConvTranspose") macs += in[0].numel() * (in[1].numel() / std::max<int64_t>(1, in[1].size(0)));
    else if (n.op == "MatMul" || n.op == "Gemm") macs += out[0].numel() * in[0].size(-1);
  });
  ex.run1(input);
  return macs / std::max<int64_t>(1, input.size(0));
}

namespace {

/// Per channel id: Σ over the weights it slices of the slice's norm (activation-weighted at the readers
/// for "activation"), each tensor normalized by its mean slice score.
std::vector<double> channelScores(const Graph& g, const ChannelAnalysis& a, const std::string& score,
                                  const std::map<int, at::Tensor>& input_norms) {
  std::vector<double> s(static_cast<size_t>(a.channels), 0.0);
  for (const auto& sl : a.slices) {
    if (sl.role != ChannelRole::Weight) continue;
    const bool reader = sl.reader >= 0;
    if (score == "activation" && !reader) continue;
    at::Tensor t = g.initializers.at(sl.tensor).to(at::kFloat).transpose(0, sl.axis).contiguous();
    at::Tensor n = t.reshape({t.size(0), -1}).norm(2, 1).to(at::kDouble);
    if (score == "activation") n = n * input_norms.at(sl.reader);
    const double mean = n.mean().item<double>();
    if (!(mean > 0)) continue;
    const at::Tensor c = n.contiguous();
    const double* v = c.data_ptr<double>();  // one read per entry, not a tensor op each
    for (size_t k = 0; k < sl.cls.size(); ++k) s[static_cast<size_t>(sl.cls[k])] += v[k] / mean;
  }
  return s;
}

/// ‖x_c‖₂ of the input of every reading layer, over the calibration samples: reader node -> [channels].
std::map<int, at::Tensor> readerInputNorms(const Graph& g, const ChannelAnalysis& a, const at::Tensor& calibration, int64_t chunk,
                                           at::Device device) {
  std::map<int, int64_t> axis_of;
  for (const auto& sl : a.slices)
    if (sl.reader >= 0) axis_of[sl.reader] = sl.reader_axis;
  std::map<int, at::Tensor> sumsq;
  Executor ex(g, {device});
  ex.addHook([&](int node, const Node&, const std::vector<at::Tensor>& in, const std::vector<at::Tensor>&) {
    auto it = axis_of.find(node);
    if (it == axis_of.end()) return;
    at::Tensor x = in[0].to(at::kDouble).transpose(0, it->second).contiguous();
    at::Tensor s = x.reshape({x.size(0), -1}).pow(2).sum(1).cpu();
    auto& acc = sumsq[node];
    acc = acc.defined() ? acc + s : s;
  });
  for (int64_t b = 0; b < calibration.size(0); b += chunk) ex.run1(calibration.narrow(0, b, std::min(chunk, calibration.size(0) - b)));
  for (auto& [node, s] : sumsq) s = s.sqrt();
  for (const auto& [node, axis] : axis_of)
    if (!sumsq.count(node)) fail(ErrorCategory::Internal, "channel-prune: the calibration run never reached node '" + g.nodes[static_cast<size_t>(node)].name + "'");
  return sumsq;
}

/// The channels each group loses at `ratio`: its lowest-scored ones (ties by position), keeping at least one
/// and a multiple of `multiple_of`.
std::set<int> channelsToRemove(const ChannelAnalysis& a, const std::vector<double>& scores, double ratio, int64_t multiple_of) {
  std::set<int> removed;
  for (const auto& grp : a.groups) {
    const int64_t C = static_cast<int64_t>(grp.channels.size());
    int64_t keep = std::max<int64_t>(1, C - std::llround(ratio * static_cast<double>(C)));
    keep = std::min(C, (keep + multiple_of - 1) / multiple_of * multiple_of);
    std::vector<int> order = grp.channels;
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return scores[static_cast<size_t>(x)] < scores[static_cast<size_t>(y)]; });
    for (int64_t k = 0; k < C - keep; ++k) removed.insert(order[static_cast<size_t>(k)]);
  }
  return removed;
}

/// The smallest ratio (to 1/512) whose result has `measure` <= target, by bisection; -1 when even 0.95 misses.
double ratioFor(double target, const std::function<double(double)>& measure) {
  if (measure(0.95) > target) return -1;
  double lo = 0, hi = 0.95;
  while (hi - lo > 1.0 / 512) {
    double mid = (lo + hi) / 2;
    (measure(mid) <= target ? hi : lo) = mid;
  }
  return hi;
}

}  // namespace

nlohmann::json channelPrune(Graph& g, const at::Tensor& calibration, const ChannelPruneOptions& opts, at::Device device) {
  auto t0 = std::chrono::steady_clock::now();
  auto targets = selectPassTargets(g, "channel-prune", opts.targets, opts.ignore);
  requireFloatTargets(g, "channel-prune", targets);
  if (opts.score == "activation" && !calibration.defined())
    fail(ErrorCategory::Config, "channel-prune: score: activation needs data.calibration (or set score: magnitude)");
  ChannelAnalysis a = findChannelGroups(g, opts.targets, opts.ignore);
  if (a.groups.empty()) {
    std::string msg = "channel-prune: no prunable channel group among the targeted layers";
    for (size_t k = 0; k < a.frozen.size() && k < 6; ++k) msg += "\n  " + a.frozen[k];
    fail(ErrorCategory::Config, msg);
  }
  std::map<int, at::Tensor> norms;
  if (opts.score == "activation") norms = readerInputNorms(g, a, calibration, opts.chunk, device);
  const std::vector<double> scores = channelScores(g, a, opts.score, norms);

  const bool measurable = calibration.defined();
  const at::Tensor sample = measurable ? calibration.narrow(0, 0, 1) : at::Tensor();
  const int64_t params_before = g.parameterCount();
  const int64_t macs_before = measurable ? macsPerSample(g, sample) : -1;
  auto pruned = [&](double ratio) {
    Graph c = g.clone();
    removeChannels(c, a, channelsToRemove(a, scores, ratio, opts.multiple_of));
    return c;
  };
  double ratio = opts.ratio;
  auto absolute = [](double target, int64_t base) { return target <= 1.0 ? target * static_cast<double>(base) : target; };
  if (opts.target_macs > 0) {
    if (!measurable) fail(ErrorCategory::Config, "channel-prune: target_macs needs data.calibration (MACs are counted on its first sample)");
    const double want = absolute(opts.target_macs, macs_before);
    ratio = ratioFor(want, [&](double r) { return static_cast<double>(macsPerSample(pruned(r), sample)); });
    if (ratio < 0)
      fail(ErrorCategory::Config, "channel-prune: target_macs " + std::to_string(static_cast<int64_t>(want)) +
                                      " cannot be reached by removing channels (the model has " + std::to_string(macs_before) + " MACs per sample)");
  } else if (opts.target_params > 0) {
    const double want = absolute(opts.target_params, params_before);
    ratio = ratioFor(want, [&](double r) { return static_cast<double>(pruned(r).parameterCount()); });
    if (ratio < 0)
      fail(ErrorCategory::Config, "channel-prune: target_params " + std::to_string(static_cast<int64_t>(want)) +
                                      " cannot be reached by removing channels (the model has " + std::to_string(params_before) + " parameters)");
  }
  const std::set<int> removed = channelsToRemove(a, scores, ratio, opts.multiple_of);
  removeChannels(g, a, removed);
  g.pruneUnused();
  reinferShapes(g);

  nlohmann::json layers = nlohmann::json::array();  // one row per group, as structured-prune's
  int64_t channels = 0;
  for (const auto& grp : a.groups) {
    int64_t gone = std::count_if(grp.channels.begin(), grp.channels.end(), [&](int c) { return removed.count(c) != 0; });
    channels += static_cast<int64_t>(grp.channels.size());
    std::string names;
    for (const auto& p : grp.producers) names += (names.empty() ? "" : ", ") + p;
    layers.push_back({{"layer", grp.producers[0]}, {"group", "output channels of " + names}, {"producers", grp.producers},
                      {"neurons_before", grp.channels.size()}, {"kept", static_cast<int64_t>(grp.channels.size()) - gone}});
  }
  return {{"score", opts.score}, {"ratio", ratio}, {"layers", layers}, {"groups", a.groups.size()}, {"channels_before", channels},
          {"channels_removed", removed.size()}, {"frozen", a.frozen}, {"params_before", params_before},
          {"params_after", g.parameterCount()}, {"macs_before", macs_before}, {"macs_after", measurable ? macsPerSample(g, sample) : -1},
          {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
}

namespace {

class ChannelPrunePass : public Pass {
 public:
  const char* name() const override { return "channel-prune"; }
  const char* description() const override {
    return "Channel pruning with dependency groups: remove conv/linear output channels together with everything tied to them "
           "(BatchNorm, depthwise convs, residual adds, concatenations, the layers reading them), giving a smaller dense model.";
  }
  bool needsCalibration() const override { return opts_.score == "activation" || opts_.target_macs > 0; }
  void configure(OptionReader& r) override {
    opts_.ratio = r.number("ratio", 0.3, 0.0, 0.95, "fraction of every channel group to remove (0.3 or 30%)");
    opts_.target_macs = r.number("target_macs", 0, 0, 1e18,
                                 "> 0: remove the smallest uniform fraction that brings MACs per sample (counted on the first calibration "
                                 "sample) to at most this: a count, or a fraction of the model's (0.7 or 70%)");
    opts_.target_params = r.number("target_params", 0, 0, 1e18,
                                   "> 0: the same for the parameter count: a count, or a fraction of the model's (0.7 or 70%)");
    opts_.score = r.choice("score", "activation", {"activation", "magnitude"},
                           "activation: ||x_c|| x ||W[:, c]|| at the layers reading channel c, on calibration data; magnitude: weight norms only");
    opts_.multiple_of = r.integer("multiple_of", 1, 1, 4096, "round each group's kept channels up to a multiple of this");
    opts_.targets = r.strings("targets", kLayerTargets, std::string("layers whose output channels may be removed: ") + kLayerTargetsHelp);
    opts_.ignore = r.strings("ignore", {}, "parameter-name globs whose output channels stay");
    opts_.chunk = r.integer("chunk", 8, 1, 1 << 16, "calibration samples per forward pass (memory)");
  }
  PassResult run(Graph& g, PassContext& ctx) override {
    nlohmann::json s = channelPrune(g, ctx.calibration, opts_, ctx.device);
    char buf[320];
    std::snprintf(buf, sizeof buf, "removed %lld of %lld channels in %zu groups (%s score, ratio %.3f): %lld -> %lld parameters",
                  static_cast<long long>(s["channels_removed"].get<int64_t>()), static_cast<long long>(s["channels_before"].get<int64_t>()),
                  s["groups"].get<size_t>(), opts_.score.c_str(), s["ratio"].get<double>(),
                  static_cast<long long>(s["params_before"].get<int64_t>()), static_cast<long long>(s["params_after"].get<int64_t>()));
    std::string summary = buf;
    if (s["macs_before"].get<int64_t>() > 0)
      summary += ", " + std::to_string(s["macs_before"].get<int64_t>()) + " -> " + std::to_string(s["macs_after"].get<int64_t>()) + " MACs per sample";
    return {summary, s};
  }

 private:
  ChannelPruneOptions opts_;
};

}  // namespace

std::unique_ptr<Pass> makeChannelPrunePass() { return std::make_unique<ChannelPrunePass>(); }

}  // namespace compress
