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

  // Follows the head axis from the outputs of `starts` (MatMul nodes; one fused projection of `parts` parts
  // or several plain ones); true when it ends in exactly one linear.
  bool run(const std::vector<int>& starts, int64_t parts, AttentionUnit& u, std::string& why) {
    for (int s : starts) {
      const std::string& out = g_.nodes[s].outputs[0];
      if (!track(out, rank(out) - 1, parts)) return fail(why, "projection output '" + out + "' has no fixed last dimension");
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
  std::map<std::string, int64_t> parts_;  // copies of the head layout along the axis (fused q/k/v before their Split)
  // Values whose head axis is merged with the axis before it (OPT's view(b·h, t, d)): the head count and
  // the outer dim it was merged with.
  struct Merged {
    int64_t heads;
    Dim outer;
  };
  std::map<std::string, Merged> merged_;
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
  bool track(const std::string& v, int a, int64_t parts) {
    int64_t d = dim(v, a);
    if (a < 0 || d <= 0 || d % parts != 0) return false;
    axis_[v] = a;
    parts_[v] = parts;
    sizes_.push_back(d / parts);
    return true;
  }
  bool trackMerged(const std::string& v, int a, const Merged& m) {
    if (a < 0) return false;
    axis_[v] = a;
    parts_[v] = 1;
    merged_[v] = m;
    sizes_.push_back(m.heads);
    return true;
  }
  // Tracks `out` like the input `x` (merged or not) on axis `a`.
  bool follow(const std::string& x, const std::string& out, int a, int64_t parts) {
    auto m = merged_.find(x);
    return m != merged_.end() ? trackMerged(out, a, m->second) : track(out, a, parts);
  }
  int64_t partsOf(const std::string& v) const {
    auto it = parts_.find(v);
    return it == parts_.end() ? 1 : it->second;
  }
  // A full-size operand that is a size-1 value expanded to the shape of a head-shaped one (DistilBERT's
  // mask.expand_as(scores)): after pruning the Expand follows the heads by itself.
  bool expandedFromOne(const std::string& v, int pos) const {
    int p = g_.producer(v);
    if (p < 0 || g_.nodes[p].op != "Expand") return false;
    const std::string& src = g_.nodes[p].inputs[0];
    const int ps = pos - (rank(v) - rank(src));
    if (ps >= 0 && dim(src, ps) != 1) return false;
    const int sp = g_.producer(g_.nodes[p].inputs[1]);
    return sp >= 0 && g_.nodes[sp].op == "Shape" && axis_.count(g_.nodes[sp].inputs[0]);
  }
  // Whether no element of shape vector `src` other than `e` reads a head axis or comes from where it cannot be told.
  bool othersHeadless(const std::vector<ShapeSource>& src, size_t e) const {
    for (size_t j = 0; j < src.size(); ++j) {
      const ShapeSource& o = src[j];
      if (j != e && (o.kind == ShapeSource::Unknown || (o.kind == ShapeSource::Dim && axis_.count(o.tensor) && axis_.at(o.tensor) == o.axis)))
        return false;
    }
    return true;
  }
  // A full-size operand of a value whose head axis is merged with the one before it (m): a size-1 value expanded to
  // [outer·h, ...], h a constant of the Expand's shape (GPT-NeoX's baddbmm adds the scores to torch.zeros(b·h, t, t)).
  // The constant is recorded to rewrite, so the Expand follows the kept heads; nothing else may read the expansion.
  bool expandedOverMerged(AttentionUnit& u, const std::string& v, int pos, const Merged& m) {
    const int p = g_.producer(v);
    if (p < 0 || g_.nodes[p].op != "Expand" || g_.consumers(v).size() != 1) return false;
    const std::string& src = g_.nodes[p].inputs[0];
    const int ps = pos - (rank(v) - rank(src));
    if (ps >= 0 && dim(src, ps) != 1) return false;
    auto sizes = traceShapeVector(g_, g_.nodes[p].inputs[1], p, 1);
    if (!sizes || pos < 0 || pos >= static_cast<int>(sizes->size())) return false;
    const ShapeSource& e = (*sizes)[static_cast<size_t>(pos)];
    if (e.kind != ShapeSource::Dim || e.scale != m.heads || e.scale_node < 0) return false;
    const Shape* t = shape(e.tensor);
    if (!t || e.axis >= static_cast<int64_t>(t->size()) || (*t)[static_cast<size_t>(e.axis)] != m.outer) return false;
    if (!othersHeadless(*sizes, static_cast<size_t>(pos))) return false;
    u.resizes.push_back({e.scale_node, static_cast<int>(e.scale_input), e.scale_index});
    return true;
  }
  static int norm(int64_t a, int r) { return static_cast<int>(a < 0 ? a + r : a); }

  // A shape tensor (Reshape/Expand input 1) whose element `e` gives the head axis its size: a constant is
  // recorded to resize, a size read from a head-shaped value's head axis follows by itself, -1 is inferred.
  // False when the size comes from elsewhere (DistilBERT reshapes back to its input's width), or another
  // element reads a head axis.
  // `size` is the head axis' size there. A size read from a tensor without heads that happens to equal it
  // (DistilBERT reshapes back to its input's width) is replaced by a constant, when it entered the shape as
  // a 1-element Concat piece.
  bool shapeElement(AttentionUnit& u, int node, int input, int64_t e, int64_t size) {
    auto src = traceShapeVector(g_, g_.nodes[node].inputs[input], node, static_cast<size_t>(input));
    if (!src || e >= static_cast<int64_t>(src->size())) return false;
    for (size_t j = 0; j < src->size(); ++j) {
      const ShapeSource& s = (*src)[j];
      const bool head_dim = s.kind == ShapeSource::Dim && axis_.count(s.tensor) && axis_.at(s.tensor) == s.axis;
      if (static_cast<int64_t>(j) != e) {
        if (s.kind == ShapeSource::Unknown || head_dim) return false;
      } else if (s.kind == ShapeSource::Const) {
        if (s.value > 0 && s.node < 0) return false;  // computed from constants: nothing to rewrite
        if (s.value > 0) u.resizes.push_back({s.node, static_cast<int>(s.input), s.index});
      } else if (!head_dim) {
        if (s.kind != ShapeSource::Dim || s.piece_node < 0 || s.scale != 1 || dim(s.tensor, static_cast<int>(s.axis)) != size) return false;
        u.resizes.push_back({s.piece_node, static_cast<int>(s.piece_input), 0, size});
      }
    }
    return true;
  }

  // A Reshape that merges the head axis `a` into the axis before it ([b, h, t, d] -> [b·h, t, d]): the
  // output axis whose target element is (that outer dim)·h, h a constant it records to rewrite, with the
  // same dims before it; -1 when this is not such a merge.
  int mergedAxis(int i, AttentionUnit& u, const Shape& si, const Shape& so, int a) {
    const Node& n = g_.nodes[i];
    const int64_t h = dim(n.inputs[0], a);
    if (a < 1 || h <= 1 || so.size() + 1 != si.size()) return -1;
    auto src = traceShapeVector(g_, n.inputs[1], i, 1);
    if (!src || src->size() != so.size()) return -1;
    const int m = a - 1;
    const ShapeSource& e = (*src)[static_cast<size_t>(m)];
    if (dimsKey(so, static_cast<size_t>(m)) != dimsKey(si, static_cast<size_t>(m)) || e.kind != ShapeSource::Dim || e.scale != h ||
        e.scale_node < 0)
      return -1;
    const Shape* t = shape(e.tensor);
    if (!t || e.axis >= static_cast<int64_t>(t->size()) || (*t)[static_cast<size_t>(e.axis)] != si[static_cast<size_t>(m)]) return -1;
    if (!othersHeadless(*src, static_cast<size_t>(m))) return -1;  // no other element may read a head axis
    u.resizes.push_back({e.scale_node, static_cast<int>(e.scale_input), e.scale_index});
    return m;
  }

  // A Reshape of a merged value that splits the head axis out again ([b·h, t, t] -> [b, h, t, t]).
  bool split(int i, AttentionUnit& u, const Shape& si, const Shape& so, int a, const Merged& m) {
    const Node& n = g_.nodes[i];
    Shape before(si.begin(), si.begin() + a);
    before.push_back(m.outer);
    const auto want = dimsKey(before, before.size());
    for (int k = 1; k < static_cast<int>(so.size()); ++k)
      if (dimsKey(so, static_cast<size_t>(k)) == want && so[static_cast<size_t>(k)].isFixed() && so[static_cast<size_t>(k)].value == m.heads) {
        if (!shapeElement(u, i, 1, k, m.heads)) return bad(n, "takes the head axis size from a tensor without heads");
        return track(n.outputs[0], k, 1) || bad(n, "has no fixed head axis");
      }
    return bad(n, "reshapes a merged head axis into something other than its heads");
  }

  // A Split along the head axis cuts a fused projection into its `px` parts (q, k, v), each a whole head
  // layout; a Split along another axis keeps the heads in every output.
  bool split(int i, AttentionUnit& u, int a, int r, int64_t px) {
    const Node& n = g_.nodes[i];
    if (!axis_.count(n.inputs[0])) return bad(n, "splits by head-shaped sizes");
    const bool along = norm(n.attrInt("axis", 0), r) == a;
    if (along) {
      if (px != static_cast<int64_t>(n.outputs.size())) return bad(n, "splits the head axis into parts that are not whole head layouts");
      for (const auto& o : n.outputs)
        if (dim(o, a) * px != dim(n.inputs[0], a)) return bad(n, "splits the head axis unevenly");
      if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
        if (!g_.isInitializer(n.inputs[1])) return bad(n, "has computed split sizes");
        for (int64_t e = 0; e < px; ++e) u.resizes.push_back({i, 1, e});
      }
    }
    for (const auto& o : n.outputs)
      if (!track(o, a, along ? 1 : px)) return bad(n, "has no fixed head axis");
    return true;
  }

  bool step(int i, AttentionUnit& u) {
    const Node& n = g_.nodes[i];
    std::vector<int> tracked;
    for (size_t j = 0; j < n.inputs.size(); ++j)
      if (axis_.count(n.inputs[j])) tracked.push_back(static_cast<int>(j));
    if (tracked.empty()) return true;
    const std::string& x = n.inputs[tracked[0]];
    const int a = axis_.at(x), r = rank(x);
    const int64_t px = partsOf(x);
    const std::string out = n.outputs.empty() ? "" : n.outputs[0];
    const int R = out.empty() ? -1 : rank(out);
    if (n.op == "Shape") return true;  // sizes read at run time follow the data
    const Merged* mx = merged_.count(x) ? &merged_.at(x) : nullptr;
    for (int j : tracked)
      if ((merged_.count(n.inputs[j]) != 0) != (mx != nullptr)) return bad(n, "combines merged and separate head axes");
    if (headUnary(n.op)) return follow(x, out, a, px) || bad(n, "has no fixed head axis");
    if (n.op == "Softmax" || n.op == "LogSoftmax") {
      if (norm(n.attrInt("axis", -1), r) == a) return bad(n, "normalizes across heads");
      if (n.op == "Softmax") heads_ = std::max(heads_, mx ? mx->heads : dim(x, a));
      return follow(x, out, a, px) || bad(n, "has no fixed head axis");
    }
    if (headBroadcast(n.op)) {
      int ao = -1;
      for (int j : tracked) {
        int v = axis_.at(n.inputs[j]) + R - rank(n.inputs[j]);
        if ((ao >= 0 && v != ao) || partsOf(n.inputs[j]) != px) return bad(n, "combines head axes that do not line up");
        ao = v;
      }
      int64_t size = mx ? -1 : dim(out, ao);
      for (size_t j = 0; j < n.inputs.size(); ++j) {
        const std::string& in = n.inputs[j];
        if (in.empty() || axis_.count(in)) continue;
        int rj = rank(in), pos = ao - (R - rj);
        if (rj < 0) return bad(n, "has an operand of unknown rank");
        if (pos < 0 || dim(in, pos) == 1 || (!mx && expandedFromOne(in, pos)) || (mx && expandedOverMerged(u, in, pos, *mx))) continue;
        if (!mx && g_.isInitializer(in) && dim(in, pos) == size) u.slices.push_back({i, static_cast<int>(j), pos, px});
        else return bad(n, "mixes heads with a value that is not per head");
      }
      return follow(x, out, ao, px) || bad(n, "has no fixed head axis");
    }
    if (mx && n.op != "Transpose" && n.op != "Reshape" && n.op != "MatMul") return bad(n, "reads a head axis merged with the batch axis");
    if (n.op == "Transpose") {
      auto perm = n.attrInts("perm");
      auto it = std::find(perm.begin(), perm.end(), a);
      if (it == perm.end()) return bad(n, "has no permutation");
      return follow(x, out, static_cast<int>(it - perm.begin()), px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Unsqueeze") {
      auto axes = constInts(g_, n.inputs.size() > 1 ? n.inputs[1] : "");
      if (axes.empty()) axes = n.attrInts("axes");
      for (auto& v : axes) v = norm(v, R);
      std::sort(axes.begin(), axes.end());
      int ao = a;
      for (auto v : axes)
        if (v <= ao) ++ao;
      return track(out, ao, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Squeeze") {
      auto axes = constInts(g_, n.inputs.size() > 1 ? n.inputs[1] : "");
      int ao = a;
      for (auto v : axes) {
        if (norm(v, r) == a) return bad(n, "removes the head axis");
        if (norm(v, r) < a) --ao;
      }
      if (axes.empty()) return bad(n, "squeezes unknown axes");
      return track(out, ao, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Slice") {
      if (tracked[0] != 0) return bad(n, "slices by head-shaped indices");
      auto starts = constInts(g_, n.inputs[1]);
      auto axes = n.inputs.size() > 3 ? constInts(g_, n.inputs[3]) : std::vector<int64_t>{};
      if (axes.empty())
        for (size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<int64_t>(k));
      for (auto v : axes)
        if (norm(v, r) == a) return bad(n, "slices the head axis");
      return track(out, a, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Split") return split(i, u, a, r, px);
    if (n.op == "Gather") {  // indexing another axis (RoPE's x[..., 0] of pairs) keeps the heads
      if (tracked[0] != 0 || axis_.count(n.inputs[1])) return bad(n, "gathers by head-shaped indices");
      const int ga = norm(n.attrInt("axis", 0), r), ri = rank(n.inputs[1]);
      if (ga == a || ri < 0) return bad(n, "gathers along the head axis");
      return track(out, a < ga ? a : a + ri - 1, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Concat") {
      if (norm(n.attrInt("axis", 0), r) == a) return bad(n, "concatenates along the head axis");
      for (const auto& in : n.inputs)
        if (!axis_.count(in) || axis_.at(in) != a || partsOf(in) != px) return bad(n, "joins per-head and other values");
      return track(out, a, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Reshape") {
      if (tracked[0] != 0) return bad(n, "takes its shape from a head-shaped value");
      const Shape* si = shape(x);
      const Shape* so = shape(out);
      if (!si || !so) return bad(n, "has unknown shapes");
      if (mx) return split(i, u, *si, *so, a, *mx);
      if (int m = mergedAxis(i, u, *si, *so, a); m >= 0) return trackMerged(out, m, Merged{dim(x, a), (*si)[static_cast<size_t>(a - 1)]});
      // The output axis whose prefix holds exactly the input's dims before the head axis.
      const auto want = dimsKey(*si, static_cast<size_t>(a));
      int ao = -1;
      for (int k = 0; k < R; ++k)
        if (dimsKey(*so, static_cast<size_t>(k)) == want && (*so)[k].isFixed() && (*so)[k].value > 1) {
          ao = k;
          break;
        }
      if (ao < 0) return bad(n, "merges the head axis with the axes before it");
      if (px > 1 && dim(out, ao) != dim(x, a)) return bad(n, "splits a fused projection's head axis before its parts are split");
      if (!shapeElement(u, i, 1, ao, dim(out, ao))) return bad(n, "takes the head axis size from a tensor without heads");
      return track(out, ao, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "Expand") {
      if (tracked[0] != 0) return bad(n, "takes its shape from a head-shaped value");
      int ao = a + R - r;
      if (!shapeElement(u, i, 1, ao, dim(out, ao))) return bad(n, "takes the head axis size from a tensor without heads");
      return track(out, ao, px) || bad(n, "has no fixed head axis");
    }
    if (n.op == "MatMul") {
      auto lin = linear_of_node_.find(n.name);
      if (lin != linear_of_node_.end()) {
        if (tracked[0] != 0 || a != r - 1 || px > 1) return bad(n, "is a linear layer that does not contract the head axis");
        sinks_.push_back(lin->second.weight);
        return true;
      }
      int ao = -1;
      for (int j : tracked) {
        int aj = axis_.at(n.inputs[j]), rj = rank(n.inputs[j]);
        if (aj >= rj - 2 || partsOf(n.inputs[j]) > 1) return bad(n, "multiplies along the head axis");
        int v = aj + R - rj;
        if (ao >= 0 && v != ao) return bad(n, "combines head axes that do not line up");
        ao = v;
      }
      for (size_t j = 0; j < 2; ++j)
        if (!axis_.count(n.inputs[j])) {
          int rj = rank(n.inputs[j]), pos = ao - (R - rj);
          if (pos >= 0 && pos < rj - 2 && dim(n.inputs[j], pos) != 1) return bad(n, "mixes heads with a value that is not per head");
        }
      return follow(x, out, ao, px) || bad(n, "has no fixed head axis");
    }
    return bad(n, "reads the head axis in a way structured pruning does not follow");
  }
};

}  // namespace

/// How many parts a Split cuts a projection's output into along its last axis (through its bias and
/// reshapes that keep the last axis): GPT-2's c_attn output splits into q, k, v. 1 when it is not split.
int64_t fusedParts(const Graph& g, const LinearRef& l) {
  std::string v = g.nodes[static_cast<size_t>(l.node)].outputs[0];
  for (int hop = 0; hop < 4; ++hop) {
    auto cons = g.consumers(v);
    if (cons.size() != 1) return 1;
    const Node& n = g.nodes[static_cast<size_t>(cons[0])];
    auto it = g.values.find(v);
    const int64_t r = it != g.values.end() && it->second.shape ? static_cast<int64_t>(it->second.shape->size()) : -1;
    if (n.op == "Split" && n.inputs[0] == v) {
      int64_t axis = n.attrInt("axis", 0);
      return r > 0 && (axis == -1 || axis == r - 1) && n.outputs.size() >= 2 ? static_cast<int64_t>(n.outputs.size()) : 1;
    }
    const bool bias = n.op == "Add" && (g.isInitializer(n.inputs[0]) || g.isInitializer(n.inputs[1]));
    if (!bias && n.op != "Reshape") return 1;
    v = n.outputs[0];
  }
  return 1;
}

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
    // The nearest groups of two or more float projections before `o` (q/k/v sit just before their o), or a
    // fused projection whose output is split into q/k/v.
    std::string last_reason = "no group of projections sharing an input (nor a fused q/k/v projection) precedes it";
    int tried = 0;
    for (auto it = shared.rbegin(); it != shared.rend() && tried < 3; ++it) {
      const auto& group = it->second;
      const int64_t parts = group.size() == 1 ? fusedParts(g, by_weight.at(group[0])) : 1;
      std::vector<int> starts;
      bool usable = true;  // one projection too: fused q/k/v, split into parts (GPT-2) or laid out per head (GPT-NeoX)
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
      if (t.run(starts, parts, u, reason) && u.o == o) {
        u.projections = group;
        u.parts = parts;
        bool divisible = true;
        for (const auto& w : group) {
          const at::Tensor& W = g.initializers.at(w);
          divisible = divisible && (by_weight.at(w).transposed ? W.size(0) : W.size(1)) % (u.groups * parts) == 0;
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
  // Positions of the kept slices of an axis of `size` holding `parts` copies of the G-slice head layout.
  auto index = [&](int64_t size, int64_t parts) {
    const int64_t part = size / parts, w = part / G;
    std::vector<at::Tensor> pieces;
    auto acc = keep.accessor<int64_t, 1>();
    for (int64_t p = 0; p < parts; ++p)
      for (int64_t k = 0; k < K; ++k) pieces.push_back(at::arange(p * part + acc[k] * w, p * part + (acc[k] + 1) * w, at::kLong));
    return at::cat(pieces);
  };
  const auto transposed = linearLayouts(g);
  auto slice = [&](const std::string& name, int64_t dim, int64_t parts) {
    sliceInitializer(g, name, dim, index(g.initializers.at(name).size(dim), parts));
  };
  for (const auto& p : u.projections) slice(p, transposed.at(p) ? 0 : 1, u.parts);
  slice(u.o, transposed.at(u.o) ? 1 : 0, 1);
  for (const auto& s : u.slices) {
    std::string name = g.nodes[s.node].inputs[s.input];
    if (g.consumers(name).size() == 1) {
      slice(name, s.dim, s.parts);
    } else {  // shared with another node: this node gets its own sliced copy
      std::string fresh = g.freshName(name + ".heads");
      g.initializers[fresh] = g.initializers.at(name).index_select(s.dim, index(g.initializers.at(name).size(s.dim), s.parts));
      g.nodes[s.node].inputs[s.input] = fresh;
    }
  }
  std::set<std::tuple<int, int, int64_t>> done;  // each element once (a Split's sizes hold several)
  for (const auto& r : u.resizes) {
    if (!done.insert({r.node, r.input, r.element}).second) continue;
    if (r.size > 0) {  // a computed size: this node reads a constant instead
      if (r.size % G != 0) fail(ErrorCategory::Internal, "structured-prune: a size of " + std::to_string(r.size) + " does not split into " + std::to_string(G) + " groups");
      const std::string fresh = g.freshName("heads.size");
      g.initializers[fresh] = at::tensor(std::vector<int64_t>{r.size / G * K}, at::kLong);
      g.values[fresh] = ValueInfo{DType::Int64, Shape{Dim::fixed(1)}};
      g.nodes[r.node].inputs[r.input] = fresh;
      continue;
    }
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
