// kv_cache.h — the KV cache kept inside a session (SessionOptions::kv_capacity).
//
// A model exported with `compress export --kv-cache` computes present = Concat(past, new, axis 2), repeats
// the kv heads for GQA and feeds the attention MatMuls. With the cache in the session, each such chain is
// replaced at load by one fused op: KvScores (appends the new keys in place, then scores = q . K^T over
// the cached rows) and KvValues (appends the new values, then probs . V). The cache is one preallocated
// buffer per past input, [kv_heads, capacity, head_dim] in fp32, fp16 or int8 (a float scale per row: a
// quarter of fp32's bytes read per step, within kvInt8's rounding); nothing is copied per token but
// the new rows. The past inputs stay in the graph as views whose shape says how many rows are cached (the
// position and mask arithmetic reads it) and disappear from Session::inputs(); the present outputs
// disappear from Session::outputs().
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/cuda/device_math.h"
#include "runtime/internal.h"

namespace crt::detail {

struct KvState {
  int64_t capacity = 0;  // rows each buffer holds
  int64_t length = 0;    // rows cached so far (the past length of the next run)
  int64_t kv_heads = 0, head_dim = 0;
  DType storage = DType::F32;  // F32, F16, or I8 with a float scale per row (device::KvCache)
  struct Entry {
    int past = -1;  // the graph input value it replaces (bound to a view each run)
    DType model_dtype = DType::F32;
    AlignedBytes buf;                 // [kv_heads][capacity][head_dim], then (I8) the rows' scales at scalesOffset()
    std::shared_ptr<void> on_device;  // the same on the session's device (backend.h), where its attention op runs
    void* data() const { return on_device ? on_device.get() : buf.data(); }
  };
  std::vector<Entry> entries;
  /// Where an I8 entry's float scales ([kv_heads][capacity]) start in its buffer, and the buffer's size.
  size_t scalesOffset() const {
    return (static_cast<size_t>(kv_heads * capacity * head_dim) * dtypeSize(storage) + 63) / 64 * 64;
  }
  size_t entryBytes() const {
    return storage == DType::I8 ? scalesOffset() + static_cast<size_t>(kv_heads * capacity) * sizeof(float)
                                : static_cast<size_t>(kv_heads * capacity * head_dim) * dtypeSize(storage);
  }
  /// The device view of entry e (its data, and an I8 entry's scales).
  device::KvCache view(int e, int64_t rep) const {
    device::KvCache v;
    const char* base = static_cast<const char*>(entries[static_cast<size_t>(e)].data());
    v.data = base;
    v.f16 = storage == DType::F16;
    v.scales = storage == DType::I8 ? reinterpret_cast<const float*>(base + scalesOffset()) : nullptr;
    v.capacity = capacity;
    v.D = head_dim;
    v.rep = rep;
    return v;
  }
  /// Inputs that cover the cached tokens too (attention masks, [1, past+seq]): not part of the plan key;
  /// the capacity-sized dry run binds `ones` to them.
  struct TotalInput {
    int value = -1;
    DType dtype = DType::I64;
    AlignedBytes ones;  // [1, capacity] of ones
  };
  std::vector<TotalInput> total_inputs;
};

/// A past.N key/value input of a cached export ([batch, kv_heads, past, head_dim], float).
bool isPastInput(const IoInfo& io);
/// True when the graph has past.N key/value inputs (a cached export).
bool hasKvInputs(const Graph& g);
/// The model's context length (metadata compress.context_length), or `fallback` when it does not say.
int64_t modelContext(const std::map<std::string, std::string>& metadata, int64_t fallback);

/// Rewrites the loaded graph for an in-session cache of `capacity` rows stored as `storage`. A ModelError
/// naming the first chain that is not in the exported form (or when the model has no past inputs).
/// Returns the attention chains fused into crt.KvAttention (fuseKvAttention).
int enableKvCache(Graph& g, int64_t capacity, DType storage);

/// Fuses KvScores -> crt.ScaleMaskSoftmax (fuse.h) -> KvValues of each layer (intermediates read by nothing else,
/// float32, the same GQA repeat) into crt.KvAttention(q, new keys, mask, new values; entry, entry_v, rep, divisor):
/// the chain's bits, each head's scores kept in a scratch block; on a device, one kernel per layer. Returns the chains
/// fused (none without the fused softmax, e.g. with SessionOptions::fuse off).
int fuseKvAttention(Graph& g);

/// SessionOptions::last_position_logits: the classifier (the packed MatMul making the first output, with its
/// bias Add) sees only the last position's row, so a prefill computes one row of logits. False (graph
/// unchanged) when the first output is not made that way.
bool lastPositionLogits(Graph& g);
/// The crt.LastRow node lastPositionLogits inserts (its output has its input's type), and its view of the input:
/// row S-1 of [.., S, D] (a device backend copies it as a strided view; checks the input's shape).
bool isLastRow(const Node& n);
struct StridedView;
StridedView lastRowView(const OpCtx& c);

/// Whether n is the in-session cache's attention op (KvScores / KvValues / KvAttention); its output has its first
/// input's type.
bool isKvAttention(const Node& n);
/// Whether n's output has an axis of the cached length (KvScores' scores [.., S, T]); the other attention ops'
/// outputs ([.., S, D]) do not, whatever their inputs' shapes.
bool kvOutputSpansCache(const Node& n);
/// The cache entry n (isKvAttention) reads and appends to (KvAttention: its keys'; attribute entry_v: its values').
int kvEntryOf(const Node& n);
/// Moves the cache entries of n (isKvAttention, just placed on g.device) to device memory: its kernel reads and
/// appends there, and nothing crosses per token but the new rows' computation.
void kvEntryToDevice(Graph& g, const Node& n);

/// A KvScores / KvValues node's checked geometry (the CPU and CUDA kernels share it): its cache entry, GQA repeat,
/// query heads H, new rows S, rows attended T (cached + S), head size D and output shape. Checks the inputs
/// against the cache (heads, head size, the attention weights' span) and that the new rows fit.
struct KvAttention {
  int entry = 0;
  int64_t rep = 1, H = 0, S = 0, T = 0, D = 0;
  Shape out;
  int entry_v = 0;        // KvAttention: the values' entry
  device::RowMask mask;   // KvAttention: the mask's offsets per row of the scores [.., H, S, T]
};
KvAttention kvScoresGeometry(OpCtx& c);
KvAttention kvValuesGeometry(OpCtx& c);
/// crt.KvAttention's: kvScoresGeometry's checks plus the new values (input 3); `out` is the attention output.
KvAttention kvAttentionGeometry(OpCtx& c);

/// Binds every past input to a view of its cache buffer with `rows` cached rows (batch 1).
void bindKvPast(const Graph& g, Buf* vals, int64_t rows);
/// Binds the mask inputs to ones of [1, capacity] (the dry run that sizes a plan at the full capacity).
void bindKvDryRun(const Graph& g, Buf* vals);

}  // namespace crt::detail
