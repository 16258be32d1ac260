// internal.h — the runtime's private types: shapes, tensor views, the loaded graph, op contexts.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/crt.h"
#include "runtime/size_check.h"

namespace crt::detail {

// Element types that appear only inside the runtime (packed 4-bit initializers, ONNX codes 21/22).
constexpr DType kU4 = static_cast<DType>(21);
constexpr DType kI4 = static_cast<DType>(22);

/// Internal failures are exceptions; the Session API turns them into Status values.
struct Failure : std::runtime_error {
  StatusCode code;
  Failure(StatusCode c, const std::string& m) : std::runtime_error(m), code(c) {}
};
[[noreturn]] inline void fail(StatusCode c, const std::string& m) { throw Failure(c, m); }

constexpr int kMaxRank = 8;

/// A fixed-capacity shape (no heap allocation while running).
struct Shape {
  int rank = 0;
  int64_t d[kMaxRank] = {};
  Shape() = default;
  Shape(std::initializer_list<int64_t> l) {
    for (int64_t v : l) push(v);
  }
  static Shape of(const std::vector<int64_t>& v) {
    Shape s;
    for (int64_t x : v) s.push(x);
    return s;
  }
  void push(int64_t v) {
    if (rank >= kMaxRank) fail(StatusCode::ModelError, "tensor rank above " + std::to_string(kMaxRank));
    if (v < 0) fail(StatusCode::DataError, "negative dim " + std::to_string(v) + " in a tensor shape");
    d[rank++] = v;
  }
  /// Elements; a Failure when a dim is negative or the count exceeds kMaxElements (never wraps).
  int64_t numel() const {
    int64_t n = 0;
    if (!checkedNumel(d, static_cast<size_t>(rank), &n)) tooLarge();
    return n;
  }
  /// True when every dim is >= 0 and numel() fits (what every tensor the runtime makes satisfies).
  bool valid() const {
    int64_t n = 0;
    return checkedNumel(d, static_cast<size_t>(rank), &n);
  }
  int64_t operator[](int i) const { return d[i]; }
  int64_t& operator[](int i) { return d[i]; }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (d[i] != o.d[i]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::vector<int64_t> vec() const { return std::vector<int64_t>(d, d + rank); }
  std::string str() const;
  [[noreturn]] void tooLarge() const;
};

/// Bytes of `elems` values of type `dt` (packed 4-bit types: ceil(elems/2)).
size_t bytesOf(DType dt, int64_t elems);

/// A view of a dense C-order tensor. Packed 4-bit types hold ceil(numel/2) bytes.
struct Buf {
  DType dt = DType::F32;
  Shape shape;
  void* data = nullptr;
  int64_t numel() const { return shape.numel(); }
  size_t bytes() const;
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

/// 64-byte aligned heap storage.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t n) { resize(n); }
  AlignedBytes(AlignedBytes&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  AlignedBytes& operator=(AlignedBytes&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  AlignedBytes(const AlignedBytes&) = delete;
  ~AlignedBytes();
  void resize(size_t n);  // contents are not kept; new memory is zeroed
  void* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

/// What a model may ask for (SessionOptions::max_tensor_bytes / max_total_bytes / max_run_ms, resolved at create()).
/// Every allocation whose size comes from the file or from input shapes is checked here first, so a
/// crafted model gets a clear error instead of an out-of-memory kill or a wrapped size; time is checked between
/// nodes (RunGuard).
struct Limits {
  int64_t max_tensor = 0;  // one tensor (constant, input, intermediate, scratch)
  int64_t max_total = 0;   // weights plus everything one run allocates
  int64_t max_run_ms = 0;  // one run, and the load's constant folding (0: no limit)
  /// Fails with `what` when one tensor of `bytes` is over the limit.
  void checkTensor(int64_t bytes, const std::string& what) const;
  /// Adds `bytes` to `used` and fails with `what` when the total goes over the limit.
  void take(int64_t& used, int64_t bytes, const std::string& what) const;
};

struct Node;

/// A run's time limit (Limits::max_run_ms, counted from construction) and stop request (Session::stop()):
/// check() before each node fails with StatusCode::Stopped once either holds. `what` names the work ("the run",
/// "folding constants at load").
class RunGuard {
 public:
  RunGuard(int64_t max_run_ms, std::atomic<bool>* stop, const char* what);
  void check(const Node& next);

 private:
  int64_t start_ns_, deadline_ns_;  // CLOCK_MONOTONIC_COARSE
  int64_t max_run_ms_;
  std::atomic<bool>* stop_;
  const char* what_;
};

struct Attr {
  enum Kind { None, Int, Float, Ints, Floats, String } kind = None;
  int64_t i = 0;
  float f = 0;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  std::string s;
};

struct PackedWeight;
struct OpCtx;
using OpFn = void (*)(OpCtx&);

struct Node {
  std::string op, domain, name;
  std::vector<int> in, out;  // value ids; -1 = omitted optional input
  std::map<std::string, Attr> attrs;
  OpFn fn = nullptr;
  std::shared_ptr<PackedWeight> packed;  // MatMul / MatMulNBits / QMatMul with pre-packed weights
  bool is_static = false;                 // depends only on input shapes and constants: run once per plan
  bool act_quant = false;  // MatMul on a packed weight whose input the model quantizes itself: in = {x, scale}
                           // (int8_acts.h, fuseQuantizedInputs)
  bool on_device = false;  // runs on Graph::device (backend.h, placeNodes); its outputs live there
  int device_code = 0;     // its DeviceOpKind::code (which Binary / Unary function)

  int64_t attrInt(const std::string& k, int64_t def) const;
  float attrFloat(const std::string& k, float def) const;
  const std::vector<int64_t>* attrInts(const std::string& k) const;
  std::string where() const;  // "Op node 'name'"
};

struct Value {
  std::string name;
  bool is_const = false;
  Buf constant;        // when is_const
  std::shared_ptr<AlignedBytes> own;  // storage of the constant (shared by aliases)
  int producer = -1;   // node index
  int last_use = -1;   // last node index reading it (graph outputs: INT32_MAX)
  bool is_static = false;
  bool per_run_shape = false;  // an in-session KV cache's past view: its shape changes every run (kv_cache.h)
  bool on_device = false;      // its memory is Graph::device's (backend.h)
};

constexpr int64_t kPanel = 32;  // output columns per fp32 weight panel
constexpr int64_t kInt8ParamPad = 16;  // readable entries past the last block's fp16 scale / zero point

/// Weights of a MatMul packed at load for our kernels.
/// F32: panels of kPanel outputs, [ceil(N/kPanel)][K][kPanel] (last panel zero padded): the GEMM micro-kernel
/// and the GEMV stream them without any per-call packing. F16: [N, K] row-major (one row per output). Q8/Q4: blocks of `block` values along K, each padded
/// to `P` (a multiple of 32) values; per row nblk*P bytes (Q8, one unsigned value per byte) or nblk*P/2
/// (Q4: in each 32-value chunk byte j holds value j in its low nibble and value j+16 in its high nibble);
/// scale and zero point per (row, block), float. A weight is (q - zp) * scale; padding holds q = 0 and
/// meets zero-padded activations. Q8P / Q4P / F16P: a Q8 weight per channel (nblk 1), a Q4 weight per channel or
/// in blocks of a multiple of 32, or an F16 weight, rearranged at load for exact compute (choosePanelForms) into
/// F32's panel order: [ceil(N/kPanel)][K] rows of kPanel bytes (Q8P), kPanel / 2 bytes (Q4P: byte j holds column j
/// in its low nibble and column j + 16 in its high one) or kPanel halves (F16P); Q8P / Q4P scale and zero points as
/// [panel][nblk][kPanel], zero past N: the zero points as bytes in zp8 (zp empty) where every one is an integer in
/// [0, 255], which is what quantized files hold, else as floats in zp; the scales as fp16 in scale16 (scale empty)
/// where every one is an fp16 value, else as floats in scale. The GEMM converts each panel inside its first row tile, as the sparse fp32
/// form expands. A centered Q8P weight stores each value less its zero point as a signed byte, q - z in [-128, 127], and
/// zero points of 0 (every int8 file's symmetric weight: q + 128 less 128); a centered Q4P weight (every one whose zero
/// points are integers, which is what quantized files hold) keeps its nibbles and zero points, and the kernels take
/// each nibble less its zero point in integers before converting it. Either way the kernels sum x * (q - z) and
/// apply the scale alone (no s * z * sum(x) to cancel), a pruned weight is an exact 0 in every kernel's sums, and that
/// is what lets a 2:4 one take the pairs layout (sparse.h) with the dense kernels' bits.
struct SparseForm;
struct PackedWeight {
  enum Kind { F32, F16, Q8, Q4, Q8P, Q4P, F16P } kind = F32;
  bool panelOrdered() const { return kind == Q8P || kind == Q4P || kind == F16P; }
  int64_t N = 0, K = 0;
  int64_t block = 0, nblk = 1, P = 0;
  AlignedBytes w;                       // the dense form (empty when `sparse` holds the weight)
  std::shared_ptr<const SparseForm> sparse;  // runtime/sparse.h: bitmask + packed nonzeros, or null
  std::vector<float> scale, zp;  // per (row, block); empty once `int8` holds them in the compact form below (a
                                 // per-channel weight keeps `scale`: N floats, its int8 kernels' exact scales)
  int bits = 32;
  bool centered = false;  // Q8P: signed bytes q - z and zero points 0; Q4P: computed as q - z (above)
  bool int8 = false;  // Q8/Q4 with int8 activations (runtime/int8_acts.h, Kernels::gemm_i8): then the parameters
                      // are scale16 (fp16) and zp8 (integers), 3 bytes per block instead of 8
  std::vector<uint16_t> scale16;  // [N * nblk] + kInt8ParamPad (Q8P / Q4P: [panel][nblk][kPanel], see above)
  std::vector<uint8_t> zp8;       // [N * nblk] + kInt8ParamPad (Q8P / Q4P: [panel][nblk][kPanel], see above)
  std::shared_ptr<void> device;   // the device backend's copy, in its own layout (Backend::prepare), or null
  int64_t rowBytes() const;
  int64_t bytes() const;  // what one pass over the weight reads (dense or sparse form, scales, zero points)
};

/// Panels of kPanel outputs a panel-ordered weight (F32, Q8P, Q4P, F16P) of w's N takes.
inline int64_t panelCount(const PackedWeight& w) { return (w.N + kPanel - 1) / kPanel; }

/// Bytes of one row k of a panel (kPanel columns) of a panel-ordered kind: a byte per column (Q8P), a nibble (Q4P)
/// or a half (F16P).
constexpr int64_t panelRowBytes(PackedWeight::Kind k) {
  return k == PackedWeight::Q4P ? kPanel / 2 : k == PackedWeight::Q8P ? kPanel : kPanel * 2;
}

struct KvState;
class Backend;

struct Graph {
  std::vector<Node> nodes;  // topological order (after folding: only nodes that run)
  std::vector<Value> values;
  std::vector<int> inputs, outputs;
  std::vector<IoInfo> input_info, output_info;
  std::map<std::string, int> by_name;
  int opset = 17;
  Limits limits;
  int64_t constant_bytes = 0;  // bytes of constants read or folded at load (counts against limits.max_total)
  std::map<std::string, std::string> metadata;  // the file's metadata_props
  std::shared_ptr<KvState> kv;                  // the in-session KV cache (SessionOptions::kv_capacity)
  std::shared_ptr<Backend> device;              // the device backend (SessionOptions::device), or null: host only
  std::vector<std::shared_ptr<void>> device_constants;  // constants uploaded for device nodes (placeNodes)
};

class ThreadPool;
struct Kernels;

/// Allocation strategy of one run: recording (first call for a shape set) or replaying a plan.
class Allocator {
 public:
  virtual ~Allocator() = default;
  /// Memory for value `value` made by node `node` (static nodes' outputs are kept for the plan's life).
  virtual void* output(int value, size_t bytes, int node, bool is_static) = 0;
  /// Memory that lives only while node `node` runs.
  virtual void* scratch(size_t bytes, int node, bool is_static) = 0;
  /// `value` (`bytes` long, made by node `node`) shares the memory of value `src` (a reshape-like op, or a view
  /// that keeps its input's order: whether it does may depend on the shapes of the run).
  virtual void alias(int value, int src, size_t bytes, int node, bool is_static) = 0;
};

struct RunEnv {
  const Graph* g = nullptr;
  Buf* vals = nullptr;
  Allocator* alloc = nullptr;
  ThreadPool* pool = nullptr;
  const Kernels* k = nullptr;
  int node_index = 0;
  int64_t used = 0;  // bytes allocated so far in this run (checked against g->limits)
};

/// What an op sees: its node, inputs, and ways to produce outputs.
struct OpCtx {
  RunEnv& env;
  const Node& node;
  int nin() const { return static_cast<int>(node.in.size()); }
  bool has(int i) const { return i < nin() && node.in[i] >= 0; }
  const Buf& in(int i) const;
  /// Allocates output i with the given type and shape and returns its memory.
  void* out(int i, DType dt, const Shape& s);
  template <typename T>
  T* outT(int i, const Shape& s) { return static_cast<T*>(out(i, DTypeOf<T>::value, s)); }
  /// Output i is input `src` with a new shape (no copy).
  void aliasOut(int i, int src, const Shape& s);
  /// Temporary memory for this node only.
  void* scratch(size_t bytes);
  /// Counts `bytes` of output `output` (-1: scratch) against the session's memory limits (a Failure
  /// naming this node when over).
  void claim(int64_t bytes, int output) {
    if (env.g && bytes <= env.g->limits.max_tensor && bytes <= env.g->limits.max_total - env.used) {
      env.used += bytes;  // the common case: two compares, no strings built
      return;
    }
    claimSlow(bytes, output);
  }
  void claimSlow(int64_t bytes, int output);
  [[noreturn]] void bad(const std::string& what) const;
};

/// Reads an integer tensor (i64/i32) into `out` (at most kMaxRank*2 values are expected for shape ops).
int64_t readInts(const Buf& b, int64_t* out, int64_t cap, const OpCtx& c);

/// The op table: name (with domain prefix for non-default domains) to implementation.
OpFn findOp(const std::string& domain, const std::string& op);
std::vector<std::string> supportedOps();


/// Element i of an integer/quantized tensor (int8, uint8, int32, packed int4/uint4) as a signed value.
int64_t quantValue(const Buf& q, int64_t i);

/// Ops that compute in float32 accept float16 too: floatData() gives a float32 view (converted into the
/// node's scratch when needed); FloatOut is output 0 as float32, written back as float16 by finish().
const float* floatData(OpCtx& c, const Buf& b);
struct FloatOut {
  float* p;
  void* raw;
  DType dt;
  int64_t n;
  void (*to_half)(const float* x, uint16_t* y, int64_t n) = nullptr;  // the kernel set's (SIMD) conversion
};
FloatOut floatOut(OpCtx& c, DType dt, const Shape& s);
void finish(const FloatOut& o);
/// n values between fp16 and fp32 with the session's kernel set (F16C where the CPU has it; the portable
/// conversion's bits either way).
void halfToFloatN(const OpCtx& c, const uint16_t* x, float* y, int64_t n);
void floatToHalfN(const OpCtx& c, const float* x, uint16_t* y, int64_t n);

/// Heap blocks the runtime has allocated so far (tests check that a planned run() allocates none).
int64_t allocationCount();

// fp16 <-> fp32 (round to nearest even), portable.
float halfToFloat(uint16_t h);
uint16_t floatToHalf(float f);

}  // namespace crt::detail
