// fuse.cpp — RMSNorm and SiLU-multiply chains fused into one node each at load (fuse.h).
#include "runtime/fuse.h"

#include <algorithm>
#include <cmath>

#include "runtime/backend.h"
#include "runtime/kernels.h"
#include "runtime/ops_common.h"

namespace crt::detail {

bool isLastAxisMean(const Graph& g, const Node& n) {
  if (!n.domain.empty() || n.op != "ReduceMean" || n.attrInt("keepdims", 1) != 1) return false;
  if (const std::vector<int64_t>* axes = n.attrInts("axes")) return axes->size() == 1 && (*axes)[0] == -1;
  if (n.in.size() < 2 || n.in[1] < 0 || !g.values[n.in[1]].is_const) return false;
  const Buf& a = g.values[n.in[1]].constant;
  return a.dt == DType::I64 && a.numel() == 1 && a.as<int64_t>()[0] == -1;
}

// ------------------------------------------------------------------------------------------- kernels
void opRMSNorm(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt != DType::F32 || x.shape.rank == 0) c.bad("needs a float32 input of rank >= 1");
  const int64_t n = x.shape[x.shape.rank - 1], rows = n == 0 ? 0 : x.numel() / n;
  const Buf* w = c.has(1) ? &c.in(1) : nullptr;
  // (a one-value weight broadcasts, as Mul did)
  if (w && (w->dt != DType::F32 || (w->numel() != n && w->numel() != 1)))
    c.bad("the weight must be float32 with one value per channel, or one value");
  const int64_t ws = w && w->numel() == 1 ? 0 : 1;
  const float eps = c.node.attrFloat("eps", 0.f);
  const float* X = x.as<float>();
  const float* W = w ? w->as<float>() : nullptr;
  float* Y = c.outT<float>(0, x.shape);
  // the chain's arithmetic in its order: x*x summed left to right, / n, + eps, sqrt, 1 / ., x * r, * w
  parallelRows(c, rows, rows * n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = X + r * n;
      float* yr = Y + r * n;
      float acc = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        const float sq = xr[j] * xr[j];
        acc = acc + sq;
      }
      const float mean = acc / static_cast<float>(n);
      const float inv = 1.f / std::sqrt(mean + eps);
      if (W) {
        for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] * inv) * W[j * ws];
      } else {
        for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] * inv;
      }
    }
  });
}

void opSiluMul(OpCtx& c) {
  const Buf& g = c.in(0);
  const Buf& up = c.in(1);
  if (g.dt != DType::F32 || up.dt != DType::F32) c.bad("needs float32 inputs");
  const int64_t n = g.numel();
  const float* G = g.as<float>();
  if (g.shape == up.shape) {  // one pass in L1-sized blocks, split over the threads
    // Blocks start at multiples of kBlock, so the SIMD sigmoid leaves the same last n % width values to its scalar
    // tail as on the whole tensor: the bits of the Sigmoid node.
    constexpr int64_t kBlock = 1024;
    const float* U = up.as<float>();
    float* Y = c.outT<float>(0, g.shape);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    parallelRows(c, blocks, n, [&](int64_t b0, int64_t b1) {
      float s[kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
        c.env.k->sigmoid(G + i0, s, len);
        for (int64_t i = 0; i < len; ++i) Y[i0 + i] = (G[i0 + i] * s[i]) * U[i0 + i];
      }
    });
    return;
  }
  float* t = static_cast<float*>(c.scratch(static_cast<size_t>(n) * sizeof(float)));
  c.env.k->sigmoid(G, t, n);
  for (int64_t i = 0; i < n; ++i) t[i] = G[i] * t[i];
  const Shape os = broadcastShape(c, g.shape, up.shape);
  float* Y = c.outT<float>(0, os);
  binaryLoop(c, g.shape, static_cast<const float*>(t), up.shape, up.as<float>(), os, Y, [](float a, float b) { return a * b; });
}

// ------------------------------------------------------------------------------------------- matching
namespace {

bool is(const Node& n, const char* op) { return n.domain.empty() && n.op == op; }

/// A float32 scalar constant's value, or NaN.
float scalarConst(const Graph& g, int v) {
  if (v < 0 || !g.values[v].is_const) return NAN;
  const Buf& b = g.values[v].constant;
  return b.dt == DType::F32 && b.numel() == 1 ? b.as<float>()[0] : NAN;
}

/// The other input of a two-input node, given one of them; -1 when `v` is not an input.
int otherInput(const Node& n, int v) {
  if (n.in.size() != 2) return -1;
  return n.in[0] == v ? n.in[1] : n.in[1] == v ? n.in[0] : -1;
}

struct Uses {
  std::vector<int> count, consumer;  // readers of each value, and the last one seen
  explicit Uses(const Graph& g) : count(g.values.size(), 0), consumer(g.values.size(), -1) {
    for (size_t i = 0; i < g.nodes.size(); ++i)
      for (int v : g.nodes[i].in)
        if (v >= 0) ++count[v], consumer[v] = static_cast<int>(i);
    for (int o : g.outputs) count[o] += 2;  // a graph output is never an intermediate
  }
  /// The only node reading `v`, or -1.
  int single(int v) const { return v >= 0 && count[v] == 1 ? consumer[v] : -1; }
};

/// The RMSNorm chain from Pow node p; fills `chain` (nodes to drop; the last is replaced) and the fused node.
bool matchRmsNorm(const Graph& g, const Uses& u, const std::vector<char>& f32, int p, std::vector<int>& chain, Node& fused) {
  const Node& pow = g.nodes[p];
  if (!is(pow, "Pow") || pow.in.size() != 2 || pow.in[0] < 0 || scalarConst(g, pow.in[1]) != 2.f || !f32[pow.in[0]]) return false;
  const int x = pow.in[0];
  const int mean = u.single(pow.out[0]);
  if (mean < 0 || !isLastAxisMean(g, g.nodes[mean])) return false;
  const int add = u.single(g.nodes[mean].out[0]);
  if (add < 0 || !is(g.nodes[add], "Add")) return false;
  const float eps = scalarConst(g, otherInput(g.nodes[add], g.nodes[mean].out[0]));
  if (!(eps >= 0.f)) return false;
  const int sq = u.single(g.nodes[add].out[0]);
  if (sq < 0 || !is(g.nodes[sq], "Sqrt")) return false;
  const int rec = u.single(g.nodes[sq].out[0]);
  if (rec < 0 || !is(g.nodes[rec], "Reciprocal")) return false;
  const int mul = u.single(g.nodes[rec].out[0]);
  if (mul < 0 || !is(g.nodes[mul], "Mul") || otherInput(g.nodes[mul], g.nodes[rec].out[0]) != x) return false;
  chain = {p, mean, add, sq, rec, mul};
  fused = Node();
  fused.domain = "crt";
  fused.op = "RMSNorm";
  fused.name = g.nodes[mul].name;
  fused.in = {x};
  fused.attrs["eps"].kind = Attr::Float;
  fused.attrs["eps"].f = eps;
  fused.fn = opRMSNorm;
  int out = g.nodes[mul].out[0];
  const int scale = u.single(out);  // the weight: a float32 constant vector
  if (scale >= 0 && is(g.nodes[scale], "Mul")) {
    const int w = otherInput(g.nodes[scale], out);
    if (w >= 0 && g.values[w].is_const && g.values[w].constant.dt == DType::F32 && g.values[w].constant.shape.rank == 1) {
      fused.in.push_back(w);
      chain.push_back(scale);
      out = g.nodes[scale].out[0];
    }
  }
  fused.out = {out};
  return true;
}

/// The SiLU-multiply chain from Sigmoid node s.
bool matchSiluMul(const Graph& g, const Uses& u, const std::vector<char>& f32, int s, std::vector<int>& chain, Node& fused) {
  const Node& sig = g.nodes[s];
  if (!is(sig, "Sigmoid") || sig.in.size() != 1 || sig.in[0] < 0 || !f32[sig.in[0]]) return false;
  const int gate = sig.in[0];
  const int m1 = u.single(sig.out[0]);
  if (m1 < 0 || !is(g.nodes[m1], "Mul") || otherInput(g.nodes[m1], sig.out[0]) != gate) return false;
  const int m2 = u.single(g.nodes[m1].out[0]);
  if (m2 < 0 || !is(g.nodes[m2], "Mul")) return false;
  const int up = otherInput(g.nodes[m2], g.nodes[m1].out[0]);
  if (up < 0 || !f32[up]) return false;
  chain = {s, m1, m2};
  fused = Node();
  fused.domain = "crt";
  fused.op = "SiluMul";
  fused.name = g.nodes[m2].name;
  fused.in = {gate, up};
  fused.out = g.nodes[m2].out;
  fused.fn = opSiluMul;
  return true;
}

}  // namespace

int fuseChains(Graph& g) {
  const std::vector<char> f32 = knownFloat32(g);
  const Uses u(g);
  std::vector<char> drop(g.nodes.size(), 0);
  std::vector<std::pair<int, Node>> replace;  // (index of the chain's last node, the fused node)
  int fused = 0;
  for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
    if (drop[i] || g.nodes[i].is_static) continue;
    std::vector<int> chain;
    Node f;
    if (!matchRmsNorm(g, u, f32, i, chain, f) && !matchSiluMul(g, u, f32, i, chain, f)) continue;
    bool free = true;
    for (int c : chain) free &= !drop[c];
    if (!free) continue;
    for (int c : chain) drop[c] = 1;
    replace.push_back({chain.back(), std::move(f)});
    ++fused;
  }
  if (fused == 0) return 0;
  std::vector<Node> out;
  size_t r = 0;
  std::sort(replace.begin(), replace.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
    if (r < replace.size() && replace[r].first == i) out.push_back(std::move(replace[r++].second));
    else if (!drop[i]) out.push_back(std::move(g.nodes[i]));
  }
  g.nodes = std::move(out);
  return fused;
}

}  // namespace crt::detail
