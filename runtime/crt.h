// crt.h — the public API of the Compress runtime: load an exported ONNX file, run it on CPU.
// No LibTorch, no exceptions across this API (every call returns a Status or a Result), and after the
// first run() for a given set of input shapes, run() allocates nothing: buffers come from a per-shape
// memory plan made on that first call.
//
//   crt::SessionOptions opts;  opts.threads = 2;
//   auto s = crt::Session::create("model.onnx", opts);
//   if (!s) { std::cerr << s.status().message << "\n"; return 1; }
//   std::vector<int64_t> ids = {1, 403, 407};
//   crt::TensorView in = crt::TensorView::of(ids.data(), {1, 3});
//   std::vector<crt::TensorView> out;                // views into the session, valid until the next run
//   crt::Status st = s->run({{"tokens", in}}, out);
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace crt {

/// Element types (values are ONNX TensorProto.DataType codes).
enum class DType : int { F32 = 1, U8 = 2, I8 = 3, I32 = 6, I64 = 7, Bool = 9, F16 = 10, F64 = 11 };
const char* dtypeName(DType t);
size_t dtypeSize(DType t);

enum class StatusCode : int {
  Ok = 0,
  InvalidArgument = 2,  // wrong input names, dtypes, shapes; bad options
  ModelError = 3,       // unreadable or malformed ONNX, unsupported ops/types
  DataError = 4,        // input values an op cannot accept (index out of range, too large for the limits, ...)
  IoError = 6,          // file not found / unreadable
  Stopped = 9,          // a run over SessionOptions::max_run_ms, or one Session::stop() asked to stop
  Internal = 70,
};

struct Status {
  StatusCode code = StatusCode::Ok;
  std::string message;
  bool ok() const { return code == StatusCode::Ok; }
  static Status Ok() { return {}; }
};

/// A value or the Status saying why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::make_unique<T>(std::move(value))) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}                // NOLINT
  bool ok() const { return value_ != nullptr; }
  explicit operator bool() const { return ok(); }
  const Status& status() const { return status_; }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T* operator->() { return value_.get(); }
  T& operator*() { return *value_; }

 private:
  std::unique_ptr<T> value_;
  Status status_;
};

/// A non-owning, contiguous (C order) tensor.
struct TensorView {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t numel() const;  // -1 when a dim is negative or the count overflows (run() rejects such views)
  size_t bytes() const { return static_cast<size_t>(numel()) * dtypeSize(dtype); }
  template <typename T>
  static TensorView of(const T* p, std::vector<int64_t> shape);
  template <typename T>
  const T* as() const { return static_cast<const T*>(data); }
};

/// An owning tensor (what the convenience run() returns).
struct Tensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorView view() const { return TensorView{dtype, shape, bytes.data()}; }
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
};

/// How pruned weights are stored at load (SessionOptions::sparse).
enum class SparseMode { Auto, Off, On };
/// Which int8/int4 weights multiply int8-quantized activations with integer dot products (runtime/int8_acts.h):
/// Model where the file asks (MatMulNBits accuracy_level 4, as in ONNX Runtime), On for every int8/int4 weight,
/// Off never (exact fp32 compute).
enum class Int8Activations { Model, Off, On };

/// Where a session runs (SessionOptions::device). Cuda: every node the CUDA backend has a kernel for runs on
/// the GPU (the rest on the CPU, with copies between); Auto: Cuda when this build has it and a GPU answers,
/// else Cpu. Emulated: the device path (placement, copies, device memory plans) on host memory with the CPU
/// kernels, for testing the boundary on machines without a GPU; results are bit-identical to Cpu.
enum class Device { Cpu, Cuda, Auto, Emulated };

struct SessionOptions {
  int threads = 0;          // 0: all hardware threads
  bool use_simd = true;     // false forces the portable scalar kernels (for testing/debugging)
  int max_plans = 16;       // memory plans kept (one per distinct input-shape set), least recently used dropped
  bool profile = false;     // time every node (see Session::profile())
  /// Memory a model may ask for, so that an untrusted file gets a clear error instead of exhausting the
  /// machine (docs/security.md). 0 picks the default: max_total_bytes = physical memory, max_tensor_bytes =
  /// half of max_total_bytes. Weights, folded constants and everything one run() allocates count.
  int64_t max_tensor_bytes = 0;  // largest single tensor (constant, input, intermediate)
  int64_t max_total_bytes = 0;   // weights plus one run's buffers
  /// > 0: a run() taking longer stops before its next node and returns StatusCode::Stopped (the session stays
  /// usable: a KV cache keeps what it held before that run); the load's constant folding has the same limit. An op
  /// already running finishes first (its size is bounded by the memory limits above), as in ONNX Runtime's
  /// terminate flag. 0: no limit.
  int64_t max_run_ms = 0;
  /// > 0: keep the KV cache of a model exported with `compress export --kv-cache` inside the session, for
  /// this many tokens (preallocated; each run appends its tokens in place). The past.N inputs and present.N
  /// outputs then disappear from inputs()/outputs(): a run takes the new token ids only (batch 1).
  /// -1: the model's own context (its compress.context_length metadata, else 2048).
  int64_t kv_capacity = 0;
  bool kv_if_present = false;   // with kv_capacity: a model without past inputs loads without a cache (no error)
  DType kv_dtype = DType::F32;  // F32, F16 or I8 (a float scale per cached row): how the cache stores keys and values
  /// Generation: the first output (logits) only for the last position, [.., 1, vocab] (a prefill then
  /// skips the classifier for every other row, as llama.cpp does). Ignored when the model's first output
  /// is not a classifier MatMul.
  bool last_position_logits = false;
  /// Pruned weights: Auto keeps a weight in the sparse form (a bitmask plus its nonzeros, or for fp32, per-channel
  /// int8 and int4 2:4 weights the pairs layout, runtime/sparse.h) where that is faster with this CPU's kernels (a measured
  /// density crossover per format; the pairs layout at every size); On wherever the weight has zeros; Off never. The
  /// sparse kernels give their dense kernels' bits (int8/int4 masks: the row kernels', which differ from the dense
  /// panels' in the last bits).
  SparseMode sparse = SparseMode::Auto;
  /// Integer dot products with int8 activations for quantized weights: faster, within the error bound that
  /// runtime/int8_acts.h states (sparse weights keep exact compute).
  Int8Activations int8_activations = Int8Activations::Model;
  Device device = Device::Cpu;
  int device_index = 0;  // which GPU (crun --device cuda:N)
  /// Fuse RMSNorm, SwiGLU's SiLU-multiply and (on the CPU) RoPE, per-token scale and attention-softmax chains into one node each at load (runtime/fuse.h; bit-identical
  /// results, fewer passes over the activations). false runs the file's nodes one by one.
  bool fuse = true;
};

/// Time spent per op type over all profiled runs (SessionOptions::profile).
struct OpProfile {
  std::string op;
  int64_t calls = 0;
  double ms = 0;
};

/// Name, element type and shape of a graph input/output; -1 marks a symbolic dim (its name in dim_names).
struct IoInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<std::string> dim_names;
};

/// Load-time facts about a session (what `crun` prints with --verbose).
struct SessionInfo {
  int nodes = 0;              // nodes in the file
  int folded = 0;             // removed at load: constant subgraphs evaluated once
  int packed_matmuls = 0;     // MatMul/MatMulNBits with pre-packed constant weights
  int sparse_matmuls = 0;     // of those, weights kept in the sparse form (SessionOptions::sparse)
  int sparse_pairs = 0;       // of those, fp32, int8 and int4 2:4 weights in the pairs layout (runtime/sparse.h: no expansion)
  int int8_matmuls = 0;       // of those, weights computed with int8 activations (SessionOptions::int8_activations)
  int panel_matmuls = 0;      // of those, int8/int4/fp16 weights on exact kernels rearranged into the fp32 panel order
                              // (faster prefill; every SIMD kernel set, never on a device)
  int64_t weight_bytes = 0;   // bytes of pre-packed weights (what a decode step streams)
  std::string isa;            // kernel set in use: "avx512", "avx2", "scalar"
  std::string int8_isa;       // the integer dot product of int8_matmuls: "avx512-vnni", "avx2", "scalar" ("" if none)
  int threads = 1;
  std::string device = "cpu";  // "cpu", "emulated", or "cuda (<GPU name>)"
  int fused_nodes = 0;         // fused chains (SessionOptions::fuse)
  int merged = 0;              // nodes that repeated an earlier node's op on the same inputs, merged into it at load
  int device_nodes = 0;        // nodes assigned to the device
  int device_copies = 0;       // copy nodes between host and device
  std::string host_ops;        // with a device: the op types left on the host per run, with counts ("Gather 1")
  std::string copied_values;   // with a device: the values copied each run ("logits to host, tokens to device")
};

class Session {
 public:
  /// Loads, checks (every unsupported op/type reported at once) and prepares a model: constant
  /// subgraphs are folded, weights feeding MatMul are pre-packed (fp32/fp16/int8/int2-8 blocked).
  static Result<Session> create(const std::string& onnx_path, const SessionOptions& options = {});
  /// The same from the bytes of an .onnx file (a model with external data must be loaded from its file).
  static Result<Session> createFromMemory(const std::string& onnx_bytes, const SessionOptions& options = {});

  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  const std::vector<IoInfo>& inputs() const;
  const std::vector<IoInfo>& outputs() const;
  const SessionInfo& info() const;
  /// Per op type totals since creation, most expensive first (empty unless SessionOptions::profile).
  std::vector<OpProfile> profile() const;
  /// The file's metadata_props (compress writes compress.context_length, compress.kv_cache, task, ...).
  const std::map<std::string, std::string>& metadata() const;

  /// With SessionOptions::kv_capacity: tokens cached so far, and the capacity.
  bool hasKvCache() const;
  int64_t kvLength() const;
  int64_t kvCapacity() const;
  /// Forgets cached tokens after the first `keep` (0: a new sequence).
  Status kvTruncate(int64_t keep = 0);

  /// Runs the model. `outputs` receives one view per graph output, in order, pointing into the session's
  /// memory: valid until the next run() or the session's end. After the first call with the same input
  /// shapes this allocates nothing (given an `outputs` vector of the right size).
  Status run(const std::vector<std::pair<std::string, TensorView>>& inputs, std::vector<TensorView>& outputs);
  /// Convenience: runs and copies the outputs.
  Result<std::vector<Tensor>> run(const std::vector<std::pair<std::string, TensorView>>& inputs);
  /// Asks the run in progress on another thread to stop before its next node: it returns StatusCode::Stopped, and later
  /// runs go on as usual. A request no run has seen yet (none was running, or it had passed its last node) stops the
  /// next run. Safe to call from any thread while run() runs.
  void stop();

 private:
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  template <typename Load>
  static Result<Session> make(const SessionOptions& options, const std::string& name, Load&& load);
  std::unique_ptr<Impl> impl_;
};

template <typename T>
struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::I8; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };

template <typename T>
TensorView TensorView::of(const T* p, std::vector<int64_t> shape) {
  return TensorView{DTypeOf<T>::value, std::move(shape), p};
}

}  // namespace crt
