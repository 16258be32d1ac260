#include "compress/calibration.h"

#include <algorithm>
#include <regex>
#include <set>

#include "compress/error.h"
#include "compress/progress.h"
#include "runtime/op_table.h"

namespace compress {

namespace {

/// Where each calibrated layer runs (its node) and what it reads: linears and convs alike.
struct LayerSite {
  int node = -1;
  std::string input;
};
std::map<std::string, LayerSite> layerSites(const Graph& g) {
  std::map<std::string, LayerSite> sites;
  for (const auto& l : findLinears(g)) sites.emplace(l.weight, LayerSite{l.node, g.nodes[l.node].inputs[0]});
  for (const auto& c : findConvs(g)) sites.emplace(c.weight, LayerSite{c.node, g.nodes[c.node].inputs[0]});
  return sites;
}

/// Nodes that `v` is computed from (not through shape reads: a causal mask built from Shape(x) does not
/// make x an ancestor of it); a graph input i counts as the node -2 - i.
std::set<int> ancestors(const Graph& g, const std::string& v) {
  std::set<int> seen;
  std::vector<std::string> stack = {v};
  std::set<std::string> visited;
  while (!stack.empty()) {
    std::string x = stack.back();
    stack.pop_back();
    if (x.empty() || g.isInitializer(x) || !visited.insert(x).second) continue;
    const int k = g.producer(x);
    if (k < 0) {
      auto in = std::find(g.inputs.begin(), g.inputs.end(), x);
      if (in != g.inputs.end()) seen.insert(-2 - static_cast<int>(in - g.inputs.begin()));
      continue;
    }
    const Node& n = g.nodes[static_cast<size_t>(k)];
    if (crt::opHas(n.op, crt::op_trait::ShapeOnly) || !seen.insert(k).second) continue;
    stack.insert(stack.end(), n.inputs.begin(), n.inputs.end());
  }
  return seen;
}

/// x + f(x): walking back from one operand reaches the other through a linear or conv layer, never below
/// the other's producer (the nodes are in topological order).
bool identityShortcut(const Graph& g, const Node& add, const std::set<int>& layer_nodes) {
  for (int side = 0; side < 2; ++side) {
    const std::string& skip = add.inputs[static_cast<size_t>(side)];
    const int floor = g.producer(skip);
    bool through_layer = false, reached = false;
    std::vector<int> stack = {g.producer(add.inputs[static_cast<size_t>(1 - side)])};
    std::set<int> seen;
    while (!stack.empty() && !reached) {
      int k = stack.back();
      stack.pop_back();
      if (k <= floor || !seen.insert(k).second) continue;
      through_layer = through_layer || layer_nodes.count(k);
      for (const auto& v : g.nodes[static_cast<size_t>(k)].inputs) {
        if (v == skip) reached = true;
        else if (!v.empty() && !g.isInitializer(v)) stack.push_back(g.producer(v));
      }
    }
    if (reached && through_layer) return true;
  }
  return false;
}

/// g(x) + f(x) with a layer in both branches (a ResNet projection shortcut): both operands are computed
/// from one value — their latest common ancestor — and each branch after it runs a linear or conv layer.
/// (RoPE's q·cos + rotate(q)·sin has no layer after q; an attention mask has no common ancestor.)
bool projectionShortcut(const Graph& g, const Node& add, const std::set<int>& layer_nodes) {
  const std::set<int> a = ancestors(g, add.inputs[0]), b = ancestors(g, add.inputs[1]);
  bool common = false;
  int latest = -1;  // a common graph input only: every node is after it
  for (int k : a)
    if (b.count(k)) common = true, latest = std::max(latest, k);
  if (!common) return false;
  // Nodes after the latest common one are on one branch only.
  auto layerAfter = [&](const std::set<int>& side) {
    return std::any_of(side.begin(), side.end(), [&](int k) { return k > latest && layer_nodes.count(k); });
  };
  return layerAfter(a) && layerAfter(b);
}

/// The residual Adds: x + f(x) or g(x) + f(x) where f (and g) contain a linear or conv layer (a
/// transformer's attention and MLP branches, a ResNet block with an identity or projection shortcut).
std::vector<int> residualAdds(const Graph& g, const std::map<std::string, LayerSite>& sites) {
  std::set<int> layer_nodes;
  for (const auto& [w, site] : sites) layer_nodes.insert(site.node);
  std::vector<int> adds;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op != "Add" || n.inputs.size() != 2 || g.isInitializer(n.inputs[0]) || g.isInitializer(n.inputs[1])) continue;
    if (identityShortcut(g, n, layer_nodes) || projectionShortcut(g, n, layer_nodes)) adds.push_back(static_cast<int>(i));
  }
  return adds;
}

/// "layers.3" of "layers.3.attention.wq.weight" (HF "model.layers.3", GPT-2 "h.3", BERT "encoder.layer.3"),
/// or "" for names without a numbered module.
std::string layerPrefix(const std::string& w) {
  static const std::regex layer(R"(^(.*\.)?(\d+)\.)");
  std::smatch m;
  return std::regex_search(w, m, layer) ? w.substr(0, static_cast<size_t>(m.position(0) + m.length(0) - 1)) : "";
}

}  // namespace

std::vector<Block> groupIntoBlocks(const Graph& g, const std::vector<std::string>& weights) {
  const auto sites = layerSites(g);
  const std::vector<int> adds = residualAdds(g, sites);
  // Segment of a node: how many residual Adds run before it; a segment starts right after its Add.
  auto segmentOf = [&](int node) { return static_cast<int>(std::lower_bound(adds.begin(), adds.end(), node) - adds.begin()); };
  std::vector<std::string> ordered = weights;
  for (const auto& w : ordered)
    if (!sites.count(w)) fail(ErrorCategory::Internal, "'" + w + "' is not a linear or conv weight");
  std::stable_sort(ordered.begin(), ordered.end(), [&](const auto& a, const auto& b) { return sites.at(a).node < sites.at(b).node; });
  std::vector<Block> blocks;
  int last_segment = -1;
  for (const auto& w : ordered) {
    const int seg = segmentOf(sites.at(w).node);
    const std::string prefix = layerPrefix(w);
    // One block per residual segment; consecutive segments of one numbered layer (a transformer layer's
    // attention and MLP halves) stay one block, as do layers that read the block's input (q/k/v).
    bool same = !blocks.empty() && (seg == last_segment || (!prefix.empty() && prefix == layerPrefix(blocks.back().weights[0])));
    if (!same) {
      Block b;
      b.name = prefix.empty() ? "block " + std::to_string(blocks.size()) + " (" + w + ")" : prefix;
      b.start = seg == 0 ? 0 : adds[static_cast<size_t>(seg - 1)] + 1;
      blocks.push_back(std::move(b));
    }
    blocks.back().weights.push_back(w);
    last_segment = seg;
  }
  return blocks;
}

std::vector<std::vector<std::string>> sharedInputGroups(const Graph& g, const Block& b) {
  std::map<std::string, std::string> input_of;
  for (const auto& [w, site] : layerSites(g)) input_of.emplace(w, site.input);
  std::vector<std::vector<std::string>> groups;
  std::vector<std::string> keys;
  for (const auto& w : b.weights) {
    auto it = std::find(keys.begin(), keys.end(), input_of[w]);
    if (it == keys.end()) {
      keys.push_back(input_of[w]);
      groups.push_back({w});
    } else {
      groups[static_cast<size_t>(it - keys.begin())].push_back(w);
    }
  }
  return groups;
}

at::Tensor convColumns(const Node& n, const at::Tensor& x, const at::Tensor& w) {
  const std::string auto_pad = n.hasAttr("auto_pad") ? std::get<std::string>(n.attrs.at("auto_pad")) : "NOTSET";
  if (auto_pad != "NOTSET" && auto_pad != "VALID")
    fail(ErrorCategory::Model, "calibration of conv '" + n.name + "' needs explicit pads (auto_pad " + auto_pad + ")");
  const bool one_d = x.dim() == 3;
  if (x.dim() != 3 && x.dim() != 4) fail(ErrorCategory::Internal, "conv '" + n.name + "': input of rank " + std::to_string(x.dim()));
  at::Tensor xi = (one_d ? x.unsqueeze(2) : x).to(at::kFloat);
  auto attr = [&](const char* key, int64_t def) {
    std::vector<int64_t> v = n.attrInts(key);
    if (v.empty()) v.assign(one_d ? 1 : 2, def);
    if (one_d) v.insert(v.begin(), def);  // the added height axis
    return v;
  };
  std::vector<int64_t> strides = attr("strides", 1), dilations = attr("dilations", 1);
  std::vector<int64_t> pads = n.attrInts("pads");  // ONNX: begins, then ends
  if (pads.empty()) pads.assign(one_d ? 2 : 4, 0);
  if (one_d) pads = {0, pads[0], 0, pads[1]};
  if (pads[0] || pads[1] || pads[2] || pads[3]) xi = at::constant_pad_nd(xi, {pads[1], pads[3], pads[0], pads[2]});
  const int64_t kh = one_d ? 1 : w.size(2), kw = w.size(one_d ? 2 : 3);
  at::Tensor cols = at::im2col(xi, {kh, kw}, {dilations[0], dilations[1]}, {0, 0}, {strides[0], strides[1]});  // [B, C·k, L]
  return cols.transpose(1, 2).reshape({-1, cols.size(1)});
}

void dropGroupedConvs(const Graph& g, std::vector<std::string>& weights, nlohmann::json* skipped) {
  std::set<std::string> grouped;
  for (const auto& c : findConvs(g))
    if (c.groups > 1) grouped.insert(c.weight);
  std::vector<std::string> dropped;
  weights.erase(std::remove_if(weights.begin(), weights.end(), [&](const std::string& w) {
                  if (!grouped.count(w)) return false;
                  dropped.push_back(w);
                  return true;
                }), weights.end());
  if (skipped)
    for (const auto& w : dropped)
      skipped->push_back({{"weight", w}, {"reason", "grouped or depthwise conv: each group reads its own input channels, so one "
                                                     "calibration matrix does not describe it (quantize it with rtn)"}});
}

BlockRunner::BlockRunner(const Graph& g, const at::Tensor& inputs, int64_t chunk, at::Device device) : g_(g) {
  if (!inputs.defined() || inputs.size(0) == 0)
    fail(ErrorCategory::Config, "this pass needs calibration data: add data.calibration to the recipe");
  ex_ = std::make_unique<Executor>(g, ExecOptions{device});
  for (int64_t s = 0; s < inputs.size(0); s += chunk)
    envs_.push_back(ex_->start(companionInputs(g, inputs.narrow(0, s, std::min(chunk, inputs.size(0) - s)))));
  for (const auto& l : findLinears(g)) matmul_of_.emplace(l.weight, g.nodes[l.node].name);
  for (const auto& c : findConvs(g)) matmul_of_.emplace(c.weight, g.nodes[c.node].name);
}

int BlockRunner::boundaryOf(const Block& b) const {
  int best = ex_->liveCount();
  best = std::min(best, ex_->firstLiveAtOrAfter(b.start));  // the residual segment's first node that runs
  std::string prefix = b.name + ".";
  for (const auto& [name, t] : g_.initializers)
    if (name.rfind(prefix, 0) == 0) {
      int k = ex_->firstReaderOf(name);
      if (k >= 0) best = std::min(best, k);
    }
  for (const auto& w : b.weights) {
    int k = ex_->liveIndexOf(matmul_of_.at(w));
    if (k >= 0) best = std::min(best, k);
  }
  return best;
}

void BlockRunner::capture(const std::vector<std::string>& weights,
                          const std::function<void(const std::string&, const at::Tensor&)>& fn, bool outputs) {
  std::map<std::string, std::string> wanted;  // MatMul node -> weight
  int last = -1;
  for (const auto& w : weights) {
    auto it = matmul_of_.find(w);
    if (it == matmul_of_.end()) fail(ErrorCategory::Internal, "'" + w + "' is not a linear weight");
    wanted[it->second] = w;
    last = std::max(last, ex_->liveIndexOf(it->second));
  }
  if (last < boundary_) fail(ErrorCategory::Internal, "capture behind the calibration boundary");
  int hook = ex_->addHook([&](int, const Node& n, const std::vector<at::Tensor>& in, const std::vector<at::Tensor>& out) {
    auto it = wanted.find(n.name);
    if (it == wanted.end()) return;
    if (n.op == "Conv") {  // the matrix a conv multiplies: im2col columns in, channels-last out
      fn(it->second, outputs ? out[0].movedim(1, -1).reshape({-1, out[0].size(1)}).to(at::kFloat) : convColumns(n, in[0], in[1]));
      return;
    }
    const at::Tensor& x = outputs ? out[0] : in[0];
    fn(it->second, x.reshape({-1, x.size(-1)}).to(at::kFloat));
  });
  at::NoGradGuard ng;
  for (auto& env : envs_) {
    Executor::Env copy = env;  // tensors are shared, not copied; the boundary stays put
    ex_->runRange(copy, boundary_, last + 1);
    nodes_run_ += last + 1 - boundary_;
  }
  ex_->removeHook(hook);
}

void BlockRunner::advanceTo(const Block* next) {
  int to = next ? boundaryOf(*next) : ex_->liveCount();
  at::NoGradGuard ng;
  for (auto& env : envs_) ex_->runRange(env, boundary_, to);
  nodes_run_ += static_cast<int64_t>(envs_.size()) * (to - boundary_);
  boundary_ = std::max(boundary_, to);
}

int64_t forEachBlock(const Graph& g, const at::Tensor& calibration, const std::vector<std::string>& weights, int64_t chunk,
                     at::Device device, const char* name, bool progress,
                     const std::function<void(const Block&, BlockRunner&)>& fn) {
  auto blocks = groupIntoBlocks(g, weights);
  BlockRunner runner(g, calibration, chunk, device);
  if (!blocks.empty()) runner.advanceTo(&blocks[0]);
  Progress prog(name, static_cast<int64_t>(blocks.size()), "blocks", progress);
  for (size_t bi = 0; bi < blocks.size(); ++bi) {
    fn(blocks[bi], runner);
    if (bi + 1 < blocks.size()) runner.advanceTo(&blocks[bi + 1]);  // nothing after the last block is needed
    prog.advance(1);
  }
  prog.finish();
  return runner.forwardNodes();
}

void ChannelNormAccumulator::add(const std::string& weight, const at::Tensor& x) {
  at::Tensor s = x.to(at::kDouble).pow(2).sum(0);
  auto it = sumsq.find(weight);
  if (it == sumsq.end()) sumsq.emplace(weight, s);
  else it->second.add_(s);
}

at::Tensor ChannelNormAccumulator::norms(const std::string& weight) const {
  auto it = sumsq.find(weight);
  if (it == sumsq.end()) fail(ErrorCategory::Internal, "no calibration inputs reached '" + weight + "'");
  return it->second.sqrt().to(at::kFloat);
}

void HessianAccumulator::add(const at::Tensor& x) {
  // Each chunk's Σ x xᵀ in float32 (fast BLAS, a few thousand tokens), the running sum in float64.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor outer = xf.t().matmul(xf).to(at::kDouble);
  h = h.defined() ? h + outer : outer;
  n += x.size(0);
}

at::Tensor HessianAccumulator::hessian() const {
  if (!h.defined() || n == 0) fail(ErrorCategory::Internal, "no calibration inputs reached this layer");
  return (h * (2.0 / static_cast<double>(n))).to(at::kFloat);
}

}  // namespace compress
