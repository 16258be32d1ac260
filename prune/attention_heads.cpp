// attention_heads.cpp — follows the head axis of q/k/v projections through an attention subgraph so whole
// heads can be removed (see attention_heads.h). The invariant that makes it work: every value on the way
// carries one "head axis" that splits into `groups` equal contiguous slices, one per key/value head —
// [.., H·d] before the split reshape, [.., H, ..] after it, and the GQA repeat [.., Hkv, rep, d] ->
// [.., Hkv·rep, d] keeps a query group contiguous. Reshapes may only split or merge the head axis with the
// axes after it, so the slices stay contiguous; any op that reads across heads stops the analysis.
#include "prune/attention_heads.h"

#include <algorithm>
#include <numeric>

#include "compress/error.h"
#include "prune/sparsity.h"
#include "runtime/op_table.h"

namespace compress {

namespace {

/// Ops the head axis passes through unchanged (op_table.def's traits): one-input elementwise ops, and
/// broadcasting elementwise ones.
bool headUnary(const std::string& op) { return crt::opHas(op, crt::op_trait::Unary | crt::op_trait::Prune); }
bool headBroadcast(const std::string& op) { return crt::opHas(op, crt::op_trait::Bcast | crt::op_trait::Prune); }

std::vector<int64_t> constInts(const Graph& g, const std::string& v) {
  if (v.empty() || !g.isInitializer(v)) return {};
  at::Tensor t = g.initializers.at(v).to(at::kLong).reshape({-1}).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

class HeadTracker {
 public:
  HeadTracker(const Graph& g, const std::map<std::string, LinearRef>& linear_of_node) : g_(g), linear_of_node_(linear_of_node) {}

  // Follows the head axis from the outputs of `starts` (MatMul nodes); true when it ends in exactly one linear.
  bool run(const std::vector<int>& starts, AttentionUnit& u, std::string& why) {
    for (int s : starts) {
      const std::string& out = g_.nodes[s].outputs[0];
      if (!track(out, rank(out) - 1)) return fail(why, "projection output '" + out + "' has no fixed last dimension");
    }
    int first = *std::min_element(starts.begin(), starts.end());
    for (int i = first; i < static_cast<int>(g_.nodes.size()); ++i) {
      if (std::find(starts.begin(), starts.end(), i) != starts.end()) continue;
      if (!step(i, u)) return fail(why, reason_);
    }
    for (const auto& o : g_.outputs)
      if (axis_.count(o)) return fail(why, "head-shaped value '" + o + "' is a graph output");
    if (sinks_.size() != 1) return fail(why, "the heads reach " + std::to_string(sinks_.size()) + " linear layers, not one output projection");
    int64_t gcd = 0;
    for (auto s : sizes_) gcd = std::gcd(gcd, s);
    if (gcd < 2 || heads_ == 0) return fail(why, "no per-head reshape found (not an attention unit)");
    u.o = sinks_[0];
    u.groups = gcd;
    u.heads = heads_;
    return true;
  }

 private:
  const Graph& g_;
  const std::map<std::string, LinearRef>& linear_of_node_;
  std::map<std::string, int> axis_;
  std::vector<int64_t> sizes_;
  std::vector<std::string> sinks_;
  int64_t heads_ = 0;
  std::string reason_;

  bool fail(std::string& why, const std::string& r) {
    why = r;
    return false;
  }
  bool bad(const Node& n, const std::string& r) {
    reason_ = n.op + " node '" + n.name + "' " + r;
    return false;
  }
  const Shape* shape(const std::string& v) const {
    auto it = g_.values.find(v);
    return it != g_.values.end() && it->second.shape ? &*it->second.shape : nullptr;
  }
  int rank(const std::string& v) const {
    if (g_.isInitializer(v)) return static_cast<int>(g_.initializers.at(v).dim());
    const Shape* s = shape(v);
    return s ? static_cast<int>(s->size()) : -1;
  }
  int64_t dim(const std::string& v, int k) const {
    if (g_.isInitializer(v)) return g_.initializers.at(v).size(k);
    const Shape* s = shape(v);
    return s && k >= 0 && k < static_cast<int>(s->size()) && (*s)[k].isFixed() ? (*s)[k].value : -1;
  }
  bool track(const std::string& v, int a) {
    int64_t d = dim(v, a);
    if (a < 0 || d <= 0) return false;
    axis_[v] = a;
    sizes_.push_back(d);
    return true;
  }
  static int norm(int64_t a, int r) { return static_cast<int>(a < 0 ? a + r : a); }

  // A shape tensor (Reshape/Expand input 1) whose element `e` fixes the head axis: record a constant to resize.
  void shapeElement(AttentionUnit& u, int node, int input, int64_t e) {
    const std::string& v = g_.nodes[node].inputs[input];
    if (g_.isInitializer(v)) {
      u.resizes.push_back({node, input, e});
      return;
    }
    int p = g_.producer(v);
    if (p < 0 || g_.nodes[p].op != "Concat") return;  // computed from Shape(): follows the data by itself
    int64_t off = 0;
    for (size_t j = 0; j < g_.nodes[p].inputs.size(); ++j) {
      const std::string& piece = g_.nodes[p].inputs[j];
      int64_t len = g_.isInitializer(piece) ? g_.initializers.at(piece).numel() : dim(piece, 0);
      if (len < 0) return;
      if (e < off + len) {
        if (g_.isInitializer(piece)) u.resizes.push_back({p, static_cast<int>(j), e - off});
        return;
      }
      off += len;
    }
  }

  bool step(int i, AttentionUnit& u) {
    const Node& n = g_.nodes[i];
    std::vector<int> tracked;
    for (size_t j = 0; j < n.inputs.size(); ++j)
      if (axis_.count(n.inputs[j])) tracked.push_back(static_cast<int>(j));
    if (tracked.empty()) return true;
    const std::string& x = n.inputs[tracked[0]];
    const int a = axis_.at(x), r = rank(x);
    const std::string out = n.outputs.empty() ? "" : n.outputs[0];
    const int R = out.empty() ? -1 : rank(out);
    if (n.op == "Shape") return true;  // sizes read at run time follow the data
    if (headUnary(n.op)) return track(out, a) || bad(n, "has no fixed head axis");
    if (n.op == "Softmax" || n.op == "LogSoftmax") {
      if (norm(n.attrInt("axis", -1), r) == a) return bad(n, "normalizes across heads");
      if (n.op == "Softmax") heads_ = std::max(heads_, dim(x, a));
      return track(out, a) || bad(n, "has no fixed head axis");
    }
    if (headBroadcast(n.op)) {
      int ao = -1;
      for (int j : tracked) {
        int v = axis_.at(n.inputs[j]) + R - rank(n.inputs[j]);
        if (ao >= 0 && v != ao) return bad(n, "combines head axes that do not line up");
        ao = v;
      }
      int64_t size = dim(out, ao);
      for (size_t j = 0; j < n.inputs.size(); ++j) {
        const std::string& in = n.inputs[j];
        if (in.empty() || axis_.count(in)) continue;
        int rj = rank(in), pos = ao - (R - rj);
        if (rj < 0) return bad(n, "has an operand of unknown rank");
        if (pos < 0 || dim(in, pos) == 1) continue;
        if (g_.isInitializer(in) && dim(in, pos) == size) u.slices.push_back({i, static_cast<int>(j), pos});
        else return bad(n, "mixes heads with a value that is not per head");
      }
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Transpose") {
      auto perm = n.attrInts("perm");
      auto it = std::find(perm.begin(), perm.end(), a);
      if (it == perm.end()) return bad(n, "has no permutation");
      return track(out, static_cast<int>(it - perm.begin())) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Unsqueeze") {
      auto axes = constInts(g_, n.inputs.size() > 1 ? n.inputs[1] : "");
      if (axes.empty()) axes = n.attrInts("axes");
      for (auto& v : axes) v = norm(v, R);
      std::sort(axes.begin(), axes.end());
      int ao = a;
      for (auto v : axes)
        if (v <= ao) ++ao;
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Squeeze") {
      auto axes = constInts(g_, n.inputs.size() > 1 ? n.inputs[1] : "");
      int ao = a;
      for (auto v : axes) {
        if (norm(v, r) == a) return bad(n, "removes the head axis");
        if (norm(v, r) < a) --ao;
      }
      if (axes.empty()) return bad(n, "squeezes unknown axes");
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Slice") {
      if (tracked[0] != 0) return bad(n, "slices by head-shaped indices");
      auto starts = constInts(g_, n.inputs[1]);
      auto axes = n.inputs.size() > 3 ? constInts(g_, n.inputs[3]) : std::vector<int64_t>{};
      if (axes.empty())
        for (size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<int64_t>(k));
      for (auto v : axes)
        if (norm(v, r) == a) return bad(n, "slices the head axis");
      return track(out, a) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Concat") {
      if (norm(n.attrInt("axis", 0), r) == a) return bad(n, "concatenates along the head axis");
      for (const auto& in : n.inputs)
        if (!axis_.count(in) || axis_.at(in) != a) return bad(n, "joins per-head and other values");
      return track(out, a) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Reshape") {
      if (tracked[0] != 0) return bad(n, "takes its shape from a head-shaped value");
      const Shape* si = shape(x);
      const Shape* so = shape(out);
      if (!si || !so) return bad(n, "has unknown shapes");
      // The output axis whose prefix holds exactly the input's dims before the head axis.
      auto key = [](const Shape& s, int upto) {
        std::multiset<std::string> syms;
        int64_t p = 1;
        for (int k = 0; k < upto; ++k) {
          if (s[k].isFixed()) p *= s[k].value;
          else syms.insert(s[k].symbol);
        }
        return std::make_pair(syms, p);
      };
      auto want = key(*si, a);
      int ao = -1;
      for (int k = 0; k < R; ++k)
        if (key(*so, k) == want && (*so)[k].isFixed() && (*so)[k].value > 1) {
          ao = k;
          break;
        }
      if (ao < 0) return bad(n, "merges the head axis with the axes before it");
      shapeElement(u, i, 1, ao);
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Expand") {
      if (tracked[0] != 0) return bad(n, "takes its shape from a head-shaped value");
      int ao = a + R - r;
      shapeElement(u, i, 1, ao);
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    if (n.op == "MatMul") {
      auto lin = linear_of_node_.find(n.name);
      if (lin != linear_of_node_.end()) {
        if (tracked[0] != 0 || a != r - 1) return bad(n, "is a linear layer that does not contract the head axis");
        sinks_.push_back(lin->second.weight);
        return true;
      }
      int ao = -1;
      for (int j : tracked) {
        int aj = axis_.at(n.inputs[j]), rj = rank(n.inputs[j]);
        if (aj >= rj - 2) return bad(n, "multiplies along the head axis");
        int v = aj + R - rj;
        if (ao >= 0 && v != ao) return bad(n, "combines head axes that do not line up");
        ao = v;
      }
      for (size_t j = 0; j < 2; ++j)
        if (!axis_.count(n.inputs[j])) {
          int rj = rank(n.inputs[j]), pos = ao - (R - rj);
          if (pos >= 0 && pos < rj - 2 && dim(n.inputs[j], pos) != 1) return bad(n, "mixes heads with a value that is not per head");
        }
      return track(out, ao) || bad(n, "has no fixed head axis");
    }
    return bad(n, "reads the head axis in a way structured pruning does not follow");
  }
};

}  // namespace

std::vector<AttentionUnit> findAttentionUnits(const Graph& g, const std::vector<std::string>& o_weights, std::vector<std::string>* why) {
  auto linears = findLinears(g);
  std::map<std::string, LinearRef> linear_of_node, by_weight;
  for (const auto& l : linears) {
    linear_of_node.emplace(g.nodes[l.node].name, l);
    by_weight.emplace(l.weight, l);
  }
  // Projections that read the same input (q/k/v), in graph order.
  std::vector<std::pair<std::string, std::vector<std::string>>> shared;  // input -> weights
  for (const auto& l : linears) {
    const std::string& in = g.nodes[l.node].inputs[0];
    auto it = std::find_if(shared.begin(), shared.end(), [&](const auto& p) { return p.first == in; });
    if (it == shared.end()) shared.push_back({in, {l.weight}});
    else if (std::find(it->second.begin(), it->second.end(), l.weight) == it->second.end()) it->second.push_back(l.weight);
  }
  std::vector<AttentionUnit> units;
  for (const auto& o : o_weights) {
    if (!by_weight.count(o) || !g.isInitializer(o)) continue;
    const int o_node = by_weight.at(o).node;
    // The nearest groups of two or more float projections before `o` (q/k/v sit just before their o).
    std::string last_reason = "no group of projections sharing an input precedes it";
    int tried = 0;
    for (auto it = shared.rbegin(); it != shared.rend() && tried < 3; ++it) {
      const auto& group = it->second;
      std::vector<int> starts;
      bool usable = group.size() >= 2;
      for (const auto& w : group) {
        const LinearRef& l = by_weight.at(w);
        usable = usable && l.node < o_node && g.isInitializer(w) && w != o;
        starts.push_back(l.node);
      }
      if (!usable) continue;
      ++tried;
      AttentionUnit u;
      HeadTracker t(g, linear_of_node);
      std::string reason;
      if (t.run(starts, u, reason) && u.o == o) {
        u.projections = group;
        bool divisible = true;
        for (const auto& w : group) {
          const at::Tensor& W = g.initializers.at(w);
          divisible = divisible && (by_weight.at(w).transposed ? W.size(0) : W.size(1)) % u.groups == 0;
        }
        if (divisible) {
          units.push_back(u);
          last_reason.clear();
        }
        break;
      }
      last_reason = reason.empty() ? "the heads lead to " + u.o + ", not to it" : reason;
    }
    if (why && !last_reason.empty()) why->push_back(o + ": " + last_reason);
  }
  return units;
}

void keepHeadGroups(Graph& g, const AttentionUnit& u, const at::Tensor& keep) {
  const int64_t G = u.groups, K = keep.numel();
  auto index = [&](int64_t size) {  // positions of the kept slices of an axis of `size`
    int64_t w = size / G;
    std::vector<at::Tensor> parts;
    auto acc = keep.accessor<int64_t, 1>();
    for (int64_t k = 0; k < K; ++k) parts.push_back(at::arange(acc[k] * w, (acc[k] + 1) * w, at::kLong));
    return at::cat(parts);
  };
  const auto transposed = linearLayouts(g);
  auto slice = [&](const std::string& name, int64_t dim) { sliceInitializer(g, name, dim, index(g.initializers.at(name).size(dim))); };
  for (const auto& p : u.projections) slice(p, transposed.at(p) ? 0 : 1);
  slice(u.o, transposed.at(u.o) ? 1 : 0);
  for (const auto& s : u.slices) {
    std::string name = g.nodes[s.node].inputs[s.input];
    if (g.consumers(name).size() == 1) {
      slice(name, s.dim);
    } else {  // shared with another node: this node gets its own sliced copy
      std::string fresh = g.freshName(name + ".heads");
      g.initializers[fresh] = g.initializers.at(name).index_select(s.dim, index(g.initializers.at(name).size(s.dim)));
      g.nodes[s.node].inputs[s.input] = fresh;
    }
  }
  std::set<std::pair<int, int>> done;
  for (const auto& r : u.resizes) {
    if (!done.insert({r.node, r.input}).second) continue;
    std::string name = g.nodes[r.node].inputs[r.input];
    at::Tensor t = g.initializers.at(name).clone();
    int64_t v = t.reshape({-1})[r.element].item<int64_t>();
    if (v <= 0) continue;  // -1 / 0 are inferred by Reshape itself
    if (v % G != 0) fail(ErrorCategory::Internal, "structured-prune: shape constant " + name + " does not split into " + std::to_string(G) + " groups");
    t.reshape({-1})[r.element] = v / G * K;
    std::string fresh = g.freshName(name + ".heads");
    g.initializers[fresh] = t;
    g.values[fresh] = ValueInfo{dtypeFromScalarType(t.scalar_type()), Shape{Dim::fixed(t.numel())}};
    g.nodes[r.node].inputs[r.input] = fresh;
  }
}

}  // namespace compress
