// kv_cache.cpp — the cached-decoder rewrite (kv_cache.h), in named steps: probe the shapes, find the
// attention cores, cache each core's keys/values, re-base the position-dependent constants on the total
// length, re-sort, re-infer shapes, check against the full-sequence logits.
#include "compress/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <map>
#include <set>

#include "compress/error.h"
#include "compress/executor.h"
#include "runtime/op_table.h"

namespace compress {

std::string pastName(int layer, bool value) { return "past." + std::to_string(layer) + (value ? ".value" : ".key"); }
std::string presentName(int layer, bool value) { return "present." + std::to_string(layer) + (value ? ".value" : ".key"); }

namespace {

constexpr int64_t kProbeSeq[2] = {11, 13};  // two lengths: an axis whose size follows them is a sequence axis

/// Concrete shapes of every value for two sequence lengths (batch 1).
struct Probe {
  std::map<std::string, std::vector<int64_t>> shape[2];
  int64_t vocab = 0;

  const std::vector<int64_t>& of(const std::string& v) const {
    auto it = shape[0].find(v);
    if (it == shape[0].end()) fail(ErrorCategory::Internal, "kv-cache rewrite: no probe shape for '" + v + "'");
    return it->second;
  }
  /// Axes of `v` whose size is the sequence length.
  std::vector<int> seqAxes(const std::string& v) const {
    std::vector<int> axes;
    auto a = shape[0].find(v), b = shape[1].find(v);
    if (a == shape[0].end() || b == shape[1].end() || a->second.size() != b->second.size()) return axes;
    for (size_t i = 0; i < a->second.size(); ++i)
      if (a->second[i] == kProbeSeq[0] && b->second[i] == kProbeSeq[1]) axes.push_back(static_cast<int>(i));
    return axes;
  }
};

Probe probeShapes(const Graph& g) {
  Probe p;
  for (int r = 0; r < 2; ++r) {
    ExecOptions opts;
    opts.fold_constants = false;
    Executor ex(g, opts);
    ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& outs) {
      for (size_t k = 0; k < outs.size() && k < n.outputs.size(); ++k) p.shape[r][n.outputs[k]] = outs[k].sizes().vec();
    });
    std::map<std::string, at::Tensor> in;
    for (size_t i = 0; i < g.inputs.size(); ++i) {  // token ids (zeros), then attention masks (ones)
      at::Tensor t = (i == 0 ? at::zeros({1, kProbeSeq[r]}, at::kLong) : at::ones({1, kProbeSeq[r]}, at::kLong));
      in[g.inputs[i]] = t.to(toScalarType(g.values.at(g.inputs[i]).dtype));
      p.shape[r][g.inputs[i]] = t.sizes().vec();
    }
    auto outs = ex.run(in);
    for (const auto& [name, t] : g.initializers) p.shape[r][name] = t.sizes().vec();
    if (r == 0) p.vocab = outs[0].dim() == 3 ? outs[0].size(2) : 0;
  }
  return p;
}

/// Position-like values: what depends only on the token input's shape, constants and the attention-mask
/// inputs (Shape outputs, RoPE tables, position ids, masks), not on the token ids themselves.
std::set<std::string> staticValues(const Graph& g) {
  std::set<std::string> st;
  for (const auto& [name, t] : g.initializers) st.insert(name);
  for (size_t i = 1; i < g.inputs.size(); ++i) st.insert(g.inputs[i]);  // attention masks
  for (const Node& n : g.nodes) {
    bool s = n.domain.empty() && crt::opHas(n.op, crt::op_trait::ShapeOnly);
    if (!s) {
      s = !n.inputs.empty();
      for (const auto& in : n.inputs) s = s && (in.empty() || st.count(in));
    }
    if (s)
      for (const auto& o : n.outputs) st.insert(o);
  }
  return st;
}

/// One attention core: scores = MatMul(q, k_mm), elementwise steps, Softmax, MatMul(probs, v_mm).
struct Core {
  int qk = -1, pv = -1;
  std::set<int> score_nodes;     // nodes between the two MatMuls that carry the scores
  std::vector<int> score_reshapes;  // Reshapes among them (their last dim is the key length)
  int64_t heads = 0, head_dim = 0;
  bool k_merged = false, v_merged = false;  // MatMul operands in the 3-D [batch*heads, ., .] form
};

bool isLayoutOp(const Node& n) {
  return n.domain.empty() && (crt::opHas(n.op, crt::op_trait::View) || n.op == "Transpose" || n.op == "Expand");
}

class Rewriter {
 public:
  /// pushCuts: newRows (the new tokens' rows computed from the new rows of their inputs) instead of cutting every
  /// position-dependent value after computing it for the whole length.
  Rewriter(Graph& g, bool pushCuts) : g_(g), probe_((checkInputs(g), probeShapes(g))), static_(staticValues(g)), push_cuts_(pushCuts) {}

  KvCacheInfo run() {
    if (probe_.vocab <= 0) fail(ErrorCategory::Model, "kv_cache: the first output must be logits [batch, seq, vocab]");
    const ValueInfo& vi = g_.values.at(g_.inputs[0]);
    specs_[g_.inputs[0]] = {vi.dtype, Shape{Dim::sym("batch"), Dim::sym("seq")}};
    for (size_t i = 1; i < g_.inputs.size(); ++i) {  // masks cover the cached tokens too
      ValueInfo& m = g_.values.at(g_.inputs[i]);
      m.shape = Shape{Dim::sym("batch"), Dim::sym("past+seq")};
      specs_[g_.inputs[i]] = {m.dtype, *m.shape};
    }
    findCores();
    addCommonValues();
    for (size_t i = 0; i < cores_.size(); ++i) cacheCore(static_cast<int>(i));
    rebasePositions();
    for (Node& n : new_nodes_) g_.nodes.push_back(std::move(n));
    new_nodes_.clear();
    for (int i = 0; i < info_.layers; ++i) {
      g_.outputs.push_back(presentName(i, false));
      g_.outputs.push_back(presentName(i, true));
    }
    sortTopologically();
    g_.pruneUnused();
    return info_;
  }
  const std::map<std::string, std::pair<DType, Shape>>& inputSpecs() const { return specs_; }
  const Probe& probe() const { return probe_; }

 private:
  // ------------------------------------------------------------------ step 1: what the rewrite accepts
  /// The token ids first; any further input is an attention mask [batch, seq] (in the cached graph
  /// [batch, past+seq], as optimum's).
  static void checkInputs(const Graph& g) {
    const ValueInfo& vi = g.values.at(g.inputs[0]);
    if (vi.dtype != DType::Int64 && vi.dtype != DType::Int32)
      fail(ErrorCategory::Model, "kv_cache: the first input '" + g.inputs[0] + "' must be integer token ids");
    for (size_t i = 1; i < g.inputs.size(); ++i) {
      const ValueInfo& m = g.values.at(g.inputs[i]);
      const bool maskShape = m.shape && m.shape->size() == 2 && (*m.shape)[1].symbol == "seq";
      if (!maskShape || m.dtype == DType::Float16 || m.dtype == DType::Float32)
        fail(ErrorCategory::Model, "kv_cache: input '" + g.inputs[i] + "' is not an integer attention mask [batch, seq]; the cached export "
                                   "takes the token ids and attention masks only");
    }
  }

  // ------------------------------------------------------------------ step 2: attention cores
  int producer(const std::string& v) const {
    auto it = producer_.find(v);
    return it == producer_.end() ? -1 : it->second;
  }
  std::vector<int> consumers(const std::string& v) const {
    std::vector<int> c;
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      for (const auto& in : g_.nodes[i].inputs)
        if (in == v) {
          c.push_back(static_cast<int>(i));
          break;
        }
    return c;
  }
  bool isStatic(const std::string& v) const { return static_.count(v) != 0; }

  void findCores() {
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      for (const auto& o : g_.nodes[i].outputs) producer_[o] = static_cast<int>(i);
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      if (n.op != "Softmax" || !n.domain.empty()) continue;
      Core c;
      if (!followScores(static_cast<int>(i), c)) continue;
      cores_.push_back(c);
    }
    if (cores_.empty())
      fail(ErrorCategory::Model, "kv_cache: no causal self-attention found (Softmax between two MatMuls over the keys); "
                                 "is this a decoder?");
    std::sort(cores_.begin(), cores_.end(), [](const Core& a, const Core& b) { return a.qk < b.qk; });
    info_.layers = static_cast<int>(cores_.size());
  }

  /// From a Softmax: forward through casts to MatMul(probs, v), backward through elementwise steps to
  /// MatMul(q, k). False when this Softmax is not an attention's.
  bool followScores(int softmax, Core& c) {
    std::string cur = g_.nodes[softmax].outputs[0];
    c.score_nodes.insert(softmax);
    for (;;) {
      auto cons = consumers(cur);
      if (cons.size() != 1) return false;
      const Node& n = g_.nodes[cons[0]];
      if (n.op == "Cast" || (n.op == "Reshape" && n.inputs[0] == cur)) {
        c.score_nodes.insert(cons[0]);
        if (n.op == "Reshape") c.score_reshapes.push_back(cons[0]);
        cur = n.outputs[0];
        continue;
      }
      if (n.op != "MatMul" || n.inputs[0] != cur) return false;
      c.pv = cons[0];
      break;
    }
    cur = g_.nodes[softmax].inputs[0];
    for (;;) {
      const int p = producer(cur);
      if (p < 0) return false;
      const Node& n = g_.nodes[p];
      if (n.op == "MatMul") {
        if (isStatic(n.inputs[0]) || isStatic(n.inputs[1])) return false;
        c.qk = p;
        break;
      }
      static const std::set<std::string> kSteps = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Max", "Min", "Reshape"};
      if (!kSteps.count(n.op)) return false;
      std::string dyn;
      for (const auto& in : n.inputs) {
        if (in.empty() || isStatic(in)) continue;
        if (!dyn.empty())
          fail(ErrorCategory::Model, "kv_cache: the attention scores at " + n.name +
                                         " (" + n.source + ") mix in a second dynamic tensor (an attention_mask input?); "
                                         "the cached export supports causal masks computed from the length only");
        dyn = in;
      }
      if (dyn.empty()) return false;
      c.score_nodes.insert(p);
      if (n.op == "Reshape") c.score_reshapes.push_back(p);
      cur = dyn;
    }
    return checkLayout(c);
  }

  /// q [1, H, s, D] or [H, s, D] (batch*heads merged, batch 1 in the probe); k^T [.., D, s]; v [.., s, D].
  bool checkLayout(Core& c) const {
    const std::string& qv = g_.nodes[c.qk].inputs[0];
    const std::string& kv = g_.nodes[c.qk].inputs[1];
    const std::string& vv = g_.nodes[c.pv].inputs[1];
    const auto& q = probe_.of(qv);
    const auto& k = probe_.of(kv);
    const auto& v = probe_.of(vv);
    const std::string where = g_.nodes[c.qk].name + " (" + g_.nodes[c.qk].source + ")";
    auto rankOk = [](const std::vector<int64_t>& s) { return s.size() == 3 || s.size() == 4; };
    if (!rankOk(q) || !rankOk(k) || !rankOk(v))
      fail(ErrorCategory::Model, "kv_cache: the attention at " + where + " is neither [batch, heads, seq, dim] nor [batch*heads, seq, dim]");
    const int qs = static_cast<int>(q.size()) - 2, ks = static_cast<int>(k.size()) - 1, vs = static_cast<int>(v.size()) - 2;
    if (probe_.seqAxes(qv) != std::vector<int>{qs} || probe_.seqAxes(kv) != std::vector<int>{ks} ||
        probe_.seqAxes(vv) != std::vector<int>{vs})
      fail(ErrorCategory::Model, "kv_cache: the attention at " + where + " is not in the [.., heads, seq, dim] layout");
    c.heads = q.size() == 4 ? q[1] : q[0];
    c.head_dim = q.back();
    c.k_merged = k.size() == 3;
    c.v_merged = v.size() == 3;
    if ((c.k_merged && k[0] != c.heads) || (c.v_merged && v[0] != c.heads) || k[k.size() - 2] != c.head_dim || v.back() != c.head_dim)
      fail(ErrorCategory::Model, "kv_cache: the attention at " + where + " has keys/values that do not match its queries");
    return true;
  }

  // ------------------------------------------------------------------ step 3: cache keys and values
  std::string addNode(const std::string& op, std::vector<std::string> inputs, std::map<std::string, Attribute> attrs,
                      const std::string& base) {
    Node n;
    n.op = op;
    n.name = fresh("kv_" + op);
    n.inputs = std::move(inputs);
    n.attrs = std::move(attrs);
    n.source = "kv-cache rewrite";
    n.outputs = {fresh(base)};
    g_.values[n.outputs[0]] = ValueInfo{};
    const std::string out = n.outputs[0];
    new_nodes_.push_back(std::move(n));
    return out;
  }
  std::string addConst(const std::vector<int64_t>& v, const std::string& base) {
    const std::string name = fresh(base);
    g_.initializers[name] = at::tensor(v, at::kLong);
    g_.values[name] = ValueInfo{DType::Int64, Shape{Dim::fixed(static_cast<int64_t>(v.size()))}};
    return name;
  }
  std::string fresh(const std::string& base) {
    std::string n = base;
    for (int i = 1; g_.values.count(n) || g_.initializers.count(n) || taken_.count(n); ++i) n = base + "_" + std::to_string(i);
    taken_.insert(n);
    return n;
  }

  /// The graph's token count S, past length P and total T = P + S as [1] int64 tensors.
  void addCommonValues() {
    const std::string past0 = pastName(0, false);
    const std::string tokShape = addNode("Shape", {g_.inputs[0]}, {}, "kv_token_shape");
    seq1_ = addNode("Slice", {tokShape, addConst({1}, "kv_one"), addConst({2}, "kv_two")}, {}, "kv_seq");
    const std::string pastShape = addNode("Shape", {past0}, {}, "kv_past_shape");
    past1_ = addNode("Slice", {pastShape, addConst({2}, "kv_two"), addConst({3}, "kv_three")}, {}, "kv_past_len");
    total1_ = addNode("Add", {seq1_, past1_}, {}, "kv_total_len");
  }

  /// The per-head tensor a MatMul operand is a layout of: followed back through reshapes, transposes
  /// and the GQA repeat to the [1, s, h, D] or [1, h, s, D] value with the fewest heads.
  std::pair<std::string, int> cachePoint(const std::string& operand, int64_t heads, int64_t head_dim, const std::string& what,
                                         const Core& c) {
    std::string best;
    int best_axis = -1;
    int64_t best_heads = INT64_MAX;
    std::string cur = operand;
    for (;;) {
      const auto& s = probe_.of(cur);
      const auto axes = probe_.seqAxes(cur);
      if (s.size() == 4 && s[0] == 1 && axes.size() == 1 && (axes[0] == 1 || axes[0] == 2) && s[3] == head_dim) {
        const int64_t h = s[axes[0] == 1 ? 2 : 1];
        if (h > 0 && heads % h == 0 && h <= best_heads) best = cur, best_axis = axes[0], best_heads = h;
      }
      const int p = producer(cur);
      if (p < 0 || !isLayoutOp(g_.nodes[p]) || isStatic(g_.nodes[p].inputs[0])) break;
      cur = g_.nodes[p].inputs[0];
    }
    if (best.empty())
      fail(ErrorCategory::Model, "kv_cache: the " + what + " of the attention at " + g_.nodes[c.qk].name + " (" +
                                     g_.nodes[c.qk].source + ") are not a per-head [batch, seq, heads, " + std::to_string(head_dim) +
                                     "] tensor reshaped into place");
    return {best, best_axis};
  }

  /// repeat_kv: [B, h, T, D] -> [B, h * n_rep, T, D], head j reading kv head j / n_rep.
  std::string repeatHeads(const std::string& x, int64_t n_rep, int64_t heads, int64_t head_dim) {
    if (n_rep == 1) return x;
    const std::string u = addNode("Unsqueeze", {x, addConst({2}, "kv_axis2")}, {}, x + ".unsq");
    const std::string e = addNode("Expand", {u, addConst({1, 1, n_rep, 1, 1}, "kv_repeat")}, {}, x + ".expand");
    return addNode("Reshape", {e, addConst({0, heads, -1, head_dim}, "kv_heads_shape")}, {}, x + ".repeat");
  }

  void cacheCore(int layer) {
    Core& c = cores_[layer];
    auto [k_src, k_axis] = cachePoint(g_.nodes[c.qk].inputs[1], c.heads, c.head_dim, "keys", c);
    auto [v_src, v_axis] = cachePoint(g_.nodes[c.pv].inputs[1], c.heads, c.head_dim, "values", c);
    const int64_t kvh = probe_.of(k_src)[k_axis == 1 ? 2 : 1];
    if (probe_.of(v_src)[v_axis == 1 ? 2 : 1] != kvh)
      fail(ErrorCategory::Model, "kv_cache: keys and values of " + g_.nodes[c.qk].name + " have different head counts");
    if (layer == 0) info_.heads = c.heads, info_.kv_heads = kvh, info_.head_dim = c.head_dim;
    else if (kvh != info_.kv_heads || c.head_dim != info_.head_dim)
      fail(ErrorCategory::Model, "kv_cache: layers with different kv-head counts or head sizes are not supported");
    std::string cached[2];
    const std::string src[2] = {k_src, v_src};
    const int axis[2] = {k_axis, v_axis};
    for (int kv = 0; kv < 2; ++kv) {
      const DType dt = g_.values.at(src[kv]).dtype;
      const std::string past = pastName(layer, kv == 1);
      g_.inputs.push_back(past);
      g_.values[past] = ValueInfo{dt, Shape{Dim::sym("batch"), Dim::fixed(kvh), Dim::sym("past"), Dim::fixed(c.head_dim)}};
      specs_[past] = {dt, *g_.values[past].shape};
      const std::string x = axis[kv] == 1 ? addNode("Transpose", {src[kv]}, {{"perm", std::vector<int64_t>{0, 2, 1, 3}}}, src[kv] + ".bhsd")
                                          : src[kv];
      Node cat;
      cat.op = "Concat";
      cat.name = fresh("kv_Concat");
      cat.inputs = {past, x};
      cat.outputs = {presentName(layer, kv == 1)};
      cat.attrs["axis"] = int64_t{2};
      cat.source = "kv-cache rewrite";
      g_.values[cat.outputs[0]] = ValueInfo{};
      taken_.insert(cat.outputs[0]);
      new_nodes_.push_back(cat);
      cached[kv] = repeatHeads(cat.outputs[0], c.heads / kvh, c.heads, c.head_dim);
    }
    std::string kt = addNode("Transpose", {cached[0]}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}}, cached[0] + ".t");
    std::string v = cached[1];
    if (c.k_merged)  // [B, H, D, T] -> [B*H, D, T]
      kt = addNode("Reshape", {kt, addNode("Concat", {addConst({-1, c.head_dim}, "kv_bh_d"), total1_}, {{"axis", int64_t{0}}}, "kv_kt_shape")}, {},
                   kt + ".bh");
    if (c.v_merged)  // [B, H, T, D] -> [B*H, T, D]
      v = addNode("Reshape", {v, addNode("Concat", {addConst({-1}, "kv_bh"), total1_, addConst({c.head_dim}, "kv_d")}, {{"axis", int64_t{0}}}, "kv_v_shape")},
                  {}, v + ".bh");
    g_.nodes[c.qk].inputs[1] = kt;
    g_.nodes[c.pv].inputs[1] = v;
    for (int r : c.score_reshapes) {  // the scores' last axis is the key length: let the Reshape infer it
      Node& n = g_.nodes[r];
      n.inputs[1] = addNode("Concat", {addNode("Slice", {n.inputs[1], addConst({0}, "kv_zero"), addConst({-1}, "kv_minus1")}, {}, "kv_score_dims"),
                                       addConst({-1}, "kv_minus1")},
                            {{"axis", int64_t{0}}}, "kv_score_shape");
    }
  }

  // ------------------------------------------------------------------ step 4: positions on the total length
  /// Shape(x) with every sequence axis of x replaced by the total length.
  std::string shapeWithTotal(const Node& shape_node) {
    const std::string& x = shape_node.inputs[0];
    const auto axes = probe_.seqAxes(x);
    const int64_t rank = static_cast<int64_t>(probe_.of(x).size());
    if (axes.empty()) return shape_node.outputs[0];
    const std::string full = addNode("Shape", {x}, {}, x + ".shape");
    std::vector<std::string> parts;
    for (int64_t a = 0; a < rank; ++a) {
      if (std::find(axes.begin(), axes.end(), a) != axes.end()) parts.push_back(total1_);
      else parts.push_back(addNode("Slice", {full, addConst({a}, "kv_at"), addConst({a + 1}, "kv_at_end")}, {}, x + ".dim"));
    }
    std::string s = addNode("Concat", parts, {{"axis", int64_t{0}}}, x + ".total_shape");
    if (shape_node.hasAttr("start") || shape_node.hasAttr("end")) {
      const int64_t start = shape_node.attrInt("start", 0), end = shape_node.attrInt("end", INT64_MAX);
      s = addNode("Slice", {s, addConst({start}, "kv_start"), addConst({end}, "kv_end")}, {}, x + ".total_shape_part");
    }
    return s;
  }

  /// The static value `v` recomputed with the total length in place of the sequence length.
  std::string withTotal(const std::string& v) {
    if (g_.isInitializer(v) || v.empty()) return v;
    if (std::find(g_.inputs.begin(), g_.inputs.end(), v) != g_.inputs.end()) return v;  // a mask: already past+seq long
    auto m = memo_.find(v);
    if (m != memo_.end()) return m->second;
    const int p = producer(v);
    if (p < 0) fail(ErrorCategory::Internal, "kv_cache: static value '" + v + "' has no producer");
    const Node src = g_.nodes[p];
    if (src.op == "Shape" && !isStatic(src.inputs[0])) return memo_[v] = shapeWithTotal(src);
    if (isSeqLength(src)) return memo_[v] = totalScalar();
    Node n = src;
    n.name = fresh(src.name + "_total");
    for (auto& in : n.inputs) in = withTotal(in);
    for (auto& o : n.outputs) {
      const std::string fresh_name = fresh(o + ".total");
      g_.values[fresh_name] = ValueInfo{};
      memo_[o] = fresh_name;
      o = fresh_name;
    }
    noteContext(src);
    new_nodes_.push_back(n);
    return memo_.at(v);
  }

  /// A table the positions index (a Slice or Gather of an initializer) bounds the context length.
  void noteContext(const Node& n) {
    if (n.inputs.empty() || !g_.isInitializer(n.inputs[0])) return;
    const at::Tensor& t = g_.initializers.at(n.inputs[0]);
    auto bound = [&](int64_t axis) {
      if (axis < 0) axis += t.dim();
      if (axis < 0 || axis >= t.dim()) return;
      const int64_t rows = t.size(axis);
      info_.context = info_.context ? std::min(info_.context, rows) : rows;
    };
    if (n.op == "Gather") {
      bound(n.attrInt("axis", 0));
    } else if (n.op == "Slice" && n.inputs.size() > 3 && g_.isInitializer(n.inputs[3])) {
      const at::Tensor axes = g_.initializers.at(n.inputs[3]).to(at::kLong).reshape({-1});
      for (int64_t i = 0; i < axes.numel(); ++i) bound(axes[i].item<int64_t>());
    }
  }

  bool onScorePath(int node) const {
    for (const Core& c : cores_)
      if (c.score_nodes.count(node)) return true;
    return false;
  }

  /// Static values with a sequence axis that dynamic nodes read (RoPE tables, position embeddings, masks):
  /// recomputed for the total length and cut to the last S rows (a mask keeps its last, key axis).
  void rebasePositions() {
    std::map<std::string, std::vector<std::pair<int, int>>> uses;  // value -> (node, input)
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      bool node_static = !n.outputs.empty() && isStatic(n.outputs[0]);
      if (node_static) continue;
      for (size_t k = 0; k < n.inputs.size(); ++k)
        if (!n.inputs[k].empty() && isStatic(n.inputs[k]) && !g_.isInitializer(n.inputs[k]) && !probe_.seqAxes(n.inputs[k]).empty())
          uses[n.inputs[k]].push_back({static_cast<int>(i), static_cast<int>(k)});
    }
    for (const auto& [v, readers] : uses) {
      int masks = 0;
      for (const auto& [node, input] : readers) masks += onScorePath(node) ? 1 : 0;
      if (masks != 0 && masks != static_cast<int>(readers.size()))
        fail(ErrorCategory::Model, "kv_cache: '" + v + "' is both an attention mask and a position input");
      auto axes = probe_.seqAxes(v);
      const int64_t rank = static_cast<int64_t>(probe_.of(v).size());
      if (masks) axes.erase(std::remove(axes.begin(), axes.end(), rank - 1), axes.end());
      std::string cut;
      if (axes.size() == 1 && push_cuts_) {
        cut = newRows(v, axes[0]);
      } else {
        cut = withTotal(v);
        for (int a : axes) cut = lastRows(cut, a, v);
      }
      for (const auto& [node, input] : readers) g_.nodes[node].inputs[input] = cut;
    }
  }

  /// Rows past.. of `total` along `axis` (the new tokens' rows of a value computed for the total length).
  std::string lastRows(const std::string& total, int axis, const std::string& base) {
    return addNode("Slice", {total, past1_, toEnd(), addConst({axis}, "kv_axis")}, {}, base + ".new_rows");
  }

  /// A Slice end that reaches every axis's end (INT64_MAX), made once.
  std::string toEnd() {
    if (big_.empty()) big_ = addConst({INT64_MAX}, "kv_to_end");
    return big_;
  }

  /// Whether n reads one sequence dim of a dynamic tensor's shape, Gather(Shape(x), i) with a scalar i: every layer's
  /// copy of it is the total length then, one value (so crun's load merges the per-layer position arithmetic built on
  /// it, HF LLaMA's and NeoX's rotary tables: crt's mergeDuplicates).
  bool isSeqLength(const Node& n) const {
    if (n.op != "Gather" || n.inputs.size() != 2 || !g_.isInitializer(n.inputs[1]) || n.attrInt("axis", 0) != 0) return false;
    const int sp = producer(n.inputs[0]);
    if (sp < 0 || g_.nodes[sp].op != "Shape" || isStatic(g_.nodes[sp].inputs[0]) || g_.nodes[sp].hasAttr("start") || g_.nodes[sp].hasAttr("end"))
      return false;
    const at::Tensor& idx = g_.initializers.at(n.inputs[1]);
    if (idx.dim() != 0) return false;
    const std::string& x = g_.nodes[sp].inputs[0];
    const int rank = rankOf(x);
    const int64_t a = idx.to(at::kLong).item<int64_t>();
    return isSeqAxis(x, static_cast<int>(a < 0 ? a + rank : a));
  }

  /// The total length T as an int64 scalar.
  std::string totalScalar() {
    if (total0_.empty()) total0_ = addNode("Reshape", {total1_, scalarShape()}, {}, "kv_total_scalar");
    return total0_;
  }

  std::string scalarShape() {
    if (scalar_shape_.empty()) {
      scalar_shape_ = fresh("kv_scalar_shape");
      g_.initializers[scalar_shape_] = at::empty({0}, at::kLong);
      g_.values[scalar_shape_] = ValueInfo{DType::Int64, Shape{Dim::fixed(0)}};
    }
    return scalar_shape_;
  }

  /// The past length as an int64 scalar (Trilu's diagonal offset).
  std::string pastScalar() {
    if (past0_.empty()) past0_ = addNode("Reshape", {past1_, scalarShape()}, {}, "kv_past_scalar");
    return past0_;
  }

  /// The static value `v` with only the new tokens' rows along `axis` (one of its sequence axes) and the total length
  /// on its other sequence axes: what lastRows(withTotal(v), axis) gives, computed from the new rows where the op
  /// allows (elementwise ops and their broadcast operands, Unsqueeze, Reshape, Expand, Trilu, Slice, Concat,
  /// Transpose, MatMul, Einsum, Gather). A causal mask [T, T] built and
  /// then cut to its last rows cost every decode step O(T^2): 7 ms per layer and token at T = 1500 in the GPT-NeoX
  /// fixture, where the step's attention took 0.3 ms; a rotary table [T, d] per layer costs O(T d). Anything else
  /// (Range, Cast of positions, CumSum, ...) is cut after it is computed: O(T) for the 1-D position vectors.
  std::string newRows(const std::string& v, int axis) {
    const auto key = std::make_pair(v, axis);
    if (auto m = rows_memo_.find(key); m != rows_memo_.end()) return m->second;
    const int p = producer(v);
    std::string out;
    if (p >= 0) {
      const Node src = g_.nodes[p];
      noteContext(src);  // (a table cut here bounds the context as withTotal's would)
      using Rule = std::string (Rewriter::*)(const Node&, int);
      static const std::map<std::string, Rule> kRules = {
          {"Unsqueeze", &Rewriter::unsqueezeRows}, {"Expand", &Rewriter::expandRows},       {"Trilu", &Rewriter::triluRows},
          {"Slice", &Rewriter::sliceRows},         {"Concat", &Rewriter::concatRows},       {"Transpose", &Rewriter::transposeRows},
          {"MatMul", &Rewriter::matmulRows},       {"Einsum", &Rewriter::einsumRows},       {"Gather", &Rewriter::gatherRows},
          {"Reshape", &Rewriter::reshapeRows}};
      const bool elementwise = crt::opHas(src.op, crt::op_trait::Bcast) || crt::opHas(src.op, crt::op_trait::Unary);
      const auto rule = kRules.find(src.op);
      if (src.domain.empty() && elementwise && src.outputs.size() == 1) out = elementwiseRows(src, axis);
      else if (src.domain.empty() && rule != kRules.end()) out = (this->*rule->second)(src, axis);
    }
    if (out.empty()) out = lastRows(withTotal(v), axis, v);
    return rows_memo_[key] = out;
  }

  int rankOf(const std::string& v) const { return static_cast<int>(probe_.of(v).size()); }
  bool isSeqAxis(const std::string& v, int axis) const {
    const auto axes = probe_.seqAxes(v);
    return axis >= 0 && std::find(axes.begin(), axes.end(), axis) != axes.end();
  }
  /// Operand `u` of a node whose output (rank `rank`) is cut along `axis`: its new rows where it carries that axis
  /// (multidirectional broadcasting aligns the trailing dims), else all of it (a broadcast dim of 1).
  std::string operandRows(const std::string& u, int axis, int rank) {
    if (u.empty()) return u;
    const int a = axis - (rank - rankOf(u));
    return isSeqAxis(u, a) ? newRows(u, a) : withTotal(u);
  }

  std::string elementwiseRows(const Node& src, int axis) {
    const int rank = rankOf(src.outputs[0]);
    std::vector<std::string> in;
    for (const auto& u : src.inputs) in.push_back(operandRows(u, axis, rank));
    return addNode(src.op, in, src.attrs, src.outputs[0] + ".new_rows");
  }

  std::string unsqueezeRows(const Node& src, int axis) {
    if (src.inputs.size() < 2 || !g_.isInitializer(src.inputs[1])) return {};
    const int rank = rankOf(src.outputs[0]);
    const at::Tensor axes = g_.initializers.at(src.inputs[1]).to(at::kLong).reshape({-1});
    int before = 0;
    for (int64_t i = 0; i < axes.numel(); ++i) {
      const int64_t a = axes[i].item<int64_t>() < 0 ? axes[i].item<int64_t>() + rank : axes[i].item<int64_t>();
      if (a == axis) return {};
      before += a < axis;
    }
    if (!isSeqAxis(src.inputs[0], axis - before)) return {};
    return addNode("Unsqueeze", {newRows(src.inputs[0], axis - before), src.inputs[1]}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Expand(x, shape) cut along `axis`: x's new rows expanded with 1 in the shape there, or x (a dim of 1 there)
  /// expanded to the new-token count.
  std::string expandRows(const Node& src, int axis) {
    const std::string& x = src.inputs[0];
    const std::string& shape = src.inputs[1];
    const int rank = rankOf(src.outputs[0]);
    const int len = static_cast<int>(probe_.of(shape).at(0));
    const int ax = axis - (rank - rankOf(x)), as = axis - (rank - len);
    const bool xRows = isSeqAxis(x, ax);
    if (as < 0) return {};
    const std::string dims = withDim(withTotal(shape), as, xRows ? addConst({1}, "kv_one") : seq1_);
    return addNode("Expand", {xRows ? newRows(x, ax) : withTotal(x), dims}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Slice(x, starts, ends, axes, steps) cut along `axis`: where it slices that axis with step 1 (llama2.c's and
  /// GPT-2's causal tables, mask[:, :, :T, :T]), the same Slice starting past rows later (a start that counts from
  /// the end keeps its sign: the slice spans T > past rows, so such a start is at most -T); where it slices other
  /// axes only, the same Slice of x's new rows.
  std::string sliceRows(const Node& src, int axis) {
    if (src.inputs.size() < 3) return {};
    const int rank = rankOf(src.outputs[0]);
    const int64_t len = probe_.of(src.inputs[1]).at(0);
    int64_t at = axis;  // the axis's position in starts / ends
    if (src.inputs.size() > 3 && !src.inputs[3].empty()) {
      if (!g_.isInitializer(src.inputs[3])) return {};
      const at::Tensor axes = g_.initializers.at(src.inputs[3]).to(at::kLong).reshape({-1});
      at = -1;
      for (int64_t i = 0; i < axes.numel(); ++i)
        if ((axes[i].item<int64_t>() + rank) % rank == axis) at = i;
    }
    if (at < 0) {  // another axis sliced: the same Slice of x's new rows
      if (!isSeqAxis(src.inputs[0], axis)) return {};
      std::vector<std::string> in = {newRows(src.inputs[0], axis)};
      for (size_t i = 1; i < src.inputs.size(); ++i) in.push_back(withTotal(src.inputs[i]));
      return addNode("Slice", in, src.attrs, src.outputs[0] + ".new_rows");
    }
    if (at >= len) return {};
    if (src.inputs.size() > 4 && !src.inputs[4].empty()) {
      if (!g_.isInitializer(src.inputs[4])) return {};
      if (g_.initializers.at(src.inputs[4]).to(at::kLong).reshape({-1})[at].item<int64_t>() != 1) return {};
    }
    std::vector<int64_t> onehot(static_cast<size_t>(len), 0);
    onehot[static_cast<size_t>(at)] = 1;
    const std::string shift = addNode("Mul", {addConst(onehot, "kv_onehot"), past1_}, {}, src.outputs[0] + ".start_shift");
    std::vector<std::string> in;
    for (const auto& u : src.inputs) in.push_back(withTotal(u));
    in[1] = addNode("Add", {in[1], shift}, {}, src.outputs[0] + ".new_starts");
    return addNode("Slice", in, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Concat on another axis (a rotary table's two halves): the inputs' new rows, concatenated.
  std::string concatRows(const Node& src, int axis) {
    const int rank = rankOf(src.outputs[0]);
    const int64_t c = (src.attrInt("axis", 0) + rank) % rank;
    if (c == axis) return {};
    std::vector<std::string> in;
    for (const auto& u : src.inputs) {
      if (!isSeqAxis(u, axis)) return {};
      in.push_back(newRows(u, axis));
    }
    return addNode("Concat", in, src.attrs, src.outputs[0] + ".new_rows");
  }

  std::string transposeRows(const Node& src, int axis) {
    const int rank = rankOf(src.outputs[0]);
    int from = rank - 1 - axis;  // (no perm: the axes reversed)
    if (src.hasAttr("perm")) {
      const auto& perm = std::get<std::vector<int64_t>>(src.attrs.at("perm"));
      if (axis >= static_cast<int>(perm.size())) return {};
      from = static_cast<int>((perm[axis] + rank) % rank);
    }
    if (!isSeqAxis(src.inputs[0], from)) return {};
    return addNode("Transpose", {newRows(src.inputs[0], from)}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// MatMul cut along its rows (A's rows), its columns (B's) or a broadcast batch axis (either operand's).
  std::string matmulRows(const Node& src, int axis) {
    const std::string &a = src.inputs[0], &b = src.inputs[1];
    const int rank = rankOf(src.outputs[0]), ra = rankOf(a), rb = rankOf(b);
    if (ra < 2 || rb < 2) return {};
    std::string na, nb;
    if (axis == rank - 2) {
      if (!isSeqAxis(a, ra - 2)) return {};
      na = newRows(a, ra - 2), nb = withTotal(b);
    } else if (axis == rank - 1) {
      if (!isSeqAxis(b, rb - 1)) return {};
      na = withTotal(a), nb = newRows(b, rb - 1);
    } else {
      na = operandRows(a, axis, rank), nb = operandRows(b, axis, rank);
    }
    return addNode("MatMul", {na, nb}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Einsum whose output label at `axis` comes from one operand, once (NeoX's "i,j->ij" of positions and
  /// frequencies): that operand's new rows.
  std::string einsumRows(const Node& src, int axis) {
    if (!src.hasAttr("equation")) return {};
    std::string eq;
    for (char ch : std::get<std::string>(src.attrs.at("equation")))
      if (ch != ' ') eq += ch;
    const size_t arrow = eq.find("->");
    if (arrow == std::string::npos || eq.find('.') != std::string::npos) return {};
    const std::string out = eq.substr(arrow + 2);
    if (axis >= static_cast<int>(out.size())) return {};
    const char label = out[static_cast<size_t>(axis)];
    std::vector<std::string> terms;
    for (size_t p = 0; p <= arrow;) {
      const size_t q = std::min(eq.find(',', p), arrow);
      terms.push_back(eq.substr(p, q - p));
      p = q + 1;
    }
    if (terms.size() != src.inputs.size()) return {};
    int which = -1, at = -1;
    for (size_t k = 0; k < terms.size(); ++k) {
      const auto n = std::count(terms[k].begin(), terms[k].end(), label);
      if (n == 0) continue;
      if (n > 1 || which >= 0) return {};
      which = static_cast<int>(k), at = static_cast<int>(terms[k].find(label));
    }
    if (which < 0 || !isSeqAxis(src.inputs[which], at)) return {};
    std::vector<std::string> in;
    for (size_t k = 0; k < src.inputs.size(); ++k) in.push_back(static_cast<int>(k) == which ? newRows(src.inputs[k], at) : withTotal(src.inputs[k]));
    return addNode("Einsum", in, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Gather(table, positions) cut along an axis of the positions (GPT-2's and OPT's learned position embeddings):
  /// the table's rows at the new positions.
  std::string gatherRows(const Node& src, int axis) {
    const std::string &x = src.inputs[0], &idx = src.inputs[1];
    const int rx = rankOf(x);
    const int g = static_cast<int>((src.attrInt("axis", 0) + rx) % rx);
    const int ai = axis - g;
    if (ai < 0 || ai >= rankOf(idx) || !isSeqAxis(idx, ai)) return {};
    return addNode("Gather", {withTotal(x), newRows(idx, ai)}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// Reshape that keeps the cut axis whole (the same number of elements before it, as llama2.c's [T, d] -> [1, T, 1,
  /// d] of its rotary tables): the input's new rows, reshaped with the new-token count there.
  std::string reshapeRows(const Node& src, int axis) {
    const std::string &x = src.inputs[0], &shape = src.inputs[1];
    const auto& in = probe_.of(x);
    const auto& out = probe_.of(src.outputs[0]);
    if (probe_.of(shape).at(0) != static_cast<int64_t>(out.size())) return {};
    int64_t before = 1;
    for (int d = 0; d < axis; ++d) before *= out[static_cast<size_t>(d)];
    int from = -1;
    int64_t b = 1;
    for (int d = 0; d < static_cast<int>(in.size()); ++d) {
      if (b == before && in[static_cast<size_t>(d)] == out[static_cast<size_t>(axis)] && isSeqAxis(x, d)) {
        from = d;
        break;
      }
      b *= in[static_cast<size_t>(d)];
    }
    if (from < 0) return {};
    return addNode("Reshape", {newRows(x, from), withDim(withTotal(shape), axis, seq1_)}, src.attrs, src.outputs[0] + ".new_rows");
  }

  /// The shape vector `dims` with element `at` replaced by the one-element `value`.
  std::string withDim(const std::string& dims, int at, const std::string& value) {
    const std::string head = addNode("Slice", {dims, addConst({0}, "kv_zero"), addConst({at}, "kv_at")}, {}, dims + ".head");
    const std::string tail = addNode("Slice", {dims, addConst({at + 1}, "kv_at_end"), toEnd()}, {}, dims + ".tail");
    return addNode("Concat", {head, value, tail}, {{"axis", int64_t{0}}}, dims + ".new_rows");
  }

  /// Trilu(X, k) cut to rows past..: Trilu of X's new rows with the diagonal moved by past (row i of the cut is row
  /// past + i of the whole: j <= i + k becomes j <= i + (k + past), and the same for the upper triangle).
  std::string triluRows(const Node& src, int axis) {
    const std::string& x = src.inputs[0];
    if (axis != rankOf(x) - 2 || !isSeqAxis(x, axis)) return {};
    const std::string k = src.inputs.size() > 1 && !src.inputs[1].empty()
                              ? addNode("Add", {withTotal(src.inputs[1]), pastScalar()}, {}, src.outputs[0] + ".diagonal")
                              : pastScalar();
    return addNode("Trilu", {newRows(x, axis), k}, src.attrs, src.outputs[0] + ".new_rows");
  }

  // ------------------------------------------------------------------ step 5: order
  void sortTopologically() {
    std::map<std::string, int> prod;
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      for (const auto& o : g_.nodes[i].outputs) prod[o] = static_cast<int>(i);
    std::vector<char> state(g_.nodes.size(), 0);  // 0 new, 1 visiting, 2 done
    std::vector<Node> order;
    std::function<void(int)> visit = [&](int i) {
      if (state[i] == 2) return;
      if (state[i] == 1) fail(ErrorCategory::Internal, "kv_cache: the rewrite made a cycle at " + g_.nodes[i].name);
      state[i] = 1;
      for (const auto& in : g_.nodes[i].inputs) {
        auto it = prod.find(in);
        if (it != prod.end()) visit(it->second);
      }
      state[i] = 2;
      order.push_back(g_.nodes[i]);
    };
    for (size_t i = 0; i < g_.nodes.size(); ++i) visit(static_cast<int>(i));
    g_.nodes = std::move(order);
  }

  Graph& g_;
  Probe probe_;
  std::set<std::string> static_;
  std::map<std::string, int> producer_;
  std::vector<Core> cores_;
  std::vector<Node> new_nodes_;
  std::set<std::string> taken_;
  std::map<std::string, std::string> memo_;
  std::map<std::string, std::pair<DType, Shape>> specs_;
  bool push_cuts_ = true;
  std::string seq1_, past1_, total1_, past0_, total0_, scalar_shape_, big_;
  std::map<std::pair<std::string, int>, std::string> rows_memo_;  // newRows
  KvCacheInfo info_;
};

bool hasHalf(const Graph& g) {
  for (const auto& [n, t] : g.initializers)
    if (t.scalar_type() == at::kHalf) return true;
  return false;
}

/// Prefill of 4 tokens then a 3-token step through the cached graph against one full pass of 7 tokens.
double checkAgainstFull(const Graph& full, const Graph& cached, const KvCacheInfo& info, int64_t vocab) {
  at::NoGradGuard ng;
  const int64_t L = 7, split = 4;
  std::vector<int64_t> ids(L);
  for (int64_t i = 0; i < L; ++i) ids[i] = (i * 37 + 11) % vocab;
  const at::ScalarType it = toScalarType(full.values.at(full.inputs[0]).dtype);
  at::Tensor tok = at::tensor(ids, at::kLong).reshape({1, L}).to(it);
  auto ones = [&](const std::string& name, int64_t n) {
    return at::ones({1, n}, at::kLong).to(toScalarType(full.values.at(name).dtype));
  };
  std::map<std::string, at::Tensor> full_in = {{full.inputs[0], tok}};
  for (size_t i = 1; i < full.inputs.size(); ++i) full_in[full.inputs[i]] = ones(full.inputs[i], L);
  at::Tensor want = Executor(full).run(full_in)[0].to(at::kDouble);
  Executor ex(cached);
  std::map<std::string, at::Tensor> in;
  in[cached.inputs[0]] = tok.slice(1, 0, split).contiguous();
  for (size_t i = 1; i < full.inputs.size(); ++i) in[full.inputs[i]] = ones(full.inputs[i], split);
  for (int l = 0; l < info.layers; ++l)
    for (int kv = 0; kv < 2; ++kv) {
      const std::string p = pastName(l, kv == 1);
      in[p] = at::zeros({1, info.kv_heads, 0, info.head_dim}, at::TensorOptions().dtype(toScalarType(cached.values.at(p).dtype)));
    }
  auto first = ex.run(in);
  in[cached.inputs[0]] = tok.slice(1, split, L).contiguous();
  for (size_t i = 1; i < full.inputs.size(); ++i) in[full.inputs[i]] = ones(full.inputs[i], L);
  for (int l = 0; l < info.layers; ++l)
    for (int kv = 0; kv < 2; ++kv) in[pastName(l, kv == 1)] = first[full.outputs.size() + 2 * l + kv];
  auto second = ex.run(in);
  at::Tensor got = at::cat({first[0], second[0]}, 1).to(at::kDouble);
  if (got.sizes() != want.sizes())
    fail(ErrorCategory::Model, "kv_cache: the cached logits have shape " + c10::str(got.sizes()) + ", the model's " + c10::str(want.sizes()));
  return (got - want).abs().max().item<double>() / std::max(want.abs().max().item<double>(), 1e-30);
}

/// The longest sequence the model runs: the tables' bound, lowered while a full pass of that length fails
/// (OPT's learned positions sit at an offset of 2 in a table of context + 2 rows).
int64_t measuredContext(const Graph& full, int64_t bound) {
  if (bound <= 0) return 0;
  at::NoGradGuard ng;
  Executor ex(full);
  for (int64_t c = bound; c > 0 && c > bound - 8; --c) {
    std::map<std::string, at::Tensor> in;
    for (size_t i = 0; i < full.inputs.size(); ++i)
      in[full.inputs[i]] = (i == 0 ? at::zeros({1, c}, at::kLong) : at::ones({1, c}, at::kLong)).to(toScalarType(full.values.at(full.inputs[i]).dtype));
    try {
      ex.run(in);
      return c;
    } catch (const Error&) {
    }
  }
  fail(ErrorCategory::Model, "kv_cache: the model does not run at " + std::to_string(bound - 7) + ".." + std::to_string(bound) +
                                 " tokens, the length its position tables suggest");
}

}  // namespace

void addKvMetadata(const KvCacheInfo& info, std::map<std::string, std::string>& metadata) {
  metadata["compress.kv_cache"] = std::to_string(info.layers);
  metadata["compress.context_length"] = std::to_string(info.context);
}

KvCacheInfo addKvCache(Graph& g, KvCuts cuts) {
  const Graph full = g;
  const double tol = hasHalf(full) ? 1e-2 : 1e-4;
  KvCacheInfo info;
  // new-row cuts pushed up the position cones first; should a model's cone defeat them (the check below says so),
  // the plain cuts after the whole-length values, which cost O(T^2) per step for a mask but are what was checked first
  for (bool pushCuts : {true, false}) {
    if (pushCuts && cuts == KvCuts::Plain) continue;
    g = full;
    try {
      Rewriter rw(g, pushCuts);
      info = rw.run();
      const int64_t vocab = rw.probe().vocab;
      inferShapes(g, rw.inputSpecs());
      verify(g);
      info.context = measuredContext(full, info.context);
      info.check_rel_diff = checkAgainstFull(full, g, info, vocab);
    } catch (const Error&) {
      if (!pushCuts) throw;
      continue;
    }
    if (info.check_rel_diff <= tol) break;
  }
  if (!(info.check_rel_diff <= tol))
    fail(ErrorCategory::Model, "kv_cache: prefill + cached steps differ from the full-sequence logits by " +
                                   std::to_string(info.check_rel_diff) + " of max |logit| (allowed " + std::to_string(tol) +
                                   "): this attention's pattern is not one the rewrite understands; export without kv_cache");
  return info;
}

}  // namespace compress
