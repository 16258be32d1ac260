#include "compress/calibration.h"

#include <algorithm>
#include <regex>
#include <set>

#include "compress/error.h"
#include "compress/progress.h"

namespace compress {

std::vector<Block> groupIntoBlocks(const Graph& g, const std::vector<std::string>& weights) {
  std::vector<Block> blocks;
  std::map<std::string, size_t> index;
  std::regex layer(R"(^(.*\.)?(\d+)\.)");
  for (const auto& w : weights) {
    std::smatch m;
    std::string key = std::regex_search(w, m, layer) ? w.substr(0, m.position(0) + m.length(0) - 1) : w;
    auto it = index.find(key);
    if (it == index.end()) {
      index[key] = blocks.size();
      blocks.push_back({key, {w}});
    } else {
      blocks[it->second].weights.push_back(w);
    }
  }
  // Order blocks and their weights by where their MatMuls run.
  std::map<std::string, int> pos;
  for (const auto& l : findLinears(g))
    if (!pos.count(l.weight)) pos[l.weight] = l.node;
  for (auto& b : blocks)
    std::sort(b.weights.begin(), b.weights.end(), [&](const auto& a, const auto& c) { return pos[a] < pos[c]; });
  std::sort(blocks.begin(), blocks.end(), [&](const Block& a, const Block& b) { return pos[a.weights[0]] < pos[b.weights[0]]; });
  // Without layer prefixes, sibling layers that read the same input (q/k/v, gate/up) still form one block.
  std::map<std::string, std::string> input_of;
  for (const auto& l : findLinears(g)) input_of.emplace(l.weight, g.nodes[l.node].inputs[0]);
  std::vector<Block> merged;
  for (auto& b : blocks) {
    if (!merged.empty() && b.weights.size() == 1 && merged.back().weights.size() >= 1 &&
        input_of[b.weights[0]] == input_of[merged.back().weights.back()]) {
      bool prefixed = std::regex_search(b.weights[0], layer);
      if (!prefixed) {
        merged.back().weights.push_back(b.weights[0]);
        continue;
      }
    }
    merged.push_back(std::move(b));
  }
  return merged;
}

std::vector<std::vector<std::string>> sharedInputGroups(const Graph& g, const Block& b) {
  std::map<std::string, std::string> input_of;
  for (const auto& l : findLinears(g)) input_of.emplace(l.weight, g.nodes[l.node].inputs[0]);
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

BlockRunner::BlockRunner(const Graph& g, const at::Tensor& inputs, int64_t chunk, at::Device device) : g_(g) {
  if (g.inputs.size() != 1) fail(ErrorCategory::Config, "calibration supports models with one input");
  if (!inputs.defined() || inputs.size(0) == 0)
    fail(ErrorCategory::Config, "this pass needs calibration data: add data.calibration to the recipe");
  ex_ = std::make_unique<Executor>(g, ExecOptions{device});
  for (int64_t s = 0; s < inputs.size(0); s += chunk)
    envs_.push_back(ex_->start({{g.inputs[0], inputs.narrow(0, s, std::min(chunk, inputs.size(0) - s))}}));
  for (const auto& l : findLinears(g)) matmul_of_.emplace(l.weight, g.nodes[l.node].name);
}

int BlockRunner::boundaryOf(const Block& b) const {
  int best = ex_->liveCount();
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
