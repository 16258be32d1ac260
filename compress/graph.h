// graph.h — the IR: a graph of nodes with ONNX operator names and semantics (opset 17), values with a
// dtype and a shape whose batch/sequence dims stay symbolic, and initializers held as ATen tensors under
// their original parameter names ("layers.3.w1.weight"). Quantized weights and pruning masks are
// first-class state next to the tensors, so passes, export and runtime agree on one layout.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace compress {

/// Element types, numbered as ONNX's TensorProto.DataType so export is a cast.
enum class DType : int {
  Undefined = 0,
  Float32 = 1,
  UInt8 = 2,
  Int8 = 3,
  Int32 = 6,
  Int64 = 7,
  Bool = 9,
  Float16 = 10,
  Float64 = 11,
  BFloat16 = 16,
};

const char* dtypeName(DType t);
DType dtypeFromName(const std::string& name);  // throws Error(Config) on unknown names
DType dtypeFromScalarType(at::ScalarType t);   // throws Error(Model) on types the IR lacks
at::ScalarType toScalarType(DType t);

/// One dimension: a fixed size, or a symbol ("batch", "seq", "batch*seq", or a generated name).
struct Dim {
  int64_t value = -1;
  std::string symbol;
  static Dim fixed(int64_t v) { return Dim{v, {}}; }
  static Dim sym(std::string s) { return Dim{-1, std::move(s)}; }
  bool isFixed() const { return symbol.empty(); }
  bool operator==(const Dim& o) const { return value == o.value && symbol == o.symbol; }
  bool operator!=(const Dim& o) const { return !(*this == o); }
  std::string str() const { return isFixed() ? std::to_string(value) : symbol; }
};
using Shape = std::vector<Dim>;
std::string shapeStr(const Shape& s);

struct ValueInfo {
  DType dtype = DType::Undefined;
  std::optional<Shape> shape;  // unset until shape inference ran
};

using Attribute = std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>>;

struct Node {
  std::string op;      // ONNX op type: "MatMul", "Gather", ...
  std::string domain;  // "" for the default ONNX domain
  std::string name;    // unique node name
  std::vector<std::string> inputs;   // "" marks an omitted optional input
  std::vector<std::string> outputs;
  std::map<std::string, Attribute> attrs;
  std::string source;  // where it came from in the user's model ("model.py:57"), for messages

  int64_t attrInt(const std::string& key, int64_t def) const;
  double attrFloat(const std::string& key, double def) const;
  std::vector<int64_t> attrInts(const std::string& key) const;  // empty when absent
  bool hasAttr(const std::string& key) const { return attrs.count(key) != 0; }
};

/// A weight held in quantized form. `qdata` keeps one integer per weight element (int8 for symmetric,
/// uint8 for asymmetric) in the weight's own [out, in] layout; `scales`/`zero_points` are [out, groups]
/// (groups = 1 for per-channel). dequant(w)[o][i] = (q[o][i] - zp[o][i/g]) * scale[o][i/g].
/// In the graph the weight value is produced by DequantizeLinear(<name>.qdata, <name>.scale[, <name>.zero_point]).
struct QuantInfo {
  int bits = 8;
  int64_t group_size = -1;  // -1: one group per output channel
  bool symmetric = true;
  std::string method;  // "rtn", "gptq", ...
};

enum class SparsityPattern { Unstructured, NofM, Structured };
/// A pruned weight remembers its mask (true = kept) so later passes keep pruned weights at zero.
struct SparsityInfo {
  at::Tensor mask;
  SparsityPattern pattern = SparsityPattern::Unstructured;
  int n = 0, m = 0;  // for N:M
};

struct Graph {
  std::vector<std::string> inputs;   // graph input value names, in order
  std::vector<std::string> outputs;  // graph output value names, in order
  std::vector<Node> nodes;           // topologically ordered
  std::map<std::string, ValueInfo> values;
  std::map<std::string, at::Tensor> initializers;
  std::set<std::string> parameters;               // initializers that are model parameters (not buffers/constants)
  std::map<std::string, std::string> aliases;     // tied parameter name -> the initializer that holds it
  std::map<std::string, QuantInfo> quant;         // weight name -> quantized format
  std::map<std::string, SparsityInfo> sparsity;   // weight name -> mask

  bool isInitializer(const std::string& v) const { return initializers.count(v) != 0; }
  /// Index of the node producing `v`, or -1 for graph inputs / initializers.
  int producer(const std::string& v) const;
  /// Indices of the nodes that read `v`.
  std::vector<int> consumers(const std::string& v) const;
  /// A value name not used yet, derived from `base`.
  std::string freshName(const std::string& base) const;
  /// Parameter count and bytes, counting tied weights once and quantized weights at their packed size.
  int64_t parameterCount() const;
  int64_t parameterBytes() const;
  /// Bytes one weight is stored in: a float initializer's own bytes, or a quantized weight's packed integers,
  /// scales and zero points (what parameterBytes counts for it). 0 when `weight` is neither.
  int64_t weightBytes(const std::string& weight) const;
  /// A deep copy: tensors (initializers, masks) are cloned, so in-place changes to one graph's weights
  /// never reach the other. (Plain copies share tensor storage.)
  Graph clone() const;
  /// Removes initializers and values no node or output references.
  void pruneUnused();
};

/// A linear layer as passes see it: MatMul(x, Transpose(W)) or MatMul(x, W) where W is a 2-D weight
/// (an initializer, or the output of DequantizeLinear on a quantized weight).
struct LinearRef {
  int node = -1;           // the MatMul
  std::string weight;      // the weight value name ([out, in] when transposed, [in, out] otherwise)
  bool transposed = true;  // true when W is stored [out, in] (torch nn.Linear layout)
};
std::vector<LinearRef> findLinears(const Graph& g);

/// A convolution as passes see it: Conv(x, W) with W a float initializer [out, in/groups, k...] (1-D or
/// 2-D kernels). Calibration passes treat W as the matrix [out, in/groups · k...] that multiplies the
/// im2col columns of the input (calibration.h); grouped and depthwise convs (groups > 1) are listed with
/// their groups so passes that need one input per matrix can skip them with a reason.
struct ConvRef {
  int node = -1;
  std::string weight;
  int64_t groups = 1;
};
std::vector<ConvRef> findConvs(const Graph& g);

/// The default targets of the weight passes: every linear and conv layer.
inline const std::vector<std::string> kLayerTargets = {"Linear", "Conv"};
inline constexpr const char* kLayerTargetsHelp = "layers: Linear, Conv, or parameter-name globs";

/// The [out, fan_in] matrix of a linear ([out, in]) or conv ([out, in/groups, k...]) weight: a view of a
/// contiguous w, so in-place changes to it reach w.
at::Tensor weightMatrix(const at::Tensor& w);

/// The Transpose(W, perm=[1, 0]) node through which a linear layer reads its [out, in] weight `w`, with a
/// fresh name and output (not inserted).
Node linearTranspose(const Graph& g, const std::string& w);

/// Stores every linear weight in the nn.Linear layout [out, in] read through Transpose(W), as the
/// TorchScript importer gives nn.Linear: MatMul(x, W[in, out]) — HF Conv1D (GPT-2), Gemm-free ONNX files,
/// torch.onnx's pre-transposed initializers — becomes MatMul(x, Transpose(Wᵀ)) with the weight keeping
/// its name. So every pass sees one layout: rows are output channels, groups run along the input.
/// Weights with other readers (tied to an embedding, say) stay as they are. Returns how many changed.
int canonicalizeLinearLayout(Graph& g);

/// Every name a weight is known by: its own and those of the parameters tied to it.
std::vector<std::string> namesOf(const Graph& g, const std::string& weight);

/// Layer weights selected by recipe patterns. "Linear" selects every linear layer, "Conv" every
/// convolution (findConvs); any other
/// pattern is a glob on parameter names ("layers.*.w1", "*.wq.weight"; a pattern may stop at a module
/// name: "output" selects "output.weight"). A weight matches when any of its names (tied ones
/// included) matches. `ignore` removes matches. Patterns in `targets` that matched nothing are appended
/// to `unmatched` when given.
std::vector<std::string> selectWeights(const Graph& g, const std::vector<std::string>& targets,
                                       const std::vector<std::string>& ignore,
                                       std::vector<std::string>* unmatched = nullptr);

/// selectWeights for a pass: throws Error(Config) naming the pass when a target pattern matches nothing.
std::vector<std::string> selectPassTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& targets,
                                           const std::vector<std::string>& ignore);

/// Checks the invariants every pass must leave: unique producers, inputs defined before use, no
/// dangling values, known dtypes, initializer shapes matching their value info, quantized and sparsity
/// state consistent with the tensors. Throws Error(Internal) listing every violation.
void verify(const Graph& g);

/// The product of the first `n` dims of `s` as a comparable key: the sorted symbolic factors ("batch*seq"
/// is batch times seq) and the product of the fixed sizes. Two shapes whose keys agree have the same
/// number of elements before dim n for every binding of the symbols.
std::pair<std::vector<std::string>, int64_t> dimsKey(const Shape& s, size_t n);

/// One element of a shape vector (a Reshape's or Expand's target) traced back through the graph: a
/// constant — element `index` of the initializer read as input `input` of node `node` —, the size of
/// `tensor` along `axis` times `scale` (Shape, then Gather/Slice/Concat/Unsqueeze/Squeeze/Cast of it, and
/// Mul by constants: the GQA repeat's kv_heads·n_rep), or unknown. A constant computed from other constants
/// has node -1 (there is no one element to rewrite).
struct ShapeSource {
  enum Kind { Unknown, Const, Dim } kind = Unknown;
  int64_t value = 0;  // Const
  int node = -1;
  size_t input = 0;
  int64_t index = 0;
  std::string tensor;  // Dim
  int64_t axis = 0;
  int64_t scale = 1;
  int piece_node = -1;   // the Concat this element entered through as a 1-element piece (its input
  size_t piece_input = 0;  // piece_input), so a computed size can be replaced by a constant; -1: none
  int scale_node = -1;     // where `scale` came from when it is one constant (element scale_index of input
  size_t scale_input = 0;  // scale_input of node scale_node: the Mul's), so it can be rewritten; -1: none
  int64_t scale_index = 0;
};
/// Where each element of the 1-D integer value `v` (read as input `input` of node `reader`) comes from;
/// nothing when its length cannot be known.
std::optional<std::vector<ShapeSource>> traceShapeVector(const Graph& g, const std::string& v, int reader, size_t input);

/// Canonical text dump: inputs, initializers (shape, dtype, content hash), nodes in order, outputs.
/// Stable across runs, used by tests and `compress inspect`.
std::string dumpGraph(const Graph& g, bool with_hashes = true);

/// FNV-1a hash of a tensor's bytes (contiguous CPU copy), for dumps and tests.
uint64_t tensorHash(const at::Tensor& t);

}  // namespace compress
