// util.cpp — small shared pieces: dtypes, shapes, aligned memory, fp16 conversion, node attributes, OpCtx.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>
#include <time.h>

#include "runtime/cuda/device_math.h"
#include "runtime/internal.h"
#include "runtime/kernels.h"

namespace crt {

const char* dtypeName(DType t) {
  switch (static_cast<int>(t)) {
    case 1: return "float32";
    case 2: return "uint8";
    case 3: return "int8";
    case 6: return "int32";
    case 7: return "int64";
    case 9: return "bool";
    case 10: return "float16";
    case 11: return "float64";
    case 21: return "uint4";
    case 22: return "int4";
  }
  return "unknown";
}

size_t dtypeSize(DType t) {
  switch (static_cast<int>(t)) {
    case 1: case 6: return 4;
    case 2: case 3: case 9: return 1;
    case 7: case 11: return 8;
    case 10: return 2;
    case 21: case 22: return 1;  // packed: callers use Buf::bytes()
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 0;
  return checkedNumel(shape.data(), shape.size(), &n) ? n : -1;
}

namespace detail {

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

void Shape::tooLarge() const {
  fail(StatusCode::DataError, "tensor shape " + str() + " has a negative dim or more than 2^48 elements");
}

namespace {
std::string mib(int64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MiB"; }
}  // namespace

void Limits::checkTensor(int64_t bytes, const std::string& what) const {
  if (bytes > max_tensor)
    fail(StatusCode::DataError, what + " needs " + mib(bytes) + ", above the " + mib(max_tensor) +
                                    " limit for one tensor (SessionOptions::max_tensor_bytes, crun --max-tensor-mib)");
}

void Limits::take(int64_t& used, int64_t bytes, const std::string& what) const {
  if (!checkedAdd(used, bytes, &used) || used > max_total)
    fail(StatusCode::DataError, what + " would bring the model's memory to more than the " + mib(max_total) +
                                    " limit (SessionOptions::max_total_bytes, crun --max-memory-mib)");
}

namespace {
/// Nanoseconds of the coarse monotonic clock: a few ns to read where steady_clock took ~45 on a VM (7 us of a 75 us
/// decode step at one read per node), at the kernel tick's resolution (1-4 ms), fine for a limit in ms.
int64_t coarseNowNs() {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}
}  // namespace

RunGuard::RunGuard(int64_t max_run_ms, std::atomic<bool>* stop, const char* what)
    : start_ns_(coarseNowNs()),
      deadline_ns_(start_ns_ + (max_run_ms > 0 ? max_run_ms : 0) * 1000000),
      max_run_ms_(max_run_ms),
      stop_(stop),
      what_(what) {}

void RunGuard::check(const Node& next) {
  // (a relaxed load first: the exchange, a locked instruction, only when a stop was asked)
  if (stop_ && stop_->load(std::memory_order_relaxed) && stop_->exchange(false))
    fail(StatusCode::Stopped, std::string(what_) + " stopped before " + next.where() + ": Session::stop() asked");
  if (max_run_ms_ <= 0) return;
  const int64_t now = coarseNowNs();
  if (now < deadline_ns_) return;
  fail(StatusCode::Stopped, std::string(what_) + " stopped before " + next.where() + " after " +
                                std::to_string((now - start_ns_) / 1000000) + " ms: over the " + std::to_string(max_run_ms_) +
                                " ms limit (SessionOptions::max_run_ms, crun --max-run-ms)");
}

size_t bytesOf(DType dt, int64_t elems) {
  if (dt == kU4 || dt == kI4) return static_cast<size_t>((elems + 1) / 2);
  return static_cast<size_t>(elems) * dtypeSize(dt);
}

size_t Buf::bytes() const { return bytesOf(dt, numel()); }

namespace {
std::atomic<int64_t> g_allocations{0};
}
int64_t allocationCount() { return g_allocations.load(); }

namespace {
// Buffers of 1 MiB and more (weights, KV caches, arenas) are mapped pages of their own: zeroed by the
// kernel and returned to it when freed, so a load that copies weights does not leave the process's peak
// memory behind in malloc's heap.
constexpr size_t kMapBytes = size_t{1} << 20;
size_t mappedSize(size_t n) { return (n + 4095) / 4096 * 4096; }
// Mappings that can hold a 2 MiB page ask for transparent huge pages (where the kernel's THP mode is "madvise", as
// on Debian): a decode step streams every weight once, and with 4 KiB pages it took a TLB miss per page. fp32
// [1,1] of the synthetic LLaMA-shape model (438 MB of weights) 36.2-36.9 -> 31.8-32.5 ms with 1 thread, 18.0-18.6
// -> 16.8-17.1 with 2 (Intel Xeon VM, interleaved; ONNX Runtime 31.4-32.6 / 16.9); int8 unchanged. The price:
// faulting fresh 2 MiB pages made its load 0.22-0.70 s where it had been 0.27-0.29 (2 threads).
constexpr size_t kHugePageBytes = size_t{2} << 20;

void release(void* p, size_t n) {
  if (!p) return;
  if (n >= kMapBytes) ::munmap(p, mappedSize(n));
  else std::free(p);
}
}  // namespace

AlignedBytes::~AlignedBytes() { release(p_, n_); }

void AlignedBytes::resize(size_t n) {
  release(p_, n_);
  p_ = nullptr;
  n_ = n;
  if (n == 0) return;
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n >= kMapBytes) {
    void* m = ::mmap(nullptr, mappedSize(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      n_ = 0;
      fail(StatusCode::Internal, "out of memory allocating " + std::to_string(n) + " bytes");
    }
    if (n >= kHugePageBytes) ::madvise(m, mappedSize(n), MADV_HUGEPAGE);  // a hint: refused or ignored, pages stay 4 KiB
    p_ = m;
    return;
  }
  const size_t rounded = (n + 63) / 64 * 64;
  p_ = std::aligned_alloc(64, rounded);
  if (!p_) {
    n_ = 0;
    fail(StatusCode::Internal, "out of memory allocating " + std::to_string(n) + " bytes");
  }
  std::memset(p_, 0, rounded);
}

float halfToFloat(uint16_t h) { return device::halfBitsToFloat(h); }  // (the CUDA kernels' conversion too)

uint16_t floatToHalf(float f) { return device::floatToHalfBits(f); }  // (one conversion for the CPU and the GPU)

int64_t Node::attrInt(const std::string& k, int64_t def) const {
  auto it = attrs.find(k);
  return it == attrs.end() || it->second.kind != Attr::Int ? def : it->second.i;
}
float Node::attrFloat(const std::string& k, float def) const {
  auto it = attrs.find(k);
  return it == attrs.end() || it->second.kind != Attr::Float ? def : it->second.f;
}
const std::vector<int64_t>* Node::attrInts(const std::string& k) const {
  auto it = attrs.find(k);
  return it == attrs.end() || it->second.kind != Attr::Ints ? nullptr : &it->second.ints;
}
std::string Node::where() const {
  return (domain.empty() ? "" : domain + ".") + op + " node '" + name + "'";
}

const Buf& OpCtx::in(int i) const {
  if (!has(i)) bad("input " + std::to_string(i) + " is missing");
  return env.vals[node.in[i]];
}

namespace {
[[noreturn, gnu::noinline, gnu::cold]] void badOutput(const OpCtx& c, int i, const Shape& s) {
  if (i >= static_cast<int>(c.node.out.size())) c.bad("the node lists no output " + std::to_string(i));
  c.bad("output " + std::to_string(i) + " would have shape " + s.str() + ": a negative dim or more than 2^48 elements");
}
}  // namespace

void* OpCtx::out(int i, DType dt, const Shape& s) {
  int64_t elems = 0;  // one checked count serves the validity check and the byte size
  if (__builtin_expect(i >= static_cast<int>(node.out.size()) || !checkedNumel(s.d, static_cast<size_t>(s.rank), &elems), 0))
    badOutput(*this, i, s);
  const int v = node.out[i];
  Buf& b = env.vals[v];
  b.dt = dt;
  b.shape = s;
  const size_t n = bytesOf(dt, elems);
  claim(static_cast<int64_t>(n), i);
  b.data = env.alloc->output(v, n, env.node_index, node.is_static);
  return b.data;
}

void OpCtx::aliasOut(int i, int src, const Shape& s) {
  const Buf& in = this->in(src);
  int64_t elems = 0;
  if (__builtin_expect(i >= static_cast<int>(node.out.size()) || !checkedNumel(s.d, static_cast<size_t>(s.rank), &elems), 0))
    badOutput(*this, i, s);
  if (elems != in.numel()) bad("internal: alias of a different size");
  const int v = node.out[i];
  Buf& b = env.vals[v];
  b.dt = in.dt;
  b.shape = s;
  b.data = in.data;
  env.alloc->alias(v, node.in[src], bytesOf(in.dt, elems), env.node_index, node.is_static);
}

void* OpCtx::scratch(size_t bytes) {
  claim(static_cast<int64_t>(bytes), -1);
  return env.alloc->scratch(bytes, env.node_index, node.is_static);
}

void OpCtx::claimSlow(int64_t bytes, int output) {
  if (!env.g) return;  // kernels run alone (tests): no session, no limits
  const Limits& l = env.g->limits;
  const std::string what = node.where() + ": " + (output < 0 ? "scratch memory" : "output " + std::to_string(output));
  l.checkTensor(bytes, what);
  l.take(env.used, bytes, what);
}

void OpCtx::bad(const std::string& what) const {
  fail(StatusCode::DataError, node.where() + ": " + what);
}

int64_t readInts(const Buf& b, int64_t* out, int64_t cap, const OpCtx& c) {
  if (b.dt != DType::I64 && b.dt != DType::I32) c.bad(std::string("expected an int64 tensor, got ") + dtypeName(b.dt));
  const int64_t n = b.numel();
  if (n > cap) c.bad("expected at most " + std::to_string(cap) + " values, got " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) out[i] = b.dt == DType::I64 ? b.as<int64_t>()[i] : b.as<int32_t>()[i];
  return n;
}

int64_t quantValue(const Buf& q, int64_t i) {
  switch (q.dt) {
    case DType::I8: return q.as<int8_t>()[i];
    case DType::U8: return q.as<uint8_t>()[i];
    case DType::I32: return q.as<int32_t>()[i];
    default: break;
  }
  const uint8_t byte = q.as<uint8_t>()[i / 2];
  const int v = (i & 1) ? byte >> 4 : byte & 0xF;
  return q.dt == kI4 && v >= 8 ? v - 16 : v;  // kI4 / kU4
}

const float* floatData(OpCtx& c, const Buf& b) {
  if (b.dt == DType::F32) return b.as<float>();
  if (b.dt != DType::F16) c.bad(std::string("needs float32 or float16 inputs, got ") + dtypeName(b.dt));
  const int64_t n = b.numel();
  float* f = static_cast<float*>(c.scratch(n * sizeof(float)));
  halfToFloatN(c, b.as<uint16_t>(), f, n);
  return f;
}

void halfToFloatN(const OpCtx& c, const uint16_t* x, float* y, int64_t n) {
  if (c.env.k && c.env.k->half_to_float) return c.env.k->half_to_float(x, y, n);
  for (int64_t k = 0; k < n; ++k) y[k] = halfToFloat(x[k]);
}

void floatToHalfN(const OpCtx& c, const float* x, uint16_t* y, int64_t n) {
  if (c.env.k && c.env.k->float_to_half) return c.env.k->float_to_half(x, y, n);
  for (int64_t k = 0; k < n; ++k) y[k] = floatToHalf(x[k]);
}

FloatOut floatOut(OpCtx& c, DType dt, const Shape& s) {
  FloatOut o{nullptr, c.out(0, dt, s), dt, s.numel()};
  o.p = dt == DType::F32 ? static_cast<float*>(o.raw) : static_cast<float*>(c.scratch(o.n * sizeof(float)));
  if (c.env.k) o.to_half = c.env.k->float_to_half;
  return o;
}

void finish(const FloatOut& o) {
  if (o.dt != DType::F16) return;
  if (o.to_half) return o.to_half(o.p, static_cast<uint16_t*>(o.raw), o.n);
  for (int64_t k = 0; k < o.n; ++k) static_cast<uint16_t*>(o.raw)[k] = floatToHalf(o.p[k]);
}

}  // namespace detail
}  // namespace crt
