// kv_cache.cpp — the in-session KV cache (kv_cache.h): the load-time rewrite of the exported
// Concat -> [GQA repeat] -> [Transpose] -> MatMul chains into KvScores / KvValues, and those two ops.
#include "runtime/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "runtime/backend.h"
#include "runtime/fuse.h"
#include "runtime/kernels.h"
#include "runtime/loader.h"
#include "runtime/op_geometry.h"
#include "runtime/ops_common.h"
#include "runtime/thread_pool.h"

namespace crt::detail {
namespace {

// ------------------------------------------------------------------------------------------- matching
/// Consumers of each value (node indices).
std::vector<std::vector<int>> consumersOf(const Graph& g) {
  std::vector<std::vector<int>> c(g.values.size());
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].in)
      if (v >= 0) c[v].push_back(static_cast<int>(i));
  return c;
}

bool constInts(const Graph& g, int v, const std::vector<int64_t>& want) {
  if (v < 0 || !g.values[v].is_const) return false;
  const Buf& b = g.values[v].constant;
  if (b.dt != DType::I64 || b.numel() != static_cast<int64_t>(want.size())) return false;
  for (size_t i = 0; i < want.size(); ++i)
    if (b.as<int64_t>()[i] != want[i]) return false;
  return true;
}

bool isOutput(const Graph& g, int v) { return std::find(g.outputs.begin(), g.outputs.end(), v) != g.outputs.end(); }

/// What one past input's chain looks like.
struct Chain {
  int past = -1, concat = -1, matmul = -1;
  bool keys = false;  // KvScores (through a Transpose) or KvValues
  bool merged = false;  // the MatMul multiplies 3-D [batch*heads, ., .] tensors (a Reshape before it)
  int64_t rep = 1;
  std::vector<int> dead;  // nodes the fused op replaces
};

class ChainMatcher {
 public:
  explicit ChainMatcher(const Graph& g) : g_(g), cons_(consumersOf(g)) {}

  Chain match(int past) const {
    Chain c;
    c.past = past;
    const std::string& name = g_.values[past].name;
    for (int ni : cons_[past]) {
      const Node& n = g_.nodes[ni];
      if (n.op == "Shape" && n.domain.empty()) continue;
      if (n.op != "Concat" || !n.domain.empty() || n.in.size() != 2 || n.in[0] != past || c.concat >= 0)
        bad(name, "is read by " + n.where() + "; the in-session cache needs present = Concat(past, new, axis 2)");
      const int64_t axis = n.attrInt("axis", 0);
      if (axis != 2 && axis != -2) bad(name, "is concatenated on axis " + std::to_string(axis) + ", not 2");
      c.concat = ni;
    }
    if (c.concat < 0) bad(name, "is not concatenated with the new keys/values");
    c.dead.push_back(c.concat);
    int v = g_.nodes[c.concat].out[0];
    if (!isOutput(g_, v)) bad(name, "'s Concat is not a graph output (present.N)");
    v = followRepeat(v, c, name);
    const Node& next = single(v, name);
    if (next.op == "Transpose" && constPerm(next)) {
      c.keys = true;
      c.dead.push_back(index(next));
      v = next.out[0];
    }
    if (single(v, name).op == "Reshape" && single(v, name).in[0] == v) {  // [B, H, ., .] -> [B*H, ., .]
      c.merged = true;
      c.dead.push_back(index(single(v, name)));
      v = single(v, name).out[0];
    }
    const Node& mm = single(v, name);
    if (mm.op != "MatMul" || !mm.domain.empty() || mm.in.size() != 2 || mm.in[1] != v || mm.packed)
      bad(name, "does not feed an attention MatMul (found " + mm.where() + ")");
    c.matmul = index(mm);
    return c;
  }

 private:
  [[noreturn]] static void bad(const std::string& past, const std::string& why) {
    fail(StatusCode::ModelError, "KV cache: input '" + past + "' " + why +
                                     " (the form compress export --kv-cache writes; run without --kv-capacity to pass past/present yourself)");
  }
  int index(const Node& n) const { return static_cast<int>(&n - g_.nodes.data()); }
  /// The only node reading `v` (which is no other graph output than allowed).
  const Node& single(int v, const std::string& past) const {
    std::vector<int> readers;
    for (int ni : cons_[v]) readers.push_back(ni);
    if (readers.size() != 1) bad(past, "feeds " + std::to_string(readers.size()) + " nodes where one attention MatMul was expected");
    return g_.nodes[readers[0]];
  }
  bool constPerm(const Node& n) const {
    const auto* p = n.attrInts("perm");
    return p && *p == std::vector<int64_t>{0, 1, 3, 2};
  }
  /// Unsqueeze(axis 2) -> Expand([1,1,r,1,1]) -> Reshape([0, h, -1, d]): the GQA repeat.
  int followRepeat(int v, Chain& c, const std::string& past) const {
    const Node& u = single(v, past);
    if (u.op != "Unsqueeze" || !constInts(g_, u.in.size() > 1 ? u.in[1] : -1, {2})) return v;
    const Node& e = single(u.out[0], past);
    if (e.op != "Expand" || e.in.size() != 2 || !g_.values[e.in[1]].is_const) bad(past, "has an Unsqueeze that is not a GQA repeat");
    const Buf& shape = g_.values[e.in[1]].constant;
    if (shape.dt != DType::I64 || shape.numel() != 5) bad(past, "has an Expand that is not a GQA repeat");
    c.rep = shape.as<int64_t>()[2];
    const Node& r = single(e.out[0], past);
    if (r.op != "Reshape" || c.rep < 1) bad(past, "has an Expand that is not a GQA repeat");
    c.dead.push_back(index(u));
    c.dead.push_back(index(e));
    c.dead.push_back(index(r));
    return r.out[0];
  }

  const Graph& g_;
  std::vector<std::vector<int>> cons_;
};

/// Removes the nodes marked in `dead` and renumbers the values' producers.
void dropNodes(Graph& g, const std::vector<char>& dead) {
  std::vector<Node> kept;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (!dead[i]) kept.push_back(std::move(g.nodes[i]));
  g.nodes = std::move(kept);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].out) g.values[v].producer = static_cast<int>(i);
}

// ------------------------------------------------------------------------------------------- the ops
const KvState& stateOf(const OpCtx& c) { return *c.env.g->kv; }

/// Appends input 1 ([1, kv_heads, S, head_dim]) of node c at row `length` of entry `e`.
void appendRows(OpCtx& c, const KvState& kv, int e, const Buf& x) {
  const int64_t S = x.shape[2], H = kv.kv_heads, D = kv.head_dim;
  const float* src = floatData(c, x);
  char* base = static_cast<char*>(kv.entries[e].data());
  const size_t es = dtypeSize(kv.storage);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t s = 0; s < S; ++s) {
      const float* row = src + (h * S + s) * D;
      const int64_t r = h * kv.capacity + kv.length + s;  // the row's index in the entry
      char* dst = base + r * D * es;
      if (kv.storage == DType::F16) {
        c.env.k->float_to_half(row, reinterpret_cast<uint16_t*>(dst), D);
      } else if (kv.storage == DType::I8) {
        float absmax = 0.f;
        bool nan = false;
        for (int64_t d = 0; d < D; ++d) absmax = std::max(absmax, std::fabs(row[d])), nan = nan || std::isnan(row[d]);
        const float scale = device::kvInt8Scale(absmax, nan);
        reinterpret_cast<float*>(base + kv.scalesOffset())[r] = scale;
        for (int64_t d = 0; d < D; ++d) reinterpret_cast<int8_t*>(dst)[d] = device::kvInt8(row[d], scale);
      } else {
        std::memcpy(dst, row, D * sizeof(float));
      }
    }
}

/// Rows [0, T) of kv head h of entry e as fp32: the buffer itself, or converted into `tmp`.
const float* cachedRows(const OpCtx& c, const KvState& kv, int e, int64_t h, int64_t T, float* tmp) {
  const char* base = static_cast<const char*>(kv.entries[e].data());
  const int64_t D = kv.head_dim, first = h * kv.capacity;
  if (kv.storage == DType::F32) return reinterpret_cast<const float*>(base) + first * D;
  if (kv.storage == DType::F16) {
    c.env.k->half_to_float(reinterpret_cast<const uint16_t*>(base) + first * D, tmp, T * D);
    return tmp;
  }
  const int8_t* q = reinterpret_cast<const int8_t*>(base) + first * D;
  const float* scale = reinterpret_cast<const float*>(base + kv.scalesOffset()) + first;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) tmp[t * D + d] = static_cast<float>(q[t * D + d]) * scale[t];  // (device::kvAt's)
  return tmp;
}

/// [1, H, S, x] or (batch*heads merged, batch 1) [H, S, x].
bool headsFirst(const Buf& b, int64_t heads) {
  return (b.shape.rank == 4 && b.shape[0] == 1 && b.shape[1] == heads) || (b.shape.rank == 3 && b.shape[0] == heads);
}

/// Checks the new rows' shape and that they fit.
void checkNew(const OpCtx& c, const KvState& kv, const Buf& x, int64_t S_q) {
  if (x.shape.rank != 4 || x.shape[0] != 1 || x.shape[1] != kv.kv_heads || x.shape[3] != kv.head_dim || x.shape[2] != S_q)
    c.bad("new keys/values " + x.shape.str() + " do not fit the cache [1, " + std::to_string(kv.kv_heads) + ", S, " +
          std::to_string(kv.head_dim) + "]");
  if (kv.length + x.shape[2] > kv.capacity) c.bad("the KV cache is full");
}

/// Calls fn(rows, query head) for every query head, in parallel over kv heads: `rows` are the T cached rows
/// of the head's kv head as fp32 (converted once per kv head when the cache is fp16, shared by its GQA group).
template <typename F>
void forEachHead(OpCtx& c, const KvState& kv, int e, int64_t T, int64_t rep, F&& fn) {
  const int64_t D = kv.head_dim;
  float* tmp = kv.storage != DType::F32 ? static_cast<float*>(c.scratch(static_cast<size_t>(kv.kv_heads * T * D) * sizeof(float))) : nullptr;
  c.env.pool->parallelFor(kv.kv_heads, [&](int64_t h) {
    const float* rows = cachedRows(c, kv, e, h, T, tmp ? tmp + h * T * D : nullptr);
    for (int64_t g = 0; g < rep; ++g) fn(rows, h * rep + g);
  });
}

/// The body both attention ops share: appends input 1's new rows to the node's entry, then product(x, rows, qh, y)
/// for every query head qh (x: input 0 as fp32, rows: the head's cached rows, y: the fp32 output).
template <typename Product>
void attend(OpCtx& c, const KvAttention& a, Product&& product) {
  const KvState& kv = stateOf(c);
  appendRows(c, kv, a.entry, c.in(1));
  const float* x = floatData(c, c.in(0));
  FloatOut o = floatOut(c, c.in(0).dt, a.out);
  forEachHead(c, kv, a.entry, a.T, a.rep, [&](const float* rows, int64_t qh) { product(x, rows, qh, o.p); });
  finish(o);
}

/// Kv head h of entry e as the decode kernels read it (Kernels::kv_dot / kv_axpy): its rows where they lie, their
/// kind and, for int8, their scales.
struct HeadRows {
  const void* rows;
  const float* scales;
  int kind;
};
HeadRows headRows(const KvState& kv, int e, int64_t h) {
  const device::KvCache v = kv.view(e, 1);
  const int64_t first = h * kv.capacity;
  const int kind = kv.storage == DType::F32 ? kKvRowsF32 : kv.storage == DType::F16 ? kKvRowsF16 : kKvRowsI8;
  return {static_cast<const char*>(v.data) + first * kv.head_dim * static_cast<int64_t>(dtypeSize(kv.storage)),
          v.scales ? v.scales + first : nullptr, kind};
}

/// A decode step (one new row per head) over an fp16 or int8 cache with heads of 16 values or more: the rows read
/// where they lie, in their own kind, instead of converted to fp32 first (synthetic int4 model at T = 500, int8
/// cache: 4.5-4.7 -> 3.9-4.2 ms per token). An fp32 cache keeps Eigen's GEMV (as fast), and heads of 8 (stories260K)
/// the converting path (the per-row kernels would run their scalar tails: 0.078 -> 0.13 ms per token).
bool decodeStep(const KvState& kv, const KvAttention& a) { return a.S == 1 && kv.storage != DType::F32 && kv.head_dim >= 16; }

/// A decode step of KvScores (kernel kv_dot: query rows of D in, T scores out per head) or KvValues (kv_axpy: T
/// weights in, D values out): appends input 1's new rows, then runs the kernel over each query head's kv head.
using RowsKernel = void (*)(const float*, const void*, const float*, int, int64_t, int64_t, float*);
void decodeHeads(OpCtx& c, const KvAttention& a, RowsKernel kernel, int64_t inLen, int64_t outLen) {
  const KvState& kv = stateOf(c);
  appendRows(c, kv, a.entry, c.in(1));
  const float* x = floatData(c, c.in(0));
  FloatOut o = floatOut(c, c.in(0).dt, a.out);
  c.env.pool->parallelFor(kv.kv_heads, [&](int64_t h) {
    const HeadRows r = headRows(kv, a.entry, h);
    for (int64_t qh = h * a.rep; qh < (h + 1) * a.rep; ++qh) kernel(x + qh * inLen, r.rows, r.scales, r.kind, a.T, a.D, o.p + qh * outLen);
  });
  finish(o);
}

/// scores[0, h, s, t] = q[0, h, s, :] . K[h / rep][t, :] over t < length + S, after appending the new keys.
void opKvScores(OpCtx& c) {
  const KvAttention a = kvScoresGeometry(c);
  if (decodeStep(stateOf(c), a)) return decodeHeads(c, a, c.env.k->kv_dot, a.D, a.T);
  attend(c, a, [&](const float* q, const float* K, int64_t qh, float* y) {
    c.env.k->gemm_nt(a.S, a.T, a.D, q + qh * a.S * a.D, a.D, K, a.D, y + qh * a.S * a.T, a.T);
  });
}

/// out[0, h, s, :] = sum over t of probs[0, h, s, t] * V[h / rep][t, :], after appending the new values.
void opKvValues(OpCtx& c) {
  const KvAttention a = kvValuesGeometry(c);
  if (decodeStep(stateOf(c), a)) return decodeHeads(c, a, c.env.k->kv_axpy, a.T, a.D);
  attend(c, a, [&](const float* p, const float* V, int64_t qh, float* y) {
    c.env.k->gemm_nn(a.S, a.D, a.T, p + qh * a.S * a.T, a.T, V, a.D, y + qh * a.S * a.D, a.D);
  });
}

/// crt.KvAttention: KvScores -> crt.ScaleMaskSoftmax -> KvValues of one layer in one op, with the chain's arithmetic
/// (the same kernel calls in the same order: the same bits); each query head's scores stay in a scratch block.
void opKvAttention(OpCtx& c) {
  const KvState& kv = stateOf(c);
  const KvAttention a = kvAttentionGeometry(c);
  const device::RowMask& m = a.mask;
  const int ev = a.entry_v;
  appendRows(c, kv, a.entry, c.in(1));
  appendRows(c, kv, ev, c.in(3));
  const float* q = c.in(0).as<float>();
  const float* M = c.in(2).as<float>();
  const float div = c.node.attrFloat("divisor", 1.f);
  float* Y = c.outT<float>(0, a.out);
  float* sc = static_cast<float*>(c.scratch(static_cast<size_t>(kv.kv_heads * a.S * a.T) * sizeof(float)));
  const int64_t D = a.D, T = a.T, S = a.S;
  const bool decode = decodeStep(kv, a);  // (the same kernels as KvScores / KvValues take for it)
  float* tmp = kv.storage != DType::F32 && !decode
                   ? static_cast<float*>(c.scratch(static_cast<size_t>(kv.kv_heads * 2 * T * D) * sizeof(float)))
                   : nullptr;
  c.env.pool->parallelFor(kv.kv_heads, [&](int64_t h) {
    const HeadRows kr = headRows(kv, a.entry, h), vr = headRows(kv, ev, h);
    const float* K = decode ? nullptr : cachedRows(c, kv, a.entry, h, T, tmp ? tmp + 2 * h * T * D : nullptr);
    const float* V = decode ? nullptr : cachedRows(c, kv, ev, h, T, tmp ? tmp + (2 * h + 1) * T * D : nullptr);
    float* p = sc + h * S * T;
    for (int64_t g = 0; g < a.rep; ++g) {
      const int64_t qh = h * a.rep + g;
      if (decode) c.env.k->kv_dot(q + qh * D, kr.rows, kr.scales, kr.kind, T, D, p);
      else c.env.k->gemm_nt(S, T, D, q + qh * S * D, D, K, D, p, T);
      for (int64_t s = 0; s < S; ++s) {  // (crt.ScaleMaskSoftmax's row loop)
        float* y = p + s * T;
        const float* mr = M + device::maskRowOffset(m, qh * S + s);
        if (m.ms[m.rank - 1] == 1) {
          for (int64_t j = 0; j < T; ++j) y[j] = y[j] / div + mr[j];
        } else {
          for (int64_t j = 0; j < T; ++j) y[j] = device::scaleMask(y[j], div, mr[0]);
        }
        c.env.k->softmax(y, y, 1, T);
      }
      if (decode) c.env.k->kv_axpy(p, vr.rows, vr.scales, vr.kind, T, D, Y + qh * D);
      else c.env.k->gemm_nn(S, D, T, p, T, V, D, Y + qh * S * D, D);
    }
  });
}

}  // namespace

namespace {

/// The parts both attention ops share: the node's entry and GQA repeat, and input 0 ([1, H, S, x] or [H, S, x])
/// checked against the cache's heads; `what` names input 0 in the error. S, T and the new rows checked.
KvAttention kvAttention(OpCtx& c, const char* what) {
  const KvState& kv = stateOf(c);
  KvAttention a;
  a.entry = kvEntryOf(c.node);
  a.rep = c.node.attrInt("rep", 1);
  a.H = kv.kv_heads * a.rep, a.D = kv.head_dim;
  const Buf& x = c.in(0);
  if (!headsFirst(x, a.H)) c.bad(std::string(what) + " " + x.shape.str() + " do not match the cache (" + std::to_string(a.H) + " heads)");
  a.S = x.shape[x.shape.rank - 2], a.T = kv.length + a.S;
  checkNew(c, kv, c.in(1), a.S);
  return a;
}

}  // namespace

KvAttention kvScoresGeometry(OpCtx& c) {
  KvAttention a = kvAttention(c, "queries");
  const Shape& q = c.in(0).shape;
  if (q[q.rank - 1] != a.D) c.bad("queries " + q.str() + " do not match the cache's head size " + std::to_string(a.D));
  a.out = q.rank == 4 ? Shape{1, a.H, a.S, a.T} : Shape{a.H, a.S, a.T};
  return a;
}

KvAttention kvValuesGeometry(OpCtx& c) {
  KvAttention a = kvAttention(c, "attention weights");
  const Shape& p = c.in(0).shape;
  if (p[p.rank - 1] != a.T) c.bad("attention weights " + p.str() + " span " + std::to_string(p[p.rank - 1]) + " keys, the cache " + std::to_string(a.T));
  a.out = p.rank == 4 ? Shape{1, a.H, a.S, a.D} : Shape{a.H, a.S, a.D};
  return a;
}

KvAttention kvAttentionGeometry(OpCtx& c) {
  KvAttention a = kvScoresGeometry(c);  // queries and new keys
  const KvState& kv = stateOf(c);
  for (int i : {0, 1, 2, 3})
    if (c.in(i).dt != DType::F32) c.bad("the fused attention takes float32 queries, keys, mask and values");
  a.entry_v = static_cast<int>(c.node.attrInt("entry_v", 0));
  checkNew(c, kv, c.in(3), a.S);
  a.mask = rowMask(c, a.out, c.in(2).shape);  // (a.out: the scores [1, H, S, T] or [H, S, T])
  a.out = a.out.rank == 4 ? Shape{1, a.H, a.S, a.D} : Shape{a.H, a.S, a.D};
  return a;
}

int fuseKvAttention(Graph& g) {
  std::vector<int> readers(g.values.size(), 0);
  for (const Node& n : g.nodes)
    for (int v : n.in)
      if (v >= 0) ++readers[v];
  for (int o : g.outputs) readers[o] += 2;  // (a graph output is never an intermediate)
  const auto only = [&](int v) { return v >= 0 && readers[v] == 1 && g.values[v].producer >= 0; };
  std::vector<char> dead(g.nodes.size(), 0);
  int fused = 0;
  for (Node& vn : g.nodes) {
    if (vn.fn != opKvValues || !only(vn.in[0])) continue;
    Node& sm = g.nodes[g.values[vn.in[0]].producer];
    if (sm.fn != opScaleMaskSoftmax || !only(sm.in[0])) continue;
    Node& kn = g.nodes[g.values[sm.in[0]].producer];
    if (kn.fn != opKvScores || kn.attrInt("rep", 1) != vn.attrInt("rep", 1)) continue;
    Node f;
    f.domain = "crt";
    f.op = "KvAttention";
    f.name = vn.name;
    f.fn = opKvAttention;
    f.in = {kn.in[0], kn.in[1], sm.in[1], vn.in[1]};
    f.out = vn.out;
    f.attrs = kn.attrs;  // entry (the keys'), rep
    f.attrs["entry_v"] = vn.attrs.at("entry");
    f.attrs["divisor"] = sm.attrs.at("divisor");
    dead[g.values[sm.in[0]].producer] = 1;
    dead[g.values[vn.in[0]].producer] = 1;
    vn = std::move(f);
    ++fused;
  }
  if (fused > 0) dropNodes(g, dead);
  return fused;
}

bool isKvAttention(const Node& n) { return n.fn == opKvScores || n.fn == opKvValues || n.fn == opKvAttention; }

bool kvOutputSpansCache(const Node& n) { return n.fn == opKvScores; }

int kvEntryOf(const Node& n) { return static_cast<int>(n.attrInt("entry", 0)); }

void kvEntryToDevice(Graph& g, const Node& n) {
  std::vector<int> entries = {kvEntryOf(n)};
  if (n.fn == opKvAttention) entries.push_back(static_cast<int>(n.attrInt("entry_v", 0)));  // (its values' entry)
  for (int i : entries) {
    KvState::Entry& e = g.kv->entries.at(static_cast<size_t>(i));
    if (e.on_device) continue;
    std::shared_ptr<Backend> b = g.device;
    const size_t bytes = e.buf.size();
    e.on_device = std::shared_ptr<void>(b->alloc(std::max<size_t>(bytes, 1)), [b](void* p) { b->release(p); });
    e.buf = AlignedBytes();
  }
}

// ------------------------------------------------------------------------------------------- rewrite
bool isPastInput(const IoInfo& io) {
  return io.shape.size() == 4 && (io.dtype == DType::F32 || io.dtype == DType::F16) && io.name.rfind("past", 0) == 0;
}

bool hasKvInputs(const Graph& g) {
  for (const auto& io : g.input_info)
    if (isPastInput(io)) return true;
  return false;
}

int64_t modelContext(const std::map<std::string, std::string>& metadata, int64_t fallback) {
  auto it = metadata.find("compress.context_length");
  if (it == metadata.end()) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  return end && *end == 0 && v > 0 && v <= (int64_t{1} << 24) ? v : fallback;
}

int enableKvCache(Graph& g, int64_t capacity, DType storage) {
  if (storage != DType::F32 && storage != DType::F16 && storage != DType::I8)
    fail(StatusCode::InvalidArgument, "the KV cache is stored as float32, float16 or int8");
  if (capacity < 1) fail(StatusCode::InvalidArgument, "the KV cache needs a capacity of at least one token");
  auto kv = std::make_shared<KvState>();
  kv->capacity = capacity;
  kv->storage = storage;
  std::vector<Chain> chains;
  ChainMatcher m(g);
  for (size_t i = 0; i < g.inputs.size(); ++i) {
    const IoInfo& io = g.input_info[i];
    if (!isPastInput(io)) continue;  // past.N.key/value (optimum: past_key_values.N.key)
    chains.push_back(m.match(g.inputs[i]));
    if (io.shape[1] < 1 || io.shape[3] < 1) fail(StatusCode::ModelError, "KV cache: input '" + io.name + "' needs fixed kv-head and head-size dims");
    if (kv->kv_heads && (kv->kv_heads != io.shape[1] || kv->head_dim != io.shape[3]))
      fail(StatusCode::ModelError, "KV cache: the past inputs differ in kv heads or head size");
    kv->kv_heads = io.shape[1];
    kv->head_dim = io.shape[3];
  }
  if (chains.empty())
    fail(StatusCode::ModelError, "the model has no past.N.key/value inputs: export it with compress export --kv-cache for a cache");
  int64_t bytes = 0;
  if (!checkedNumel(std::vector<int64_t>{kv->kv_heads, capacity, kv->head_dim}.data(), 3, &bytes) ||
      !checkedBytes(bytes, static_cast<int64_t>(dtypeSize(storage)), &bytes) || bytes > (int64_t{1} << 46))
    fail(StatusCode::InvalidArgument, "KV cache capacity too large");
  bytes = static_cast<int64_t>(kv->entryBytes());  // (with an int8 cache's scales)
  std::vector<char> dead(g.nodes.size(), 0);
  std::vector<int> drop_outputs;
  for (size_t e = 0; e < chains.size(); ++e) {
    const Chain& c = chains[e];
    g.limits.take(g.constant_bytes, bytes, "the KV cache (" + std::to_string(capacity) + " tokens)");
    KvState::Entry entry;
    entry.past = c.past;
    entry.model_dtype = g.values[c.past].constant.dt;
    entry.buf.resize(static_cast<size_t>(bytes));
    kv->entries.push_back(std::move(entry));
    Node& mm = g.nodes[c.matmul];
    mm.op = c.keys ? "KvScores" : "KvValues";
    mm.domain = "crt";
    mm.in = {mm.in[0], g.nodes[c.concat].in[1]};
    mm.attrs["entry"].kind = Attr::Int;
    mm.attrs["entry"].i = static_cast<int64_t>(e);
    mm.attrs["rep"].kind = Attr::Int;
    mm.attrs["rep"].i = c.rep;
    mm.fn = c.keys ? opKvScores : opKvValues;
    for (int d : c.dead) dead[d] = 1;
    drop_outputs.push_back(g.nodes[c.concat].out[0]);
    g.values[c.past].per_run_shape = true;
  }
  dropNodes(g, dead);
  for (size_t i = g.outputs.size(); i-- > 0;)
    if (std::find(drop_outputs.begin(), drop_outputs.end(), g.outputs[i]) != drop_outputs.end()) {
      g.outputs.erase(g.outputs.begin() + static_cast<long>(i));
      g.output_info.erase(g.output_info.begin() + static_cast<long>(i));
    }
  for (size_t i = g.inputs.size(); i-- > 0;)
    if (g.values[g.inputs[i]].per_run_shape) {
      for (auto& en : kv->entries)
        if (en.past == g.inputs[i]) en.model_dtype = g.input_info[i].dtype;
      g.inputs.erase(g.inputs.begin() + static_cast<long>(i));
      g.input_info.erase(g.input_info.begin() + static_cast<long>(i));
    }
  for (size_t i = 1; i < g.inputs.size(); ++i) {  // attention masks over past + new tokens (optimum's layout)
    const IoInfo& io = g.input_info[i];
    if (io.shape.size() != 2 || io.dim_names.size() != 2 || io.dim_names[1] != "past+seq" ||
        (io.dtype != DType::I64 && io.dtype != DType::I32 && io.dtype != DType::Bool))
      fail(StatusCode::ModelError, "KV cache: input '" + io.name + "' is neither the token ids nor an attention mask [batch, past+seq]");
    KvState::TotalInput t;
    t.value = g.inputs[i];
    t.dtype = io.dtype;
    t.ones.resize(static_cast<size_t>(capacity) * dtypeSize(io.dtype));
    for (int64_t j = 0; j < capacity; ++j) {
      char* p = static_cast<char*>(t.ones.data()) + j * dtypeSize(io.dtype);
      if (io.dtype == DType::I64) *reinterpret_cast<int64_t*>(p) = 1;
      else if (io.dtype == DType::I32) *reinterpret_cast<int32_t*>(p) = 1;
      else *reinterpret_cast<uint8_t*>(p) = 1;
    }
    g.values[t.value].per_run_shape = true;
    kv->total_inputs.push_back(std::move(t));
  }
  g.kv = std::move(kv);
  const int fused = fuseKvAttention(g);
  prepareRuns(g);
  return fused;
}

void bindKvPast(const Graph& g, Buf* vals, int64_t rows) {
  const KvState& kv = *g.kv;
  for (const auto& e : kv.entries) {
    Buf& b = vals[e.past];
    b.dt = e.model_dtype;
    b.shape = Shape{1, kv.kv_heads, rows, kv.head_dim};
    b.data = e.data();  // only Shape reads it: the fused ops read the cache through KvState
  }
}

namespace {

/// Row S-1 of the second-to-last axis: [.., S, D] -> [.., 1, D].
void opLastRow(OpCtx& c) {
  const Buf& x = c.in(0);
  const StridedView v = lastRowView(c);
  const size_t es = dtypeSize(x.dt);
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, v.os));
  stridedCopy(x.as<uint8_t>() + v.offset * static_cast<int64_t>(es), v.st, v.os, y, es);
}

}  // namespace

StridedView lastRowView(const OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r < 2 || x.shape[r - 2] < 1) c.bad("needs [.., rows >= 1, D], got " + x.shape.str());
  StridedView v;
  v.os = x.shape;
  v.os[r - 2] = 1;
  contiguousStrides(x.shape, v.st);
  v.offset = (x.shape[r - 2] - 1) * v.st[r - 2];
  return v;
}

bool isLastRow(const Node& n) { return n.fn == opLastRow; }

bool lastPositionLogits(Graph& g) {
  if (g.outputs.empty() || g.values[g.outputs[0]].producer < 0) return false;
  int p = g.values[g.outputs[0]].producer;
  if (g.nodes[p].op == "Add" && g.nodes[p].domain.empty()) {  // classifier + bias
    int mm = -1;
    for (int v : g.nodes[p].in)
      if (v >= 0 && g.values[v].producer >= 0 && !g.values[v].is_const) mm = g.values[v].producer;
    p = mm;
  }
  if (p < 0) return false;
  const Node& n = g.nodes[p];
  const bool matmul = (n.op == "MatMul" && n.domain.empty()) || (n.op == "MatMulNBits" && n.domain == "com.microsoft");
  if (!matmul || !n.packed || n.in.empty() || n.in[0] < 0) return false;  // the classifier: a MatMul with packed weights
  Value row;
  row.name = "crt.last_row";
  const int id = static_cast<int>(g.values.size());
  g.values.push_back(row);
  Node take;
  take.op = "LastRow";
  take.domain = "crt";
  take.name = "crt.last_row";
  take.in = {n.in[0]};
  take.out = {id};
  take.fn = opLastRow;
  g.nodes[p].in[0] = id;
  g.nodes.insert(g.nodes.begin() + p, std::move(take));
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].out) g.values[v].producer = static_cast<int>(i);
  prepareRuns(g);
  return true;
}

void bindKvDryRun(const Graph& g, Buf* vals) {
  for (const auto& t : g.kv->total_inputs) {
    Buf& b = vals[t.value];
    b.dt = t.dtype;
    b.shape = Shape{1, g.kv->capacity};
    b.data = t.ones.data();
  }
}

}  // namespace crt::detail
