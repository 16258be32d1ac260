// cuda_backend.cu — the CUDA backend (backend.h): device memory, copies, and a kernel for every DeviceOp.
// Packed weights are uploaded once (fp32 panels as rows; fp16, int8 and int4 in the host's packed bytes);
// decode rows run a warp-per-row GEMV straight from the packed bytes, prefill (16 rows or more) takes the weight as
// rows of the activations' type (dequantized into scratch where it is not) and calls cuBLAS. Activations are float32
// or float16 (an fp16 export's): the kernels of the ops that take both are templates over the element (float, or
// uint16_t for fp16 bits) and compute in float, rounding each result once, as the CPU does; GEMMs accumulate in float32.
// The in-session KV cache lives in GPU memory (kv_cache.h): KvScores and KvValues append the new rows there and read
// the cached ones in place. The index and reduction arithmetic is device_math.h's, which the CPU tests check against
// the CPU kernels. cuBLAS is opened at run time (dlopen), so that a build with CUDA starts on machines without the
// toolkit's libraries and says what is missing only when asked for a GPU.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "runtime/backend.h"
#include "runtime/fuse.h"
#include "runtime/kv_cache.h"
#include "runtime/op_geometry.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/device_math.h"

namespace crt::detail {
namespace {

namespace dm = crt::device;

constexpr int kGemvWarps = 4;      // warps (rows) per GEMV block
constexpr int64_t kGemmRows = 16;  // from this many activation rows on, dequantize + cuBLAS
constexpr int kRowThreads = 256;   // threads per row in Softmax / ReduceMean

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(StatusCode::Internal, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }

/// GPU memory for `what`; out of memory is a data error (too large a model or input for this GPU), not a bug.
void* deviceAlloc(size_t bytes, const std::string& what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e == cudaErrorMemoryAllocation)
    fail(StatusCode::DataError, "CUDA: cannot allocate " + std::to_string(bytes >> 20) + " MiB on the GPU for " + what +
                                    ": a smaller model, shorter inputs, or --device cpu");
  check(e, ("allocating " + what).c_str());
  return p;
}

unsigned blocksFor(int64_t n, int threads) { return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 65535 * 8)); }

// ------------------------------------------------------------------------------------------- kernels
__device__ float warpSum(float v) {
  for (int off = dm::kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Y[m, n] = W[n] . X[m] for a packed weight; a warp per row n, blockIdx.y = m. T: float, or uint16_t for float16
/// activations (read and written as fp16, summed in float: device_math.h's load / store).
template <typename T>
__global__ void gemvKernel(dm::WeightView v, const T* X, T* Y) {
  const int warp = threadIdx.x / dm::kWarp, lane = threadIdx.x % dm::kWarp;
  const int64_t n = dm::gemvRow(blockIdx.x, kGemvWarps, warp);
  if (n >= v.N) return;
  const T* x = X + blockIdx.y * v.K;
  const float p = (v.kind == dm::WeightView::Q8 || v.kind == dm::WeightView::Q4) ? dm::quantRowPartial(v, n, x, lane, dm::kWarp)
                                                                                 : dm::denseRowPartial(v, n, x, lane, dm::kWarp);
  const float s = warpSum(p);
  if (lane == 0) dm::store(Y, blockIdx.y * v.N + n, s);
}

/// W[n, k] as fp32 rows, or fp16 rows for an fp16 GEMM (for cuBLAS).
template <typename T>
__global__ void dequantKernel(dm::WeightView v, T* W) {
  const int64_t total = v.N * v.K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dm::store(W, i, dm::weightAt(v, i / v.K, i % v.K));
}

template <typename T>
__global__ void binaryKernel(dm::Binary op, dm::Broadcast bc, int64_t total, const T* A, const T* B, T* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t oa, ob;
    dm::broadcastOffsets(bc, i, oa, ob);
    dm::store(Y, i, dm::applyBinary(op, dm::load(A, oa), dm::load(B, ob)));
  }
}

/// Where: Y[i] = C[i] ? A[i] : B[i] with the three broadcast (C bytes, bool); E: the values' element (a copy).
template <typename E>
__global__ void whereKernel(dm::Broadcast3 bc, int64_t total, const uint8_t* C, const E* A, const E* B, E* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    dm::broadcastOffsets3(bc, i, off);
    Y[i] = C[off[0]] ? A[off[1]] : B[off[2]];
  }
}

/// Cast of float32 or float16 to bool: x != 0 (NaN is true, as on the CPU).
template <typename T>
__global__ void castBoolKernel(int64_t total, const T* X, uint8_t* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] = dm::load(X, i) != 0.f;
}

/// Cast between float32 and float16 (to fp16: rounded to nearest even, as the CPU's conversion).
template <typename From, typename To>
__global__ void castKernel(int64_t total, const From* X, To* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dm::store(Y, i, dm::load(X, i));
}

template <typename T>
__global__ void unaryKernel(dm::Unary op, int64_t total, const T* X, T* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dm::store(Y, i, dm::applyUnary(op, dm::load(X, i)));
}

/// A strided copy of elements E (4 bytes for float32, 2 for float16).
template <typename E>
__global__ void gatherKernel(dm::Strided v, int64_t total, const E* X, E* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] = X[dm::stridedSource(v, i)];
}

/// The block's sum (max with `isMax`) of one value per thread; every thread gets it.
__device__ float blockReduce(float v, bool isMax) {
  __shared__ float part[kRowThreads / dm::kWarp];
  for (int off = dm::kWarp / 2; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = isMax ? fmaxf(v, o) : v + o;
  }
  const int warp = threadIdx.x / dm::kWarp, lane = threadIdx.x % dm::kWarp;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = part[0];
  for (int w = 1; w < kRowThreads / dm::kWarp; ++w) r = isMax ? fmaxf(r, part[w]) : r + part[w];
  __syncthreads();
  return r;
}

/// Softmax of one row of n values by the block (x may be y).
template <typename T>
__device__ void softmaxRow(const T* x, T* y, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, dm::load(x, i));
  m = blockReduce(m, true);
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(dm::load(x, i) - m);
  s = blockReduce(s, false);
  const float inv = 1.f / s;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dm::store(y, i, expf(dm::load(x, i) - m) * inv);
}

template <typename T>
__global__ void softmaxKernel(const T* X, T* Y, int64_t n) { softmaxRow(X + blockIdx.x * n, Y + blockIdx.x * n, n); }

/// crt.ScaleMaskSoftmax (fuse.h): a block per row; each thread scales and masks the values it then reads back first.
__global__ void scaleMaskSoftmaxKernel(dm::RowMask m, const float* X, const float* M, float* Y, int64_t n, float divisor) {
  const float* x = X + blockIdx.x * n;
  const float* mr = M + dm::maskRowOffset(m, blockIdx.x);
  const int64_t ms = m.ms[m.rank - 1];
  float* y = Y + blockIdx.x * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = dm::scaleMask(x[i], divisor, mr[i * ms]);
  softmaxRow(y, y, n);
}

/// crt.Gelu (fuse.h): a thread per element.
__global__ void geluKernel(dm::Gelu g, int64_t total, const float* X, float* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    Y[i] = dm::applyGelu(g, X[i]);
}

/// crt.Rope (fuse.h): a thread per pair.
__global__ void ropeKernel(dm::Rope r, int64_t total, const float* T, const float* C, const float* S, float* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t a, c, s, y;
    dm::ropeOffsets(r, i, a, c, s, y);
    float y0, y1;
    dm::ropePair(T[a], T[a + r.bOff], C[c], S[s], y0, y1);
    Y[y] = y0;
    Y[y + r.second] = y1;
  }
}

/// The inputs of crt.Elementwise: pointers and whether each is float16.
struct EwInputs {
  const void* p[dm::kEwInputs] = {};
  int8_t f16[dm::kEwInputs] = {};
};

/// crt.Elementwise (fuse.h): a thread per output element runs the chain's program (device_math.h's ewEval).
template <typename T>
__global__ void elementwiseKernel(dm::EwProgram prog, dm::BroadcastN bc, EwInputs in, int64_t total, T* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float x[dm::kEwInputs];
    for (int k = 0; k < prog.inputs; ++k) x[k] = dm::ewLoad(in.p[k], in.f16[k], dm::broadcastOffsetN(bc, k, i));
    dm::store(Y, i, dm::ewEval(prog, x));
  }
}

// ------------------------------------------------------------------------------------------- KV cache
/// Writes the new rows X [H kv heads][S][D] (float32 or float16) at rows length.. of the cache (fp16: rounded to
/// nearest even, as the CPU's conversion).
template <typename T>
__global__ void kvAppendKernel(dm::KvCache kv, void* cache, int64_t H, int64_t S, int64_t length, const T* X) {
  const int64_t total = H * S * kv.D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i % kv.D, s = (i / kv.D) % S, h = i / (S * kv.D);
    const int64_t dst = dm::kvRowOffset(kv, h, length + s) + d;
    if (kv.f16) static_cast<uint16_t*>(cache)[dst] = dm::floatToHalfBits(dm::load(X, i));
    else static_cast<float*>(cache)[dst] = dm::load(X, i);
  }
}

/// The int8 cache's append: a block per new row (h, s) finds the row's largest |value| (and whether it holds a NaN),
/// writes its scale and its values quantized (device_math.h's kvInt8Scale / kvInt8, the CPU's arithmetic).
template <typename T>
__global__ void kvAppendInt8Kernel(int8_t* cache, float* scales, int64_t capacity, int64_t D, int64_t S, int64_t length, const T* X) {
  const int64_t h = blockIdx.x / S, s = blockIdx.x % S;
  const T* x = X + blockIdx.x * D;
  float m = 0.f;
  bool nan = false;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) m = fmaxf(m, fabsf(dm::load(x, d))), nan = nan || isnan(dm::load(x, d));
  m = blockReduce(m, true);
  const bool anyNan = __syncthreads_or(nan);
  const float scale = dm::kvInt8Scale(m, anyNan);
  const int64_t r = h * capacity + length + s;
  if (threadIdx.x == 0) scales[r] = scale;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) cache[r * D + d] = dm::kvInt8(dm::load(x, d), scale);
}

/// scores[hs][t] = Q[hs] . K[t] for query row hs = qh * S + s: a warp per score (E: the queries' and scores' type).
template <typename E>
__global__ void kvScoresKernel(dm::KvCache kv, const E* Q, E* Y, int64_t S, int64_t T, int64_t total) {
  const int64_t w = blockIdx.x * int64_t(kGemvWarps) + threadIdx.x / dm::kWarp;
  const int lane = threadIdx.x % dm::kWarp;
  if (w >= total) return;
  const int64_t hs = w / T, t = w % T;
  const float s = warpSum(dm::kvScorePartial(kv, Q + hs * kv.D, hs / S, t, lane, dm::kWarp));
  if (lane == 0) dm::store(Y, w, s);
}

/// y[d] = sum_t p[t] V[qh / rep][t][d] by the block (kRowThreads threads): with D <= kRowThreads its threads form
/// kRowThreads / D groups over t, summed in shared memory; above, a thread per d over all t.
template <typename P, typename Y>
__device__ void valuesRow(const dm::KvCache& kv, const P* p, int64_t qh, int64_t T, Y* y) {
  const int64_t D = kv.D;
  if (D > kRowThreads) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dm::store(y, d, dm::kvValuePartial(kv, p, qh, T, d, 0, 1));
    return;
  }
  __shared__ float part[kRowThreads];
  const int64_t groups = kRowThreads / D, g = threadIdx.x / D, d = threadIdx.x % D;
  if (g < groups) part[threadIdx.x] = dm::kvValuePartial(kv, p, qh, T, d, g, groups);
  __syncthreads();
  if (threadIdx.x < D) {
    float sum = 0.f;
    for (int64_t j = 0; j < groups; ++j) sum += part[j * D + threadIdx.x];
    dm::store(y, threadIdx.x, sum);
  }
}

/// out[hs][d] = sum_t P[hs][t] V[t][d]: a block per query row hs = qh * S + s (E: the weights' and output's type).
template <typename E>
__global__ void kvValuesKernel(dm::KvCache kv, const E* P, E* Y, int64_t S, int64_t T) {
  valuesRow(kv, P + blockIdx.x * T, blockIdx.x / S, T, Y + blockIdx.x * kv.D);
}

/// The largest T whose scores one block keeps in shared memory (the rest of the 48 KiB is the reductions').
constexpr int64_t kAttentionSmemRows = 11 * 1024;

/// crt.KvAttention, one kernel per layer: a block per query row hs = qh * S + s computes its T scores (a warp per
/// score, divided and masked) into shared memory, softmaxes them there and sums the output row from them.
__global__ void kvAttentionKernel(dm::KvCache K, dm::KvCache V, const float* Q, dm::RowMask m, const float* M, float divisor,
                                  float* Y, int64_t S, int64_t T) {
  extern __shared__ float sc[];  // [T]
  const int64_t hs = blockIdx.x, qh = hs / S;
  const float* q = Q + hs * K.D;
  const float* mr = M + dm::maskRowOffset(m, hs);
  const int64_t ms = m.ms[m.rank - 1];
  const int warp = threadIdx.x / dm::kWarp, lane = threadIdx.x % dm::kWarp, warps = blockDim.x / dm::kWarp;
  for (int64_t t = warp; t < T; t += warps) {
    const float s = warpSum(dm::kvScorePartial(K, q, qh, t, lane, dm::kWarp));
    if (lane == 0) sc[t] = dm::scaleMask(s, divisor, mr[t * ms]);
  }
  __syncthreads();
  softmaxRow(sc, sc, T);
  __syncthreads();
  valuesRow(V, sc, qh, T, Y + hs * V.D);
}

template <typename T>
__global__ void meanKernel(const T* X, T* Y, int64_t n) {
  const T* x = X + blockIdx.x * n;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += dm::load(x, i);
  s = blockReduce(s, false);
  if (threadIdx.x == 0) dm::store(Y, blockIdx.x, s / static_cast<float>(n));
}

/// crt.RMSNorm (fuse.h): a block per row; the same order of operations as the CPU kernel up to the sum's order.
__global__ void rmsNormKernel(const float* X, const float* W, int64_t ws, float* Y, int64_t n, float eps) {
  const float* x = X + blockIdx.x * n;
  float* y = Y + blockIdx.x * n;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i] * x[i];
  s = blockReduce(s, false);
  const float inv = 1.f / sqrtf(s / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = W ? (x[i] * inv) * W[i * ws] : x[i] * inv;
}

/// LayerNormalization: a block per row of n values; mean, then the mean squared deviation (the CPU sums in double:
/// the results agree to float rounding), then device_math.h's value.
template <typename T>
__global__ void layerNormKernel(const T* X, const T* G, int64_t gs, const T* B, int64_t bs, T* Y, int64_t n, float eps) {
  const T* x = X + blockIdx.x * n;
  T* y = Y + blockIdx.x * n;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += dm::load(x, i);
  const float mean = blockReduce(s, false) / static_cast<float>(n);
  float v = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += (dm::load(x, i) - mean) * (dm::load(x, i) - mean);
  const float inv = 1.f / sqrtf(blockReduce(v, false) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    dm::store(y, i, dm::layerNormValue(dm::load(x, i), mean, inv, dm::load(G, i * gs), B != nullptr, B ? dm::load(B, i * bs) : 0.f));
}

/// crt.SiluMul (fuse.h): (g * sigmoid(g)) * up, with broadcasting.
__global__ void siluMulKernel(dm::Broadcast bc, int64_t total, const float* G, const float* U, float* Y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t og, ou;
    dm::broadcastOffsets(bc, i, og, ou);
    const float g = G[og];
    Y[i] = (g * dm::applyUnary(dm::Unary::Sigmoid, g)) * U[ou];
  }
}

// ------------------------------------------------------------------------------------------- cuBLAS
/// The cuBLAS entry points the backend uses, from libcublas.so.13 ($CRT_CUBLAS names another file).
struct Blas {
  void* lib = nullptr;
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  // float32 and float16 operands, float32 accumulation (the exported symbols: the header overloads both names)
  cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*, cudaDataType, int,
                         const void*, cudaDataType, int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                         cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemmBatched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
                                cudaDataType, int, long long, const void*, cudaDataType, int, long long, const void*, void*, cudaDataType,
                                int, long long, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
};

/// Loads cuBLAS once; empty `why` on success.
const Blas& blasLibrary(std::string& why) {
  static Blas b;
  static std::string err;
  static bool tried = false;
  if (!tried) {
    tried = true;
    const char* env = std::getenv("CRT_CUBLAS");
    for (const char* name : {env, "libcublas.so.13", "libcublas.so"}) {
      if (!name || !*name) continue;
      if ((b.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    }
    if (b.lib) {
      b.create = reinterpret_cast<decltype(b.create)>(dlsym(b.lib, "cublasCreate_v2"));
      b.destroy = reinterpret_cast<decltype(b.destroy)>(dlsym(b.lib, "cublasDestroy_v2"));
      b.gemm = reinterpret_cast<decltype(b.gemm)>(dlsym(b.lib, "cublasGemmEx"));
      b.gemmBatched = reinterpret_cast<decltype(b.gemmBatched)>(dlsym(b.lib, "cublasGemmStridedBatchedEx"));
      if (!b.create || !b.destroy || !b.gemm || !b.gemmBatched) err = "libcublas lacks the cuBLAS 13 entry points";
    } else {
      err = "cannot load libcublas.so.13 (put the CUDA toolkit's lib folder on LD_LIBRARY_PATH, or set CRT_CUBLAS to the file)";
    }
  }
  why = err;
  return b;
}

// ------------------------------------------------------------------------------------------- the backend
/// A packed weight on the device: its bytes, scales and zero points, and the view the kernels read.
struct DeviceWeight {
  void* w = nullptr;
  float* scale = nullptr;
  float* zp = nullptr;
  dm::WeightView view;
  ~DeviceWeight() {
    cudaFree(w);
    cudaFree(scale);
    cudaFree(zp);
  }
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::string gpu, int index, const Blas& lib) : gpu_(std::move(gpu)), index_(index), lib_(lib) {
    beginRun();
    if (lib_.create(&blas_) != CUBLAS_STATUS_SUCCESS) fail(StatusCode::Internal, "CUDA: cuBLAS did not initialize");
  }
  void beginRun() override { check(cudaSetDevice(index_), "selecting the GPU"); }
  ~CudaBackend() override { lib_.destroy(blas_); }
  const char* name() const override { return gpu_.c_str(); }
  void* alloc(size_t bytes) override {
    void* p = deviceAlloc(bytes, "activations");
    ++live_;
    return p;
  }
  void release(void* p) noexcept override {
    --live_;
    cudaFree(p);
  }
  void upload(void* dst, const void* src, size_t bytes) override { check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "upload"); }
  void download(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "download (or a kernel before it)");
  }
  OpFn kernelFor(const Graph& g, const Node& n) override;
  void prepare(Node& n) override;
  int64_t liveAllocations() const override { return live_; }
  bool denseWeights() const override { return true; }
  cublasHandle_t blas() const { return blas_; }
  const Blas& lib() const { return lib_; }

 private:
  std::string gpu_;
  int index_ = 0;
  const Blas& lib_;
  cublasHandle_t blas_ = nullptr;
  int64_t live_ = 0;
};

CudaBackend& backendOf(const OpCtx& c) { return static_cast<CudaBackend&>(*c.env.g->device); }

/// The element type of a kernel's activations: float for float32, uint16_t (the bits) for float16.
template <typename T>
constexpr DType dtypeOf() {
  return std::is_same_v<T, float> ? DType::F32 : DType::F16;
}
template <typename T>
constexpr cudaDataType_t cudaTypeOf() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16F;
}

/// Calls f(T{}) with T = float for float32, uint16_t for float16; any other type is the node's error.
template <typename F>
void byFloatType(const OpCtx& c, DType dt, F&& f) {
  if (dt == DType::F32) f(float{});
  else if (dt == DType::F16) f(uint16_t{});
  else c.bad(std::string("the CUDA kernel takes float32 or float16, got ") + dtypeName(dt));
}

template <typename T>
const T* typedIn(const OpCtx& c, int i) {
  const Buf& b = c.in(i);
  if (b.dt != dtypeOf<T>())
    c.bad(std::string("input ") + std::to_string(i) + " is " + dtypeName(b.dt) + ", not " + dtypeName(dtypeOf<T>()) + " as input 0");
  return static_cast<const T*>(b.data);
}
const float* f32In(const OpCtx& c, int i) { return typedIn<float>(c, i); }

template <typename T>
T* typedOut(OpCtx& c, int i, const Shape& s) {
  return static_cast<T*>(c.out(i, dtypeOf<T>(), s));
}

cublasOperation_t op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

/// Y = X R (row-major) through cuBLAS as `g` says (device_math.h: rowMajorGemm), operands and result of type `t`
/// (float32, or float16 with float32 accumulation); false when cuBLAS fails.
bool gemm(const CudaBackend& b, const dm::GemmCall& g, cudaDataType_t t, const void* R, const void* X, void* Y) {
  const float one = 1.f, zero = 0.f;
  return b.lib().gemm(b.blas(), op(g.transA), op(g.transB), g.m, g.n, g.k, &one, R, t, g.lda, X, t, g.ldb, &zero, Y, t, g.ldc,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
}

/// M rows through the packed weight: fewer than kGemmRows a GEMV from the packed bytes; more, the weight as rows of
/// T (float32 as it is, float16 as it is for fp16 activations, anything else dequantized into scratch) and a cuBLAS
/// GEMM of that type with float32 accumulation.
template <typename T>
void packedRows(OpCtx& c, const dm::WeightView& v, const T* X, int64_t M, T* Y) {
  if (M < kGemmRows) {
    for (int64_t m0 = 0; m0 < M; m0 += 65535) {
      const dim3 grid(static_cast<unsigned>((v.N + kGemvWarps - 1) / kGemvWarps), static_cast<unsigned>(std::min<int64_t>(M - m0, 65535)));
      gemvKernel<T><<<grid, kGemvWarps * dm::kWarp>>>(v, X + m0 * v.K, Y + m0 * v.N);
    }
    return checkLaunch("gemv");
  }
  const bool asIs = v.kind == (std::is_same_v<T, float> ? dm::WeightView::F32 : dm::WeightView::F16);
  const void* W = v.w;
  if (!asIs) {
    T* D = static_cast<T*>(c.scratch(static_cast<size_t>(v.N * v.K) * sizeof(T)));
    dequantKernel<T><<<blocksFor(v.N * v.K, 256), 256>>>(v, D);
    checkLaunch("dequantize");
    W = D;
  }
  if (!gemm(backendOf(c), dm::rowMajorGemm(M, v.N, v.K, true), cudaTypeOf<T>(), W, X, Y)) c.bad("cuBLAS GEMM failed");
}

void opCudaMatMul(OpCtx& c) {
  const DeviceWeight& dw = *static_cast<const DeviceWeight*>(c.node.packed->device.get());
  const dm::WeightView& v = dw.view;
  const Buf& x = c.in(0);
  if (x.shape.rank < 1 || x.shape[x.shape.rank - 1] != v.K)
    c.bad("input " + x.shape.str() + " does not end in the weight's " + std::to_string(v.K) + " inputs");
  Shape os = x.shape;
  os[os.rank - 1] = v.N;
  byFloatType(c, x.dt, [&](auto tag) {
    using T = decltype(tag);
    const T* X = typedIn<T>(c, 0);
    T* Y = typedOut<T>(c, 0, os);
    if (v.K == 0) return check(cudaMemsetAsync(Y, 0, static_cast<size_t>(os.numel()) * sizeof(T)), "matmul of empty inner dims");
    const int64_t M = x.numel() / v.K;
    if (M > 0 && v.N > 0) packedRows(c, v, X, M, Y);
  });
}

/// The broadcast of inputs 0 and 1 (both T) and the output it makes; `total` = its elements.
template <typename T>
T* broadcastOut(OpCtx& c, dm::Broadcast& bc, int64_t& total) {
  const Buf& a = c.in(0);
  const Buf& b = c.in(1);
  typedIn<T>(c, 0), typedIn<T>(c, 1);
  if (!dm::makeBroadcast(a.shape.d, a.shape.rank, b.shape.d, b.shape.rank, bc)) c.bad(a.shape.str() + " and " + b.shape.str() + " do not broadcast");
  Shape os;
  for (int i = 0; i < bc.rank; ++i) os.push(bc.out[i]);
  total = os.numel();
  return typedOut<T>(c, 0, os);
}

void opCudaBinary(OpCtx& c) {
  byFloatType(c, c.in(0).dt, [&](auto tag) {
    using T = decltype(tag);
    dm::Broadcast bc;
    int64_t total = 0;
    T* Y = broadcastOut<T>(c, bc, total);
    if (total == 0) return;
    binaryKernel<T><<<blocksFor(total, 256), 256>>>(static_cast<dm::Binary>(c.node.device_code), bc, total, c.in(0).as<T>(),
                                                    c.in(1).as<T>(), Y);
    checkLaunch("elementwise");
  });
}

void opCudaWhere(OpCtx& c) {
  const Buf& cond = c.in(0);
  if (cond.dt != DType::Bool) c.bad("condition must be bool");
  const int64_t* dims[3] = {cond.shape.d, c.in(1).shape.d, c.in(2).shape.d};
  const int ranks[3] = {cond.shape.rank, c.in(1).shape.rank, c.in(2).shape.rank};
  dm::Broadcast3 bc;
  if (!dm::makeBroadcast3(dims, ranks, bc))
    c.bad(cond.shape.str() + ", " + c.in(1).shape.str() + " and " + c.in(2).shape.str() + " do not broadcast");
  Shape os;
  for (int i = 0; i < bc.rank; ++i) os.push(bc.out[i]);
  const int64_t total = os.numel();
  byFloatType(c, c.in(1).dt, [&](auto tag) {
    using T = decltype(tag);
    const T* A = typedIn<T>(c, 1);
    const T* B = typedIn<T>(c, 2);
    T* Y = typedOut<T>(c, 0, os);
    if (total == 0) return;
    whereKernel<T><<<blocksFor(total, 256), 256>>>(bc, total, cond.as<uint8_t>(), A, B, Y);
    checkLaunch("where");
  });
}

/// Cast of float32 or float16 to float32, float16 or bool (device_code: the target).
void opCudaCast(OpCtx& c) {
  const Buf& x = c.in(0);
  const DType to = static_cast<DType>(c.node.device_code);
  const int64_t total = x.numel();
  byFloatType(c, x.dt, [&](auto tag) {
    using F = decltype(tag);
    const F* X = typedIn<F>(c, 0);
    if (to == DType::Bool) {
      uint8_t* Y = static_cast<uint8_t*>(c.out(0, DType::Bool, x.shape));
      if (total > 0) castBoolKernel<F><<<blocksFor(total, 256), 256>>>(total, X, Y);
      return checkLaunch("cast to bool");
    }
    if (to == x.dt) {
      F* Y = typedOut<F>(c, 0, x.shape);
      if (total > 0) check(cudaMemcpyAsync(Y, X, static_cast<size_t>(total) * sizeof(F), cudaMemcpyDeviceToDevice), "cast");
      return;
    }
    if (total == 0) return void(c.out(0, to, x.shape));
    if (to == DType::F32) castKernel<F, float><<<blocksFor(total, 256), 256>>>(total, X, typedOut<float>(c, 0, x.shape));
    else castKernel<F, uint16_t><<<blocksFor(total, 256), 256>>>(total, X, typedOut<uint16_t>(c, 0, x.shape));
    checkLaunch("cast");
  });
}

void opCudaGelu(OpCtx& c) {
  const Buf& x = c.in(0);
  const float* X = f32In(c, 0);
  float* Y = c.outT<float>(0, x.shape);
  const int64_t total = x.numel();
  if (total == 0) return;
  geluKernel<<<blocksFor(total, 256), 256>>>(geluParams(c), total, X, Y);
  checkLaunch("gelu");
}

/// An op of one float32 or float16 input and one output of shape `os` and the same type: launch(X, Y) with the typed
/// pointers, unless the output is empty.
template <typename Launch>
void sameTypeOp(OpCtx& c, const Shape& os, Launch&& launch) {
  byFloatType(c, c.in(0).dt, [&](auto tag) {
    using T = decltype(tag);
    const T* X = typedIn<T>(c, 0);
    T* Y = typedOut<T>(c, 0, os);
    if (os.numel() > 0) launch(X, Y);
  });
}

void opCudaUnary(OpCtx& c) {
  const int64_t total = c.in(0).numel();
  sameTypeOp(c, c.in(0).shape, [&](auto X, auto Y) {
    unaryKernel<<<blocksFor(total, 256), 256>>>(static_cast<dm::Unary>(c.node.device_code), total, X, Y);
    checkLaunch("elementwise");
  });
}

/// Rows and row length of a last-axis op (a rank-0 input is one row of one value).
void lastAxis(const Buf& x, int64_t& rows, int64_t& n) {
  n = x.shape.rank == 0 ? 1 : x.shape[x.shape.rank - 1];
  rows = n == 0 ? 0 : x.numel() / n;
}

void opCudaSoftmax(OpCtx& c) {
  int64_t rows, n;
  lastAxis(c.in(0), rows, n);
  sameTypeOp(c, c.in(0).shape, [&](auto X, auto Y) {
    softmaxKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(X, Y, n);
    checkLaunch("softmax");
  });
}

void opCudaReduceMean(OpCtx& c) {
  Shape os = c.in(0).shape;
  if (os.rank > 0) os[os.rank - 1] = 1;
  int64_t rows, n;
  lastAxis(c.in(0), rows, n);
  sameTypeOp(c, os, [&](auto X, auto Y) {
    if (rows == 0) return;  // (an empty last axis: nothing to average)
    meanKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(X, Y, n);
    checkLaunch("reduce mean");
  });
}

/// Transpose, Slice and Expand: one gather over the op's strided view of its input (float32 or float16 elements).
void stridedOp(OpCtx& c, const StridedView& sv, int output = 0) {
  byFloatType(c, c.in(0).dt, [&](auto tag) {
    using E = decltype(tag);
    const E* X = typedIn<E>(c, 0);
    E* Y = typedOut<E>(c, output, sv.os);
    const int64_t total = sv.os.numel();
    if (total == 0) return;
    dm::Strided v;
    v.rank = sv.os.rank;
    v.offset = sv.offset;
    for (int d = 0; d < v.rank; ++d) v.os[d] = sv.os[d], v.st[d] = sv.st[d];
    gatherKernel<E><<<blocksFor(total, 256), 256>>>(v, total, X, Y);
    checkLaunch("strided copy");
  });
}

void opCudaTranspose(OpCtx& c) { stridedOp(c, transposeView(c, c.in(0))); }
void opCudaLastRow(OpCtx& c) { stridedOp(c, lastRowView(c)); }
void opCudaSplit(OpCtx& c) {
  const std::vector<StridedView> views = splitViews(c);
  for (size_t i = 0; i < views.size(); ++i) stridedOp(c, views[i], static_cast<int>(i));
}
void opCudaSlice(OpCtx& c) { stridedOp(c, sliceView(c, c.in(0))); }
void opCudaExpand(OpCtx& c) { stridedOp(c, expandView(c, c.in(0))); }
void opCudaGather(OpCtx& c) { stridedOp(c, gatherView(c, c.in(0))); }

/// Concat: each input fills a column range of the output's [outer, row] layout (one 2-D copy per input).
void opCudaConcat(OpCtx& c) {
  const ConcatLayout l = concatLayout(c);
  const DType dt = c.in(0).dt;
  byFloatType(c, dt, [&](auto tag) {
    for (int i = 0; i < c.nin(); ++i) typedIn<decltype(tag)>(c, i);
  });
  const size_t es = dtypeSize(dt);
  char* y = static_cast<char*>(c.out(0, dt, l.os));
  const size_t orow = static_cast<size_t>(l.os[l.axis] * l.inner) * es;
  size_t col = 0;
  for (int i = 0; i < c.nin(); ++i) {
    const Buf& b = c.in(i);
    const size_t brow = static_cast<size_t>(b.shape[l.axis] * l.inner) * es;
    if (brow > 0 && l.outer > 0)
      check(cudaMemcpy2DAsync(y + col, orow, b.data, brow, brow, static_cast<size_t>(l.outer), cudaMemcpyDeviceToDevice), "concat");
    col += brow;
  }
}

/// MatMul of two tensors (float32 or float16, float32 accumulation): one strided batched GEMM when each operand's
/// batch is one stride (or broadcast), else one GEMM per batch at the geometry's offsets.
template <typename T>
void batchMatMul(OpCtx& c) {
  const T* A = typedIn<T>(c, 0);
  const T* B = typedIn<T>(c, 1);
  const MatMulGeometry m = matmulGeometry(c, c.in(0), c.in(1));
  T* Y = typedOut<T>(c, 0, m.os);
  const int64_t nb = m.batch.numel(), outBytes = nb * m.M * m.N * static_cast<int64_t>(sizeof(T));
  if (outBytes == 0) return;
  if (m.K == 0) return check(cudaMemsetAsync(Y, 0, static_cast<size_t>(outBytes)), "matmul of empty inner dims");
  const dm::GemmCall g = dm::rowMajorGemm(m.M, m.N, m.K, false);
  const CudaBackend& cb = backendOf(c);
  const cudaDataType_t t = cudaTypeOf<T>();
  int64_t strideA = 0, strideB = 0;
  if (dm::uniformBatch(m.batch.d, m.sa, m.batch.rank, m.M * m.K, strideA) &&
      dm::uniformBatch(m.batch.d, m.sb, m.batch.rank, m.K * m.N, strideB)) {
    const float one = 1.f, zero = 0.f;
    if (cb.lib().gemmBatched(cb.blas(), op(g.transA), op(g.transB), g.m, g.n, g.k, &one, B, t, g.lda, strideB, A, t, g.ldb, strideA, &zero,
                             Y, t, g.ldc, m.M * m.N, static_cast<int>(nb), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
      c.bad("cuBLAS batched GEMM failed");
    return;
  }
  for (int64_t i = 0; i < nb; ++i) {
    int64_t oa = 0, ob = 0;
    m.offsets(i, oa, ob);
    if (!gemm(cb, g, t, B + ob, A + oa, Y + i * m.M * m.N)) c.bad("cuBLAS GEMM failed");
  }
}

void opCudaBatchMatMul(OpCtx& c) {
  byFloatType(c, c.in(0).dt, [&](auto tag) { batchMatMul<decltype(tag)>(c); });
}

void opCudaRMSNorm(OpCtx& c) {
  const Buf& x = c.in(0);
  const float* X = f32In(c, 0);
  if (x.shape.rank == 0) c.bad("needs an input of rank >= 1");
  const int64_t n = x.shape[x.shape.rank - 1], rows = n == 0 ? 0 : x.numel() / n;
  const float* W = c.has(1) ? f32In(c, 1) : nullptr;
  if (W && c.in(1).numel() != n && c.in(1).numel() != 1) c.bad("the weight must have one value per channel, or one value");
  const int64_t ws = W && c.in(1).numel() == 1 ? 0 : 1;
  float* Y = c.outT<float>(0, x.shape);
  if (rows == 0) return;
  rmsNormKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(X, W, ws, Y, n, c.node.attrFloat("eps", 0.f));
  checkLaunch("rms norm");
}

void opCudaLayerNorm(OpCtx& c) {
  const Buf& x = c.in(0);
  const LayerNormRows l = layerNormRows(c);
  byFloatType(c, x.dt, [&](auto tag) {
    using T = decltype(tag);
    const T* X = typedIn<T>(c, 0);
    const T* G = typedIn<T>(c, 1);
    const T* B = l.hasBias ? typedIn<T>(c, 2) : nullptr;
    T* Y = typedOut<T>(c, 0, x.shape);
    if (l.outer == 0 || l.n == 0) return;
    layerNormKernel<T><<<static_cast<unsigned>(l.outer), kRowThreads>>>(X, G, l.scalarScale ? 0 : 1, B, l.scalarBias ? 0 : 1, Y, l.n, l.eps);
    checkLaunch("layer norm");
  });
}

void opCudaSiluMul(OpCtx& c) {
  dm::Broadcast bc;
  int64_t total = 0;
  float* Y = broadcastOut<float>(c, bc, total);
  if (total == 0) return;
  siluMulKernel<<<blocksFor(total, 256), 256>>>(bc, total, c.in(0).as<float>(), c.in(1).as<float>(), Y);
  checkLaunch("silu mul");
}

void opCudaElementwise(OpCtx& c) {
  const dm::EwProgram prog = ewProgram(c);
  Shape os;
  const dm::BroadcastN bc = ewBroadcast(c, os);
  EwInputs in;
  for (int k = 0; k < prog.inputs; ++k) in.p[k] = c.in(k).data, in.f16[k] = c.in(k).dt == DType::F16;
  const int64_t total = os.numel();
  byFloatType(c, static_cast<DType>(c.node.attrInt("type", 0)), [&](auto tag) {
    using T = decltype(tag);
    T* Y = typedOut<T>(c, 0, os);
    if (total == 0) return;
    elementwiseKernel<T><<<blocksFor(total, 256), 256>>>(prog, bc, in, total, Y);
    checkLaunch("elementwise chain");
  });
}

void opCudaRope(OpCtx& c) {
  const RopeGeometry geo = ropeGeometry(c);
  float* Y = c.outT<float>(0, geo.out);
  const int64_t total = geo.out.numel() / 2;
  if (total == 0) return;
  ropeKernel<<<blocksFor(total, 256), 256>>>(geo.r, total, c.in(0).as<float>(), c.in(1).as<float>(), c.in(2).as<float>(), Y);
  checkLaunch("rope");
}

void opCudaScaleMaskSoftmax(OpCtx& c) {
  const dm::RowMask m = scaleMaskGeometry(c);
  const Buf& x = c.in(0);
  float* Y = c.outT<float>(0, x.shape);
  int64_t rows, n;
  lastAxis(x, rows, n);
  if (rows == 0) return;
  scaleMaskSoftmaxKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(m, x.as<float>(), c.in(1).as<float>(), Y, n,
                                                                       c.node.attrFloat("divisor", 1.f));
  checkLaunch("scale mask softmax");
}

/// Cache entry `entry` as the kernels read it, after appending the new rows of input `input`.
dm::KvCache appendToCache(OpCtx& c, const KvAttention& a, int entry, int input) {
  const KvState& kv = *c.env.g->kv;
  const KvState::Entry& e = kv.entries.at(static_cast<size_t>(entry));
  if (!e.on_device) c.bad("the KV cache is not on the device");
  const dm::KvCache v = kv.view(entry, a.rep);
  const int64_t total = kv.kv_heads * a.S * a.D;
  byFloatType(c, c.in(input).dt, [&](auto tag) {
    using T = decltype(tag);
    const T* X = typedIn<T>(c, input);
    if (total > 0 && kv.storage == DType::I8) {
      char* base = static_cast<char*>(e.on_device.get());
      kvAppendInt8Kernel<T><<<static_cast<unsigned>(kv.kv_heads * a.S), kRowThreads>>>(
          reinterpret_cast<int8_t*>(base), reinterpret_cast<float*>(base + kv.scalesOffset()), kv.capacity, kv.head_dim, a.S, kv.length, X);
      checkLaunch("kv append (int8)");
    } else if (total > 0) {
      kvAppendKernel<T><<<blocksFor(total, 256), 256>>>(v, e.on_device.get(), kv.kv_heads, a.S, kv.length, X);
      checkLaunch("kv append");
    }
  });
  return v;
}

void opCudaKvScores(OpCtx& c) {
  const KvAttention a = kvScoresGeometry(c);
  byFloatType(c, c.in(0).dt, [&](auto tag) {
    using T = decltype(tag);
    const T* Q = typedIn<T>(c, 0);
    const dm::KvCache kv = appendToCache(c, a, a.entry, 1);
    T* Y = typedOut<T>(c, 0, a.out);
    const int64_t total = a.H * a.S * a.T;
    if (total == 0) return;
    kvScoresKernel<T><<<static_cast<unsigned>((total + kGemvWarps - 1) / kGemvWarps), kGemvWarps * dm::kWarp>>>(kv, Q, Y, a.S, a.T, total);
    checkLaunch("kv scores");
  });
}

void opCudaKvValues(OpCtx& c) {
  const KvAttention a = kvValuesGeometry(c);
  byFloatType(c, c.in(0).dt, [&](auto tag) {
    using T = decltype(tag);
    const T* P = typedIn<T>(c, 0);
    const dm::KvCache kv = appendToCache(c, a, a.entry, 1);
    T* Y = typedOut<T>(c, 0, a.out);
    if (a.H * a.S * a.D == 0) return;
    kvValuesKernel<T><<<static_cast<unsigned>(a.H * a.S), kRowThreads>>>(kv, P, Y, a.S, a.T);
    checkLaunch("kv values");
  });
}

/// crt.KvAttention: one kernel while a row's scores fit in shared memory, else the three ops' kernels through a
/// scratch score tensor.
void opCudaKvAttention(OpCtx& c) {
  const KvAttention a = kvAttentionGeometry(c);
  const float* Q = f32In(c, 0);
  const float* M = f32In(c, 2);
  const dm::KvCache K = appendToCache(c, a, a.entry, 1), V = appendToCache(c, a, a.entry_v, 3);
  float* Y = c.outT<float>(0, a.out);
  const int64_t rows = a.H * a.S;
  if (rows == 0 || a.D == 0) return;
  const float divisor = c.node.attrFloat("divisor", 1.f);
  if (a.T <= kAttentionSmemRows) {
    kvAttentionKernel<<<static_cast<unsigned>(rows), kRowThreads, static_cast<size_t>(a.T) * sizeof(float)>>>(K, V, Q, a.mask, M, divisor, Y,
                                                                                                           a.S, a.T);
    return checkLaunch("kv attention");
  }
  float* P = static_cast<float*>(c.scratch(static_cast<size_t>(rows * a.T) * sizeof(float)));
  kvScoresKernel<<<static_cast<unsigned>((rows * a.T + kGemvWarps - 1) / kGemvWarps), kGemvWarps * dm::kWarp>>>(K, Q, P, a.S, a.T, rows * a.T);
  scaleMaskSoftmaxKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(a.mask, P, M, P, a.T, divisor);
  kvValuesKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(V, P, Y, a.S, a.T);
  checkLaunch("kv attention (long rows)");
}

OpFn CudaBackend::kernelFor(const Graph& g, const Node& n) {
  switch (deviceOpOf(g, n).op) {
    case DeviceOp::MatMul: return opCudaMatMul;
    case DeviceOp::Binary: return opCudaBinary;
    case DeviceOp::Unary: return opCudaUnary;
    case DeviceOp::Softmax: return opCudaSoftmax;
    case DeviceOp::ReduceMean: return opCudaReduceMean;
    case DeviceOp::Transpose: return opCudaTranspose;
    case DeviceOp::Slice: return opCudaSlice;
    case DeviceOp::Expand: return opCudaExpand;
    case DeviceOp::Concat: return opCudaConcat;
    case DeviceOp::BatchMatMul: return opCudaBatchMatMul;
    case DeviceOp::RMSNorm: return opCudaRMSNorm;
    case DeviceOp::SiluMul: return opCudaSiluMul;
    case DeviceOp::LayerNorm: return opCudaLayerNorm;
    case DeviceOp::Rope: return opCudaRope;
    case DeviceOp::ScaleMaskSoftmax: return opCudaScaleMaskSoftmax;
    case DeviceOp::KvScores: return opCudaKvScores;
    case DeviceOp::KvValues: return opCudaKvValues;
    case DeviceOp::KvAttention: return opCudaKvAttention;
    case DeviceOp::LastRow: return opCudaLastRow;
    case DeviceOp::Split: return opCudaSplit;
    case DeviceOp::Where: return opCudaWhere;
    case DeviceOp::Gather: return opCudaGather;
    case DeviceOp::Gelu: return opCudaGelu;
    case DeviceOp::Cast: return opCudaCast;
    case DeviceOp::Elementwise: return opCudaElementwise;
    case DeviceOp::None: break;
  }
  return nullptr;
}

/// The weight's bytes in the device layout: fp32 panels become rows [N][K]; the rest is the host's packing.
std::shared_ptr<DeviceWeight> uploadWeight(CudaBackend& b, const PackedWeight& w) {
  auto d = std::make_shared<DeviceWeight>();
  auto put = [&](void** dst, const void* src, size_t bytes) {
    *dst = deviceAlloc(bytes, "a weight");
    if (bytes > 0) b.upload(*dst, src, bytes);
  };
  if (w.kind == PackedWeight::F32) {
    const std::vector<float> rows = panelsToRows(w);
    put(&d->w, rows.data(), rows.size() * sizeof(float));
  } else if (w.kind == PackedWeight::F16) {
    put(&d->w, w.w.data(), static_cast<size_t>(w.N * w.K) * 2);
  } else {
    put(&d->w, w.w.data(), static_cast<size_t>(w.rowBytes() * w.N));
    put(reinterpret_cast<void**>(&d->scale), w.scale.data(), w.scale.size() * sizeof(float));
    put(reinterpret_cast<void**>(&d->zp), w.zp.data(), w.zp.size() * sizeof(float));
  }
  d->view = weightView(w, d->w, d->scale, d->zp);
  return d;
}

void CudaBackend::prepare(Node& n) {
  if (n.packed && !n.packed->device) n.packed->device = uploadWeight(*this, *n.packed);
}

}  // namespace

bool cudaCompiled() { return true; }

int cudaDeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why) *why = std::string("no CUDA device: ") + cudaGetErrorString(e);
    return 0;
  }
  if (count == 0 && why) *why = "no CUDA device";
  return count;
}

double cudaCopyBandwidth(size_t bytes) {
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess) return -1;
  if (cudaMalloc(&b, bytes) != cudaSuccess) return cudaFree(a), -1;
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  float best = 1e30f;
  for (int r = 0; r < 6; ++r) {
    cudaEventRecord(t0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    if (r > 0) best = std::min(best, ms);  // (the first copy warms up)
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (best * 1e6);
}

int64_t cudaFreeBytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return -1;
  return static_cast<int64_t>(free);
}

std::shared_ptr<Backend> makeCudaBackend(bool required, int index) {
  std::string why;
  const int count = cudaDeviceCount(&why);
  if (count > 0 && (index < 0 || index >= count))
    why = "no CUDA device " + std::to_string(index) + " (this machine has " + std::to_string(count) + ")";
  if (count == 0 || index < 0 || index >= count) {
    if (required) fail(StatusCode::InvalidArgument, why + " (run on the CPU with --device cpu, or --device auto)");
    return nullptr;
  }
  const Blas& lib = blasLibrary(why);
  if (!why.empty()) {
    if (required) fail(StatusCode::InvalidArgument, "CUDA: " + why);
    return nullptr;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "reading the GPU's properties");
  return std::make_shared<CudaBackend>("cuda:" + std::to_string(index) + " (" + prop.name + ")", index, lib);
}

}  // namespace crt::detail
