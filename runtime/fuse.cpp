// fuse.cpp — RMSNorm, SiLU-multiply, RoPE, per-row scale, attention-softmax and GELU chains fused into one node each
// at load, and in device sessions the remaining elementwise chains into programs (fuse.h).
#include "runtime/fuse.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/backend.h"
#include "runtime/cuda/device_math.h"
#include "runtime/kernels.h"
#include "runtime/ops_common.h"

namespace crt::detail {

bool isLastAxisReduce(const Graph& g, const Node& n, const char* op) {
  if (!n.domain.empty() || n.op != op || n.attrInt("keepdims", 1) != 1) return false;
  if (const std::vector<int64_t>* axes = n.attrInts("axes")) return axes->size() == 1 && (*axes)[0] == -1;
  if (n.in.size() < 2 || n.in[1] < 0 || !g.values[n.in[1]].is_const) return false;
  const Buf& a = g.values[n.in[1]].constant;
  return a.dt == DType::I64 && a.numel() == 1 && a.as<int64_t>()[0] == -1;
}

bool isLastAxisMean(const Graph& g, const Node& n) { return isLastAxisReduce(g, n, "ReduceMean"); }

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
  // the chain's arithmetic in its order: x*x summed left to right, / n, + eps, sqrt, 1 / ., x * r, * w. Each row's
  // sum is one chain of dependent adds, so kRows rows are summed side by side (their chains overlap; each keeps
  // its order, so the same bits): prefill's norms 4x faster than one row at a time.
  constexpr int64_t kRows = 8;
  const auto scale = [&](int64_t r, float acc) {
    const float* xr = X + r * n;
    float* yr = Y + r * n;
    const float mean = acc / static_cast<float>(n);
    const float inv = 1.f / std::sqrt(mean + eps);
    if (W) {
      for (int64_t j = 0; j < n; ++j) yr[j] = (xr[j] * inv) * W[j * ws];
    } else {
      for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] * inv;
    }
  };
  parallelRows(c, rows, rows * n, [&](int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + kRows <= r1; r += kRows) {
      float acc[kRows] = {};
      const float* x0 = X + r * n;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < kRows; ++i) {
          const float v = x0[i * n + j];
          acc[i] = acc[i] + v * v;
        }
      for (int64_t i = 0; i < kRows; ++i) scale(r + i, acc[i]);
    }
    for (; r < r1; ++r) {
      const float* xr = X + r * n;
      float acc = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        const float sq = xr[j] * xr[j];
        acc = acc + sq;
      }
      scale(r, acc);
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

RopeGeometry ropeGeometry(OpCtx& c) {
  const Buf& t = c.in(0);
  const Buf& cs = c.in(1);
  const Buf& sn = c.in(2);
  if (t.dt != DType::F32 || cs.dt != DType::F32 || sn.dt != DType::F32) c.bad("needs float32 inputs");
  const int r = t.shape.rank;
  if (r == 0 || r + 1 > kMaxRank) c.bad("needs an input of rank 1 to " + std::to_string(kMaxRank - 1));
  int64_t s = c.node.attrInt("axis", -1), k = c.node.attrInt("stack", -1);
  s = s < 0 ? s + r : s;
  k = k < 0 ? k + r + 1 : k;
  if (s < 0 || s >= r || k < 0 || k > r) c.bad("axis or stack axis out of range for " + t.shape.str());
  if (t.shape[s] % 2 != 0) c.bad("the pairs' axis of " + t.shape.str() + " has an odd length");
  Shape A = t.shape;  // the shape of each half
  A.d[s] /= 2;
  for (const Buf* tab : {&cs, &sn})
    if (broadcastShape(c, A, tab->shape) != A) c.bad("cos / sin " + tab->shape.str() + " do not broadcast to " + A.str());
  RopeGeometry geo;
  for (int m = 0; m <= r; ++m) geo.out.push(m == k ? 2 : A[m < k ? m : m - 1]);
  // Strides, per axis m of A: into t for a (b is one element of t further along s), into cos / sin (0 where they
  // broadcast), into y for the first of the pair (the second is y's stride on the stack axis further).
  device::Rope& g = geo.r;
  g.rank = r;
  int64_t st = 1, sy = 1, so[kMaxRank + 1];
  for (int m = r; m >= 0; --m) so[m] = sy, sy *= geo.out[m];
  for (int m = r - 1; m >= 0; --m) {
    g.A[m] = A[m];
    g.ta[m] = (m == s ? 2 : 1) * st;
    st *= t.shape[m];
    g.ty[m] = so[m < k ? m : m + 1];
  }
  bstrides(cs.shape, A, g.tc);
  bstrides(sn.shape, A, g.ts);
  g.bOff = t.shape[s] == 0 ? 0 : g.ta[s] / 2;
  g.second = so[k];
  return geo;
}

void opRope(OpCtx& c) {
  const RopeGeometry geo = ropeGeometry(c);
  const device::Rope& g = geo.r;
  const int r = g.rank;
  int64_t numel = 1;
  for (int m = 0; m < r; ++m) numel *= g.A[m];
  const int64_t n = g.A[r - 1], rows = n == 0 ? 0 : numel / n;
  const float* T = c.in(0).as<float>();
  const float* C = c.in(1).as<float>();
  const float* S = c.in(2).as<float>();
  float* Y = c.outT<float>(0, geo.out);
  const int64_t da = g.ta[r - 1], dc = g.tc[r - 1], ds = g.ts[r - 1], dy = g.ty[r - 1];
  parallelRows(c, rows, numel, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      int64_t a0, c0, s0, y0;  // the row's first pair (its index on A's leading axes)
      device::ropeOffsets(g, row * n, a0, c0, s0, y0);
      if (da == 2 && g.bOff == 1 && dy == 2 && g.second == 1 && dc == 1 && ds == 1) {  // pairs on the last axis
        const float* tr = T + a0;  // (constant strides: GCC vectorizes this loop)
        const float* cr = C + c0;
        const float* sr = S + s0;
        float* yr = Y + y0;
        for (int64_t j = 0; j < n; ++j) {
          const float a = tr[2 * j], b = tr[2 * j + 1];
          yr[2 * j] = a * cr[j] - b * sr[j];
          yr[2 * j + 1] = a * sr[j] + b * cr[j];
        }
        continue;
      }
      for (int64_t j = 0; j < n; ++j)  // (each product rounded: this file has no FMA contraction)
        device::ropePair(T[a0 + j * da], T[a0 + g.bOff + j * da], C[c0 + j * dc], S[s0 + j * ds], Y[y0 + j * dy],
                         Y[y0 + g.second + j * dy]);
    }
  });
}

void opAbsMaxScale(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt != DType::F32 || x.shape.rank == 0) c.bad("needs a float32 input of rank >= 1");
  const int64_t n = x.shape[x.shape.rank - 1], rows = n == 0 ? x.numel() : x.numel() / n;
  Shape os = x.shape;
  os.d[os.rank - 1] = 1;
  const float div = c.node.attrFloat("divisor", 1.f), floor = c.node.attrFloat("floor", 1.f);
  const float* X = x.as<float>();
  float* S = c.outT<float>(0, os);
  // The chain's result: NaN if a value of the row is NaN (ReduceMax keeps a NaN, Max propagates it), else
  // max(max|x| / divisor, floor). The matcher only fuses a floor > 0, so the sign of a zero maximum, the one thing
  // the chain's left-to-right order decides, never reaches the output: the row's maximum is taken 4 lanes wide.
  const __m128 sign = _mm_set1_ps(-0.f);
  parallelRows(c, rows, rows * std::max<int64_t>(n, 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = X + r * n;
      __m128 m4 = _mm_setzero_ps(), nan4 = _mm_setzero_ps();
      int64_t j = 0;
      for (; j + 4 <= n; j += 4) {
        const __m128 v = _mm_andnot_ps(sign, _mm_loadu_ps(xr + j));
        nan4 = _mm_or_ps(nan4, _mm_cmpunord_ps(v, v));
        m4 = _mm_max_ps(m4, v);
      }
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, m4);
      bool nan = _mm_movemask_ps(nan4) != 0;
      float m = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
      for (; j < n; ++j) {
        const float v = std::fabs(xr[j]);
        nan |= std::isnan(v);
        m = std::max(m, v);
      }
      const float sc = m / div;
      S[r] = nan || std::isnan(sc) ? NAN : std::max(sc, floor);
    }
  });
}

device::RowMask rowMask(OpCtx& c, const Shape& scores, const Shape& mask) {
  if (broadcastShape(c, scores, mask) != scores) c.bad("the mask " + mask.str() + " does not broadcast to the scores " + scores.str());
  device::RowMask m;
  m.rank = scores.rank;
  for (int d = 0; d < scores.rank; ++d) m.dims[d] = scores[d];
  bstrides(mask, scores, m.ms);
  return m;
}

device::RowMask scaleMaskGeometry(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& mask = c.in(1);
  if (x.dt != DType::F32 || mask.dt != DType::F32) c.bad("needs float32 inputs");
  if (x.shape.rank == 0) c.bad("needs scores of rank >= 1");
  return rowMask(c, x.shape, mask.shape);
}

void opScaleMaskSoftmax(OpCtx& c) {
  const device::RowMask m = scaleMaskGeometry(c);
  const Buf& x = c.in(0);
  const int64_t n = x.shape[m.rank - 1], rows = n == 0 ? 0 : x.numel() / n;
  const float div = c.node.attrFloat("divisor", 1.f);
  const float* X = x.as<float>();
  const float* M = c.in(1).as<float>();
  float* Y = c.outT<float>(0, x.shape);
  // per row the chain's operations: x / divisor, + mask (both rounded, as the Div and Add nodes did), then the
  // Softmax kernel on the row in place (rows are independent: the same bits as over all rows at once)
  parallelRows(c, rows, rows * n, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const float* xr = X + row * n;
      const float* mr = M + device::maskRowOffset(m, row);
      float* y = Y + row * n;
      if (m.ms[m.rank - 1] == 1) {  // (the usual [T, T] mask: a contiguous row, so the loop vectorizes)
        for (int64_t j = 0; j < n; ++j) y[j] = xr[j] / div + mr[j];
      } else {
        for (int64_t j = 0; j < n; ++j) y[j] = device::scaleMask(xr[j], div, mr[0]);
      }
      c.env.k->softmax(y, y, 1, n);
    }
  });
}

device::Gelu geluParams(const OpCtx& c) {
  device::Gelu g;
  g.tanh_form = static_cast<int>(c.node.attrInt("tanh", 0));
  g.half = c.node.attrFloat("half", g.half);
  g.one = c.node.attrFloat("one", g.one);
  g.div = c.node.attrFloat("div", g.div);
  g.power = c.node.attrFloat("power", g.power);
  g.cube = c.node.attrFloat("cube", g.cube);
  g.scale = c.node.attrFloat("scale", g.scale);
  return g;
}

void opFusedGelu(OpCtx& c) {
  const Buf& x = c.in(0);
  if (x.dt != DType::F32) c.bad("needs a float32 input");
  const device::Gelu g = geluParams(c);
  const int64_t n = x.numel();
  const float* X = x.as<float>();
  float* Y = c.outT<float>(0, x.shape);
  constexpr int64_t kBlock = 4096;
  parallelRows(c, (n + kBlock - 1) / kBlock, n, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0 * kBlock, end = std::min(n, b1 * kBlock); i < end; ++i) Y[i] = device::applyGelu(g, X[i]);
  });
}

// ------------------------------------------------------------------------------------------- elementwise chains
bool isElementwise(const Node& n) { return n.fn == opElementwise; }

device::EwProgram ewProgram(const OpCtx& c) {
  const std::vector<int64_t>* st = c.node.attrInts("steps");
  device::EwProgram p;
  p.inputs = c.nin();
  if (!st || st->empty() || st->size() % 5 != 0 || st->size() / 5 > static_cast<size_t>(device::kEwSteps) || p.inputs < 1 ||
      p.inputs > device::kEwInputs)
    c.bad("needs 1-" + std::to_string(device::kEwSteps) + " steps of 5 values and 1-" + std::to_string(device::kEwInputs) + " inputs");
  p.steps = static_cast<int>(st->size() / 5);
  for (int i = 0; i < p.steps; ++i) {
    const int64_t* v = st->data() + 5 * i;
    const int64_t codes = v[0] == 0 ? int64_t(device::Binary::Min) : v[0] == 1 ? int64_t(device::Unary::Sin) : 0;
    const auto operand = [&](int64_t x) { return (x >= 0 && x < p.inputs) || (x >= device::kEwInputs && x < device::kEwInputs + i); };
    if (v[0] < 0 || v[0] > 2 || v[1] < 0 || v[1] > codes || (v[2] != 0 && v[2] != 1) || !operand(v[3]) || (v[0] == 0 && !operand(v[4])))
      c.bad("step " + std::to_string(i) + " is not a valid elementwise step");
    p.s[i].kind = static_cast<device::EwKind>(v[0]);
    p.s[i].code = static_cast<int8_t>(v[1]);
    p.s[i].f16 = static_cast<int8_t>(v[2]);
    p.s[i].a = static_cast<int8_t>(v[3]);
    p.s[i].b = static_cast<int8_t>(v[0] == 0 ? v[4] : 0);
  }
  return p;
}

device::BroadcastN ewBroadcast(OpCtx& c, Shape& out) {
  const int n = c.nin();
  const int64_t* dims[device::kEwInputs];
  int ranks[device::kEwInputs];
  for (int k = 0; k < n && k < device::kEwInputs; ++k) {
    const Buf& b = c.in(k);
    if (b.dt != DType::F32 && b.dt != DType::F16) c.bad("input " + std::to_string(k) + " must be float32 or float16");
    dims[k] = b.shape.d, ranks[k] = b.shape.rank;
  }
  device::BroadcastN bc;
  if (n > device::kEwInputs || !device::makeBroadcastN(dims, ranks, n, bc)) {
    std::string shapes;
    for (int k = 0; k < n; ++k) shapes += (k ? ", " : "") + c.in(k).shape.str();
    c.bad("inputs " + shapes + " do not broadcast");
  }
  out = Shape{};
  for (int i = 0; i < bc.rank; ++i) out.push(bc.out[i]);
  return bc;
}

/// The program per output element (for the emulated device and a host fallback: device sessions make these nodes).
void opElementwise(OpCtx& c) {
  const device::EwProgram p = ewProgram(c);
  Shape os;
  const device::BroadcastN bc = ewBroadcast(c, os);
  const DType type = static_cast<DType>(c.node.attrInt("type", 0));
  if (type != DType::F32 && type != DType::F16) c.bad("the output must be float32 or float16");
  void* y = c.out(0, type, os);
  const int64_t total = os.numel();
  parallelRows(c, total, total * p.steps, [&](int64_t i0, int64_t i1) {
    float x[device::kEwInputs];
    for (int64_t i = i0; i < i1; ++i) {
      for (int k = 0; k < p.inputs; ++k) x[k] = device::ewLoad(c.in(k).data, c.in(k).dt == DType::F16, device::broadcastOffsetN(bc, k, i));
      const float v = device::ewEval(p, x);
      if (type == DType::F16) static_cast<uint16_t*>(y)[i] = floatToHalf(v);
      else static_cast<float*>(y)[i] = v;
    }
  });
}

bool fusedKeepsType(const Node& n) {
  return n.fn == opRMSNorm || n.fn == opSiluMul || n.fn == opRope || n.fn == opAbsMaxScale || n.fn == opScaleMaskSoftmax ||
         n.fn == opFusedGelu;
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

/// The fused node that replaces a chain ending in node `last`: domain crt, `last`'s name and outputs.
Node fusedNode(const char* op, OpFn fn, const Node& last, std::vector<int> in) {
  Node f;
  f.domain = "crt";
  f.op = op;
  f.fn = fn;
  f.name = last.name;
  f.in = std::move(in);
  f.out = last.out;
  return f;
}

void setAttr(Node& n, const char* key, float v) {
  n.attrs[key].kind = Attr::Float;
  n.attrs[key].f = v;
}

void setAttr(Node& n, const char* key, int64_t v) {
  n.attrs[key].kind = Attr::Int;
  n.attrs[key].i = v;
}

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
  fused = fusedNode("RMSNorm", opRMSNorm, g.nodes[mul], {x});
  setAttr(fused, "eps", eps);
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
  fused = fusedNode("SiluMul", opSiluMul, g.nodes[m2], {gate, up});
  return true;
}

/// The input of a two-input node whose other input is a float32 scalar constant (its value in `c`), or -1.
int withScalar(const Graph& g, const Node& n, float& c) {
  if (n.in.size() != 2) return -1;
  for (int k = 0; k < 2; ++k) {
    c = scalarConst(g, n.in[1 - k]);
    if (!std::isnan(c) && n.in[k] >= 0) return n.in[k];
  }
  return -1;
}

/// The producer of `v` when it is op `op` and `v` is read by `reader` only, or -1.
int feeds(const Graph& g, const Uses& u, int v, const char* op, int reader) {
  if (v < 0 || u.single(v) != reader) return -1;
  const int p = g.values[v].producer;
  return p >= 0 && is(g.nodes[p], op) ? p : -1;
}

/// A GELU chain (device::Gelu's two forms) ending in node y = Mul(h, o), h = Mul(x, half), o = Add(t, one) with
/// t = Erf(Div(x, div)) or t = Tanh(Mul(Add(x, Mul(Pow(x, power), cube)), scale)), every intermediate read once.
bool matchGelu(const Graph& g, const Uses& u, const std::vector<char>& f32, int y, std::vector<int>& chain, Node& fused) {
  const Node& last = g.nodes[y];
  if (!is(last, "Mul") || last.in.size() != 2) return false;
  for (int side = 0; side < 2; ++side) {
    device::Gelu p;
    const int h = feeds(g, u, last.in[side], "Mul", y), o = feeds(g, u, last.in[1 - side], "Add", y);
    if (h < 0 || o < 0) continue;
    const int x = withScalar(g, g.nodes[h], p.half);
    const int tv = withScalar(g, g.nodes[o], p.one);
    if (x < 0 || !f32[x] || tv < 0) continue;
    int t = feeds(g, u, tv, "Erf", o);
    if (t >= 0) {
      const int d = feeds(g, u, g.nodes[t].in[0], "Div", t);
      if (d < 0 || g.nodes[d].in[0] != x || std::isnan(p.div = scalarConst(g, g.nodes[d].in[1]))) continue;
      chain = {d, t};
    } else if ((t = feeds(g, u, tv, "Tanh", o)) >= 0) {
      p.tanh_form = 1;
      const int sm = feeds(g, u, g.nodes[t].in[0], "Mul", t);
      const int av = sm >= 0 ? withScalar(g, g.nodes[sm], p.scale) : -1;
      const int a = feeds(g, u, av, "Add", sm);
      const int m = a >= 0 ? feeds(g, u, otherInput(g.nodes[a], x), "Mul", a) : -1;
      const int qv = m >= 0 ? withScalar(g, g.nodes[m], p.cube) : -1;
      const int q = feeds(g, u, qv, "Pow", m);
      if (q < 0 || g.nodes[q].in[0] != x || std::isnan(p.power = scalarConst(g, g.nodes[q].in[1]))) continue;
      chain = {q, m, a, sm, t};
    } else {
      continue;
    }
    for (int k : {h, o, y}) chain.push_back(k);
    std::sort(chain.begin(), chain.end());
    if (chain.back() != y) continue;
    fused = fusedNode("Gelu", opFusedGelu, last, {x});
    setAttr(fused, "tanh", static_cast<int64_t>(p.tanh_form));
    setAttr(fused, "half", p.half);
    setAttr(fused, "one", p.one);
    if (p.tanh_form) setAttr(fused, "power", p.power), setAttr(fused, "cube", p.cube), setAttr(fused, "scale", p.scale);
    else setAttr(fused, "div", p.div);
    return true;
  }
  return false;
}

/// The single int64 / int32 value of a constant, or `none`.
int64_t intConst(const Graph& g, int v, int64_t none) {
  if (v < 0 || !g.values[v].is_const) return none;
  const Buf& b = g.values[v].constant;
  if (b.numel() != 1) return none;
  return b.dt == DType::I64 ? b.as<int64_t>()[0] : b.dt == DType::I32 ? b.as<int32_t>()[0] : none;
}

constexpr int64_t kNoInt = std::numeric_limits<int64_t>::min();

/// Slice(t, start, to the end, one axis, step 2): the axis, or kNoInt.
int64_t strideTwoSlice(const Graph& g, const Node& n, int64_t start) {
  if (!is(n, "Slice") || n.in.size() != 5 || intConst(g, n.in[1], kNoInt) != start || intConst(g, n.in[4], kNoInt) != 2)
    return kNoInt;
  if (intConst(g, n.in[2], kNoInt) < (int64_t{1} << 30)) return kNoInt;  // "to the end" (torch writes INT64_MAX)
  return intConst(g, n.in[3], kNoInt);
}

/// Unsqueeze's one axis (attribute before opset 13, input from it), or kNoInt.
int64_t unsqueezeAxis(const Graph& g, const Node& n) {
  if (!is(n, "Unsqueeze")) return kNoInt;
  if (const std::vector<int64_t>* axes = n.attrInts("axes")) return axes->size() == 1 ? (*axes)[0] : kNoInt;
  return n.in.size() == 2 ? intConst(g, n.in[1], kNoInt) : kNoInt;
}

/// The node among a's two readers that is Mul(a, x) or Mul(x, a), x = tab; -1 if none.
int mulWith(const Graph& g, const std::vector<int>& readers, int a, int tab) {
  for (int i : readers)
    if (is(g.nodes[i], "Mul") && otherInput(g.nodes[i], a) == tab) return i;
  return -1;
}

/// The per-row scale chain from Abs node p; see fuse.h.
bool matchAbsMaxScale(const Graph& g, const Uses& u, const std::vector<char>& f32, int p, std::vector<int>& chain, Node& fused) {
  const Node& ab = g.nodes[p];
  if (!is(ab, "Abs") || ab.in.size() != 1 || ab.in[0] < 0 || !f32[ab.in[0]]) return false;
  const int mx = u.single(ab.out[0]);
  if (mx < 0 || !isLastAxisReduce(g, g.nodes[mx], "ReduceMax")) return false;
  const int dv = u.single(g.nodes[mx].out[0]);
  if (dv < 0 || !is(g.nodes[dv], "Div") || g.nodes[dv].in.size() != 2 || g.nodes[dv].in[0] != g.nodes[mx].out[0]) return false;
  const float div = scalarConst(g, g.nodes[dv].in[1]);
  const int fl = u.single(g.nodes[dv].out[0]);
  if (std::isnan(div) || fl < 0 || !is(g.nodes[fl], "Max") || g.nodes[fl].in.size() != 2 || g.nodes[fl].in[0] != g.nodes[dv].out[0])
    return false;
  const float floor = scalarConst(g, g.nodes[fl].in[1]);
  if (!(floor > 0.f)) return false;  // (opAbsMaxScale relies on it)
  chain = {p, mx, dv, fl};
  fused = fusedNode("AbsMaxScale", opAbsMaxScale, g.nodes[fl], {ab.in[0]});
  setAttr(fused, "divisor", div);
  setAttr(fused, "floor", floor);
  return true;
}

/// Attention's Div(scores, c) -> Add(., mask) -> Softmax(last axis) from Div node p; see fuse.h.
bool matchScaleMaskSoftmax(const Graph& g, const Uses& u, const std::vector<char>& f32, int p, std::vector<int>& chain,
                           Node& fused) {
  const Node& dv = g.nodes[p];
  if (!is(dv, "Div") || dv.in.size() != 2 || dv.in[0] < 0 || !f32[dv.in[0]]) return false;
  const float div = scalarConst(g, dv.in[1]);
  const int add = u.single(dv.out[0]);
  if (std::isnan(div) || add < 0 || !is(g.nodes[add], "Add")) return false;
  const int mask = otherInput(g.nodes[add], dv.out[0]);
  const int sm = u.single(g.nodes[add].out[0]);
  if (mask < 0 || !f32[mask] || sm < 0 || !is(g.nodes[sm], "Softmax") || g.nodes[sm].attrInt("axis", g.opset >= 13 ? -1 : 1) != -1)
    return false;
  chain = {p, add, sm};
  fused = fusedNode("ScaleMaskSoftmax", opScaleMaskSoftmax, g.nodes[sm], {dv.in[0], mask});
  setAttr(fused, "divisor", div);
  return true;
}

/// The RoPE chain from Slice node p (a = t[0::2]); see fuse.h.
bool matchRope(const Graph& g, const Uses& u, const std::vector<std::vector<int>>& readers, const std::vector<char>& f32,
               int p, std::vector<int>& chain, Node& fused) {
  const Node& sa = g.nodes[p];
  const int64_t axis = strideTwoSlice(g, sa, 0);
  if (axis == kNoInt || sa.in[0] < 0 || !f32[sa.in[0]]) return false;
  const int t = sa.in[0], a = sa.out[0];
  // b: the other stride-2 slice of t on the same axis
  int pb = -1;
  for (int i : readers[t])
    if (i != p && strideTwoSlice(g, g.nodes[i], 1) == axis && g.nodes[i].in[0] == t) pb = i;
  if (pb < 0) return false;
  const int b = g.nodes[pb].out[0];
  if (u.count[a] != 2 || u.count[b] != 2) return false;
  // Sub(Mul(a, cos), Mul(b, sin)): the Sub a Mul of a feeds; cos and sin from its operands' Muls
  int sub = -1;
  for (int i : readers[a]) {
    const int next = is(g.nodes[i], "Mul") ? u.single(g.nodes[i].out[0]) : -1;
    if (next >= 0 && is(g.nodes[next], "Sub") && g.nodes[next].in.size() == 2) sub = next;
  }
  if (sub < 0) return false;
  const auto producer = [&](int x, int v) {  // the reader of x that writes v
    for (int i : readers[x])
      if (g.nodes[i].out[0] == v) return i;
    return -1;
  };
  const int ac = producer(a, g.nodes[sub].in[0]), bs = producer(b, g.nodes[sub].in[1]);
  if (ac < 0 || bs < 0 || !is(g.nodes[ac], "Mul") || !is(g.nodes[bs], "Mul")) return false;
  const int cosv = otherInput(g.nodes[ac], a), sinv = otherInput(g.nodes[bs], b);
  if (cosv < 0 || sinv < 0 || cosv == sinv || !f32[cosv] || !f32[sinv]) return false;
  const int as = mulWith(g, readers[a], a, sinv), bc = mulWith(g, readers[b], b, cosv);
  if (as < 0 || bc < 0 || as == ac || bc == bs) return false;
  const int add = u.single(g.nodes[as].out[0]);
  if (add < 0 || add != u.single(g.nodes[bc].out[0]) || !is(g.nodes[add], "Add")) return false;
  if (u.single(g.nodes[ac].out[0]) != sub || u.single(g.nodes[bs].out[0]) != sub) return false;
  // both halves Unsqueezed on one axis and Concatenated, first the Sub's, on that axis
  const int u0 = u.single(g.nodes[sub].out[0]), u1 = u.single(g.nodes[add].out[0]);
  if (u0 < 0 || u1 < 0) return false;
  const int64_t k = unsqueezeAxis(g, g.nodes[u0]);
  if (k == kNoInt || unsqueezeAxis(g, g.nodes[u1]) != k) return false;
  const int cat = u.single(g.nodes[u0].out[0]);
  if (cat < 0 || !is(g.nodes[cat], "Concat") || u.single(g.nodes[u1].out[0]) != cat || g.nodes[cat].in.size() != 2 ||
      g.nodes[cat].in[0] != g.nodes[u0].out[0] || g.nodes[cat].in[1] != g.nodes[u1].out[0] || g.nodes[cat].attrInt("axis", kNoInt) != k)
    return false;
  chain = {p, pb, ac, bs, sub, as, bc, add, u0, u1, cat};
  std::sort(chain.begin(), chain.end() - 1);  // (the Concat, last in order, is replaced)
  if (chain.end()[-2] > cat) return false;
  fused = fusedNode("Rope", opRope, g.nodes[cat], {t, cosv, sinv});
  setAttr(fused, "axis", axis);
  setAttr(fused, "stack", k);
  return true;
}

/// A node crt.Elementwise takes as a step (backend.h's Binary ops of two inputs and Unary ops, a Cast between float32
/// and float16), its inputs of one known float type; its step (operands unset), or kind -1.
struct EwCandidate {
  int kind = -1, code = 0, out_type = 0;
};
EwCandidate ewCandidate(const Graph& g, const Node& n, const std::vector<int>& types) {
  if (n.is_static || n.out.size() != 1 || n.in.empty()) return {};
  const DeviceOpKind k = deviceOpOf(g, n);
  const int f32 = static_cast<int>(DType::F32), f16 = static_cast<int>(DType::F16);
  int t = 0;
  for (int v : n.in) {
    if (v < 0 || (types[v] != f32 && types[v] != f16) || (t && types[v] != t)) return {};
    t = types[v];
  }
  if (k.op == DeviceOp::Binary && n.in.size() == 2) return {0, k.code, t};
  // (not a float32 Sigmoid: the CPU's is the kernel set's vector exp but on a tail of scalar exp, which a program per
  // element cannot reproduce; its float16 one is scalar)
  if (k.op == DeviceOp::Unary && n.in.size() == 1 && !(k.code == int(device::Unary::Sigmoid) && t == f32)) return {1, k.code, t};
  if (k.op == DeviceOp::Cast && (k.code == f32 || k.code == f16)) return {2, 0, k.code};
  return {};
}

/// The program of one group (its members in graph order, the last one's result the output): fills the fused node's
/// inputs; false when it needs more inputs or steps than a program holds.
bool ewGroupProgram(const Graph& g, const std::vector<int>& members, const std::vector<EwCandidate>& cand, std::vector<int>& inputs,
                    std::vector<int64_t>& steps) {
  std::vector<std::pair<int, int>> made;  // (value, step)
  const auto operand = [&](int v) -> int64_t {
    for (const auto& [value, step] : made)
      if (value == v) return device::kEwInputs + step;
    for (size_t k = 0; k < inputs.size(); ++k)
      if (inputs[k] == v) return static_cast<int64_t>(k);
    inputs.push_back(v);
    return static_cast<int64_t>(inputs.size()) - 1;
  };
  for (size_t s = 0; s < members.size(); ++s) {
    const Node& n = g.nodes[members[s]];
    const EwCandidate& c = cand[members[s]];
    const int64_t a = operand(n.in[0]), b = c.kind == 0 ? operand(n.in[1]) : 0;
    steps.insert(steps.end(), {c.kind, c.code, c.out_type == static_cast<int>(DType::F16), a, b});
    made.push_back({n.out[0], static_cast<int>(s)});
  }
  return inputs.size() <= static_cast<size_t>(device::kEwInputs) && members.size() <= static_cast<size_t>(device::kEwSteps);
}

/// Fuses every chain of two or more elementwise steps (ewCandidate) whose intermediates only the chain reads into one
/// crt.Elementwise; returns the chains fused.
int fuseElementwise(Graph& g) {
  const std::vector<int> types = knownTypes(g);
  const Uses u(g);
  const int n = static_cast<int>(g.nodes.size());
  std::vector<EwCandidate> cand(n);
  for (int i = 0; i < n; ++i) cand[i] = ewCandidate(g, g.nodes[i], types);
  // each candidate's result feeds at most one candidate that reads it alone: the groups are trees, named by their last
  std::vector<int> root(n, -1);
  for (int i = n - 1; i >= 0; --i) {
    if (cand[i].kind < 0) continue;
    const int r = u.single(g.nodes[i].out[0]);
    root[i] = r >= 0 && cand[r].kind >= 0 ? root[r] : i;
  }
  std::vector<std::vector<int>> members(n);
  for (int i = 0; i < n; ++i)
    if (root[i] >= 0) members[root[i]].push_back(i);
  std::vector<char> drop(n, 0);
  std::vector<Node> fusedAt(n);
  int fused = 0;
  for (int r = 0; r < n; ++r) {
    if (members[r].size() < 2) continue;
    std::vector<int> inputs;
    std::vector<int64_t> steps;
    if (!ewGroupProgram(g, members[r], cand, inputs, steps)) continue;
    Node f = fusedNode("Elementwise", opElementwise, g.nodes[r], inputs);
    f.attrs["steps"].kind = Attr::Ints;
    f.attrs["steps"].ints = std::move(steps);
    setAttr(f, "type", static_cast<int64_t>(cand[r].out_type));
    for (int m : members[r]) drop[m] = 1;
    fusedAt[r] = std::move(f);
    ++fused;
  }
  if (fused == 0) return 0;
  std::vector<Node> out;
  for (int i = 0; i < n; ++i) {
    if (!fusedAt[i].op.empty()) out.push_back(std::move(fusedAt[i]));
    else if (!drop[i]) out.push_back(std::move(g.nodes[i]));
  }
  g.nodes = std::move(out);
  return fused;
}

}  // namespace

int fuseChains(Graph& g, bool cpuOnly) {
  const std::vector<char> f32 = knownFloat32(g);
  const Uses u(g);
  std::vector<std::vector<int>> readers(g.values.size());  // every reader of each value (RoPE's a and b have two)
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].in)
      if (v >= 0 && (readers[v].empty() || readers[v].back() != static_cast<int>(i))) readers[v].push_back(static_cast<int>(i));
  std::vector<char> drop(g.nodes.size(), 0);
  std::vector<std::pair<int, Node>> replace;  // (index of the chain's last node, the fused node)
  int fused = 0;
  for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
    if (drop[i] || g.nodes[i].is_static) continue;
    std::vector<int> chain;
    Node f;
    if (!matchRmsNorm(g, u, f32, i, chain, f) && !matchSiluMul(g, u, f32, i, chain, f) &&
        !matchRope(g, u, readers, f32, i, chain, f) && !matchScaleMaskSoftmax(g, u, f32, i, chain, f) &&
        !matchGelu(g, u, f32, i, chain, f) &&
        !(cpuOnly && matchAbsMaxScale(g, u, f32, i, chain, f)))
      continue;
    bool free = true;
    for (int c : chain) free &= !drop[c];
    if (!free) continue;
    for (int c : chain) drop[c] = 1;
    replace.push_back({chain.back(), std::move(f)});
    ++fused;
  }
  if (fused > 0) {
    std::vector<Node> out;
    size_t r = 0;
    std::sort(replace.begin(), replace.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
      if (r < replace.size() && replace[r].first == i) out.push_back(std::move(replace[r++].second));
      else if (!drop[i]) out.push_back(std::move(g.nodes[i]));
    }
    g.nodes = std::move(out);
  }
  return fused + (cpuOnly ? 0 : fuseElementwise(g));
}

}  // namespace crt::detail
