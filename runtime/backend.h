// backend.h — the boundary between the host (the CPU backend, the reference) and one device backend, as
// ONNX Runtime's execution providers and ggml's backends draw it. At load every node that the device backend
// has a kernel for is assigned to it; values live on the host or on the device; a copy node is inserted
// wherever a value crosses; constants a device node reads are uploaded once; the memory plan holds an arena
// per side (session.cpp). Graph inputs and outputs stay on the host. No LibTorch, no CUDA headers.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "runtime/cuda/device_math.h"
#include "runtime/internal.h"

namespace crt::detail {

/// One device: its memory and its kernels. Implementations: the emulated device (host memory in separate
/// buffers, the CPU kernels; tests every line of the boundary on machines without a GPU) and CUDA
/// (runtime/cuda/cuda_backend.h).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  /// Device memory (zeroed is not promised); a Failure when the device is out of memory.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  /// Host -> device and device -> host; a download waits for every kernel queued before it.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  /// The device kernel of node `n`, whose data inputs are float32 on the device, or float16 where DeviceOpKind::half
  /// says so (placeNodes checks the types it can know at load; the kernel checks the rest), or null: the node stays on
  /// the host.
  virtual OpFn kernelFor(const Graph& g, const Node& n) = 0;
  /// Called once per node assigned to the device, before it first runs (uploads its packed weight).
  virtual void prepare(Node& n) = 0;
  /// True when the device computes from the dense packed weights (then the session chooses no CPU-only sparse
  /// or int8-activation forms, which would keep those MatMuls on the host).
  virtual bool denseWeights() const { return false; }
  /// Called at the start of every run (the CUDA backend makes its GPU the thread's current device).
  virtual void beginRun() {}
  /// Heap blocks this backend holds now (tests: a planned run allocates none, nothing leaks).
  virtual int64_t liveAllocations() const = 0;
};

/// Device memory owned by one holder (a plan's arena, an uploaded constant).
class DeviceBytes {
 public:
  DeviceBytes() = default;
  DeviceBytes(Backend& b, size_t n) : b_(&b), p_(b.alloc(std::max<size_t>(n, 1))), n_(n) {}
  DeviceBytes(DeviceBytes&& o) noexcept : b_(o.b_), p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  DeviceBytes& operator=(DeviceBytes&& o) noexcept {
    std::swap(b_, o.b_), std::swap(p_, o.p_), std::swap(n_, o.n_);
    return *this;
  }
  DeviceBytes(const DeviceBytes&) = delete;
  ~DeviceBytes() {
    if (p_) b_->release(p_);
  }
  void* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  Backend* b_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
};

/// The backend for SessionOptions::device: null for Device::Cpu (and for Device::Auto where no CUDA device
/// works); a Failure naming what is missing when Device::Cuda cannot run.
std::shared_ptr<Backend> makeBackend(Device d, int index = 0);

/// The ops a device backend implements (the CUDA backend all of them; runtime/cuda/device_math.h has their
/// arithmetic), on float32 data and, but for the load-time fusions and the KV cache's ops, on float16 data (computed in
/// float, each result rounded once, as the CPU does): MatMul on a packed weight (F32/F16/Q8/Q4 dense, exact compute),
/// Add/Sub/Mul/Div/Pow/Max/Min with broadcasting, Sqrt/Reciprocal/Neg/Exp/Tanh/Sigmoid/Relu/Erf/Cos/Sin, Softmax and
/// ReduceMean over the last axis, Transpose, Slice, Expand, Concat, Split, Gather at one constant index, Where (a bool
/// condition), Cast of float32 or float16 to float32, float16 or bool, MatMul of two tensors (attention's batched
/// products), LayerNormalization,
/// the fused RMSNorm, SiLU-multiply, GELU, RoPE, scaled masked softmax and elementwise chains (fuse.h), the in-session KV cache's attention
/// (kv_cache.h: its products, or the fused KvAttention; the cache then lives on the device) and the last-row slice
/// before a generation's classifier.
enum class DeviceOp {
  None, MatMul, Binary, Unary, Softmax, ReduceMean, Transpose, Slice, Expand, Concat, BatchMatMul, LayerNorm, RMSNorm, SiluMul,
  Rope, ScaleMaskSoftmax, KvScores, KvValues, KvAttention, LastRow, Split, Where, Gather, Gelu, Cast, Elementwise
};
struct DeviceOpKind {
  DeviceOp op = DeviceOp::None;
  int code = 0;       // device::Binary or device::Unary; Cast: the target DType
  bool half = false;  // the kernel takes float16 data as well as float32 (the ONNX ops, the packed MatMul, LastRow)
};
/// What `n` is for a device backend (None: it stays on the host). Structure only; types are placeNodes' part.
DeviceOpKind deviceOpOf(const Graph& g, const Node& n);

/// Each value's element type where it is known at load (a DType's number, 0 where not): backend.cpp says how.
std::vector<int> knownTypes(const Graph& g);
/// The values knownTypes finds float32.
std::vector<char> knownFloat32(const Graph& g);

/// Whether `n` reads only its inputs' shapes (Shape: op_table.def's ShapeOnly), which it may take from either side.
bool readsShapeOnly(const Node& n);

/// Which inputs of `n` a device kernel reads as device data (the others, e.g. Reshape's shape, stay on the host).
bool readsOnDevice(const Node& n, int input);

/// Assigns nodes to g.device, uploads the constants they read and inserts the copies; returns the nodes
/// assigned. Run last at load (after packing, sparse/int8 choices and the KV-cache rewrite), then prepareRuns.
int placeNodes(Graph& g);

/// The device layout of a packed weight (device_math.h's WeightView) over the given bytes, scales and zero points:
/// the device's copies, or the host's (tests run the device arithmetic on them). F32 weights take `rows`, the
/// panels as rows [N][K] (panelsToRows).
device::WeightView weightView(const PackedWeight& w, const void* bytes, const float* scale, const float* zp);
std::vector<float> panelsToRows(const PackedWeight& w);

/// The copy ops placeNodes inserts (also used by tests): output 0 = input 0 on the other side.
void opCopyToDevice(OpCtx& c);
void opCopyToHost(OpCtx& c);

}  // namespace crt::detail
