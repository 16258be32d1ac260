// kv_cache.h — the cached form of a causal decoder: an IR rewrite that adds past.N.key/value inputs and
// present.N.key/value outputs (ONNX Runtime's and optimum's layout, [batch, kv_heads, past, head_dim]).
//
// The attention is found structurally (Softmax between two MatMuls; keys and values followed back through
// layout ops to the projection's per-head tensor, before the GQA repeat), so no parameter names are read.
// Everything that depends on the sequence length through shapes only (RoPE tables, learned positions, the
// causal mask) is recomputed for the total length past + seq and cut to the rows of the new tokens; a
// mask keeps its key axis whole. The rewrite is checked on the executor before it is returned: prefill
// plus one-token steps must reproduce the full-sequence logits.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "compress/graph.h"

namespace compress {

struct KvCacheInfo {
  int layers = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t context = 0;        // longest sequence the model's position tables hold (0: no table bounds it)
  double check_rel_diff = 0;  // self-check: max |cached - full logits| / max |logit|
};

/// Names of the cache inputs/outputs of layer `i` (past.i.key, present.i.value, ...).
std::string pastName(int layer, bool value);
std::string presentName(int layer, bool value);

/// How the position-dependent values (masks, rotary tables, position embeddings) get the new tokens' rows: computed
/// from the new rows of their inputs where the ops allow (Pushed: a mask [S, T] per step), with Plain as the checked
/// fallback; or computed for the whole length and then cut (Plain: [T, T] per step; tests).
enum class KvCuts { Pushed, Plain };

/// Rewrites `g` (a causal decoder: one integer input [batch, seq], logits as the first output) into its
/// cached form. Throws Error(Model) saying what was not found or what the check measured.
KvCacheInfo addKvCache(Graph& g, KvCuts cuts = KvCuts::Pushed);

/// The ONNX metadata a cached export carries (crun reads it: compress.kv_cache, compress.context_length).
void addKvMetadata(const KvCacheInfo& info, std::map<std::string, std::string>& metadata);

}  // namespace compress
