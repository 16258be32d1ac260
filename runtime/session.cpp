// session.cpp — the Session API: create (load through loader.cpp, resolve limits) and run with per-input-shape
// memory plans.
#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/fuse.h"
#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/int8_acts.h"
#include "runtime/kv_cache.h"
#include "runtime/loader.h"
#include "runtime/matmul.h"
#include "runtime/sparse.h"
#include "runtime/thread_pool.h"

namespace crt {
namespace detail {

// ------------------------------------------------------------------------------------------- planning
/// One arena per side: the host's and, with a device backend, the device's (backend.h).
struct Plan {
  std::vector<int64_t> key;  // concatenated input shapes
  AlignedBytes arena;
  DeviceBytes device_arena;
  std::vector<size_t> offset, size;  // per dynamic allocation, in request order
  std::vector<char> on_device;       // per dynamic allocation: which arena
  std::vector<int> node, value;      // per dynamic allocation: the node that asked for it, the value it holds (-1: scratch)
  std::vector<char> spare;           // per dynamic allocation: space for an output the recording aliased (Recorder)
  std::vector<std::shared_ptr<AlignedBytes>> statics;
  std::vector<std::shared_ptr<DeviceBytes>> device_statics;
  std::vector<std::pair<int, Buf>> static_vals;
  uint64_t last_used = 0;
};

struct ReplanNeeded {};

/// First run for a shape set: plain heap (or device) buffers, recording sizes, sides and lifetimes.
/// With `spares` (an in-session KV cache, whose plan serves shorter runs than the recorded one), every output an op
/// aliases also gets space of its own in the plan: a view that aliases at the recorded length (a Slice taking a whole
/// table) may copy at a shorter one, and the replay then puts it there.
class Recorder : public Allocator {
 public:
  Recorder(const Graph& g, Plan& plan, bool spares) : g_(g), plan_(plan), holders_(g.values.size()), spares_(spares) {}
  void* output(int value, size_t bytes, int node, bool is_static) override {
    const bool dev = g_.values[value].on_device;
    if (is_static) return keepStatic(bytes, dev);
    holders_[value] = {add(bytes, node, node, dev, value)};
    ends_.back() = std::max(node, g_.values[value].last_use);
    return last_;
  }
  void* scratch(size_t bytes, int node, bool is_static) override {
    const bool dev = g_.nodes[node].on_device;
    if (is_static) {  // static nodes do not run on replay: their scratch is not part of the plan
      if (dev) return static_scratch_dev_.emplace_back(*g_.device, bytes).data();
      return static_scratch_.emplace_back(std::max<size_t>(bytes, 1)).data();
    }
    add(bytes, node, node, dev, -1);
    return last_;
  }
  void alias(int value, int src, size_t bytes, int node, bool is_static) override {
    holders_[value] = holders_[src];
    for (int h : holders_[value]) ends_[h] = std::max(ends_[h], g_.values[value].last_use);
    if (spares_ && !is_static) {
      holders_[value].push_back(add(bytes, node, std::max(node, g_.values[value].last_use), g_.values[value].on_device, value));
      spare_.back() = 1;
    }
  }
  /// Lays each side's allocations out in its arena: greedy by size, reusing space of allocations whose
  /// lifetimes do not overlap.
  void finish() {
    plan_.offset.assign(sizes_.size(), 0);
    plan_.size = sizes_;
    plan_.on_device = dev_;
    plan_.node = starts_;
    plan_.spare = spare_;
    plan_.value = values_;
    plan_.arena.resize(std::max<size_t>(layout(false), 64));
    if (std::find(dev_.begin(), dev_.end(), 1) != dev_.end()) plan_.device_arena = DeviceBytes(*g_.device, layout(true));
  }
  std::vector<AlignedBytes> takeTemp() { return std::move(temp_); }

 private:
  static size_t round(size_t b) { return (std::max<size_t>(b, 1) + 63) / 64 * 64; }
  void* keepStatic(size_t bytes, bool dev) {
    if (dev) {
      plan_.device_statics.push_back(std::make_shared<DeviceBytes>(*g_.device, bytes));
      return plan_.device_statics.back()->data();
    }
    plan_.statics.push_back(std::make_shared<AlignedBytes>(std::max<size_t>(bytes, 1)));
    return plan_.statics.back()->data();
  }
  int add(size_t bytes, int start, int end, bool dev, int value) {
    last_ = dev ? temp_dev_.emplace_back(*g_.device, bytes).data() : temp_.emplace_back(std::max<size_t>(bytes, 1)).data();
    sizes_.push_back(bytes);
    starts_.push_back(start);
    ends_.push_back(end);
    dev_.push_back(dev);
    spare_.push_back(0);
    values_.push_back(value);
    return static_cast<int>(sizes_.size()) - 1;
  }
  /// Places the allocations of one side; returns the arena size.
  size_t layout(bool dev) {
    std::vector<size_t> order;
    for (size_t i = 0; i < sizes_.size(); ++i)
      if (dev_[i] == dev) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes_[a] != sizes_[b] ? sizes_[a] > sizes_[b] : a < b; });
    std::vector<size_t> placed;
    size_t total = 0;
    for (size_t i : order) {
      std::vector<std::pair<size_t, size_t>> busy;
      for (size_t j : placed)
        if (starts_[j] <= ends_[i] && starts_[i] <= ends_[j]) busy.push_back({plan_.offset[j], plan_.offset[j] + round(sizes_[j])});
      std::sort(busy.begin(), busy.end());
      size_t off = 0;
      for (const auto& [b, e] : busy) {
        if (off + round(sizes_[i]) <= b) break;
        off = std::max(off, e);
      }
      plan_.offset[i] = off;
      total = std::max(total, off + round(sizes_[i]));
      placed.push_back(i);
    }
    return total;
  }
  const Graph& g_;
  Plan& plan_;
  // per value: the allocations its bytes may live in on a replay (its own; or, aliased, those of the value it aliases
  // and its own spare), each kept alive until the value's last use
  std::vector<std::vector<int>> holders_;
  std::vector<AlignedBytes> temp_, static_scratch_;
  std::vector<DeviceBytes> temp_dev_, static_scratch_dev_;  // (device buffers never hold graph outputs)
  std::vector<size_t> sizes_;
  std::vector<int> starts_, ends_, values_;
  std::vector<char> dev_, spare_;
  bool spares_ = false;
  void* last_ = nullptr;
};

/// Later runs: the same requests from the same nodes in the same order, served from the arenas.
/// With `up_to` (an in-session KV cache: sizes grow with the cached length), a request may be smaller
/// than the recorded one: a plan recorded at the full capacity serves every shorter step. An output the
/// recording aliased takes its spare space where this run copies it, and skips it where this run aliases too; an
/// output the recording copied cannot alias now (the plan's lifetimes would not hold): that run is recorded anew.
class Replayer : public Allocator {
 public:
  Replayer(const Graph& g, const Plan& p, bool up_to) : g_(g), p_(p), up_to_(up_to) {}
  void* output(int value, size_t bytes, int node, bool) override { return next(bytes, g_.values[value].on_device, node); }
  void* scratch(size_t bytes, int node, bool) override { return next(bytes, g_.nodes[node].on_device, node); }
  void alias(int value, int, size_t, int, bool is_static) override {
    if (is_static || i_ >= p_.size.size() || p_.value[i_] != value) return;
    if (!p_.spare[i_]) throw ReplanNeeded{};
    ++i_;
  }

 private:
  void* next(size_t bytes, bool dev, int node) {
    if (i_ >= p_.size.size() || p_.node[i_] != node || (up_to_ ? p_.size[i_] < bytes : p_.size[i_] != bytes) || p_.on_device[i_] != dev)
      throw ReplanNeeded{};
    void* base = dev ? p_.device_arena.data() : p_.arena.data();
    return static_cast<char*>(base) + p_.offset[i_++];
  }
  const Graph& g_;
  const Plan& p_;
  bool up_to_;
  size_t i_ = 0;
};

}  // namespace detail

// ------------------------------------------------------------------------------------------- Session
struct Session::Impl {
  detail::Graph g;
  SessionOptions opts;
  SessionInfo info;
  std::unique_ptr<detail::ThreadPool> pool;
  const detail::Kernels* k = nullptr;
  std::vector<detail::Buf> vals;
  std::vector<std::unique_ptr<detail::Plan>> plans;
  std::vector<detail::AlignedBytes> last_temp;  // buffers of the last recording run (its outputs point here)
  uint64_t tick = 0;
  std::vector<double> node_ms;
  std::vector<int64_t> node_calls;
  std::atomic<bool> stop_asked{false};  // Session::stop()

  detail::Plan* findPlan(size_t keyLen);
  bool replay(detail::Plan& plan, detail::RunGuard& guard);  // false: the plan no longer fits (dropped; record instead)
  void record(detail::RunGuard& guard);
  void placeOnDevice();  // assigns nodes to the device backend, if any (backend.h), and records what it took

  void execute(detail::Allocator& alloc, bool skip_static, detail::RunGuard& guard) {
    detail::RunEnv env{&g, vals.data(), &alloc, pool.get(), k, 0, g.constant_bytes};
    if (opts.profile && node_ms.empty()) node_ms.assign(g.nodes.size(), 0), node_calls.assign(g.nodes.size(), 0);
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const detail::Node& n = g.nodes[i];
      if (skip_static && n.is_static) continue;
      guard.check(n);
      env.node_index = static_cast<int>(i);
      detail::OpCtx c{env, n};
      if (!opts.profile) {
        n.fn(c);
        continue;
      }
      const auto t0 = std::chrono::steady_clock::now();
      n.fn(c);
      node_ms[i] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ++node_calls[i];
    }
  }
};

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;
Session::~Session() = default;

const std::vector<IoInfo>& Session::inputs() const { return impl_->g.input_info; }
const std::vector<IoInfo>& Session::outputs() const { return impl_->g.output_info; }
const SessionInfo& Session::info() const { return impl_->info; }

std::vector<OpProfile> Session::profile() const {
  std::map<std::string, OpProfile> by;
  for (size_t i = 0; i < impl_->node_ms.size(); ++i) {
    const detail::Node& n = impl_->g.nodes[i];
    std::string key = (n.domain.empty() ? "" : n.domain + ".") + n.op;
    if (n.packed) {
      static const char* const kKindNames[] = {" (packed f32",       " (packed f16",       " (packed q8",
                                               " (packed q4",        " (packed q8 panels", " (packed q4 panels",
                                               " (packed f16 panels"};
      const char* form = !n.packed->sparse ? "" : n.packed->sparse->pairs ? " 2:4 pairs" : " sparse";
      key += std::string(kKindNames[n.packed->kind]) + form +
             (n.packed->int8 ? std::string(", int8 activations ") + impl_->k->i8_isa : std::string()) + ")";
    }
    OpProfile& p = by[key];
    p.op = key;
    p.calls += impl_->node_calls[i];
    p.ms += impl_->node_ms[i];
  }
  std::vector<OpProfile> v;
  for (auto& [k, p] : by) v.push_back(p);
  std::sort(v.begin(), v.end(), [](const OpProfile& a, const OpProfile& b) { return a.ms > b.ms; });
  return v;
}

namespace {

int64_t physicalMemory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : int64_t{16} << 30;
}

/// The options' limits with their defaults filled in.
detail::Limits resolveLimits(const SessionOptions& o) {
  detail::Limits l;
  l.max_total = o.max_total_bytes > 0 ? o.max_total_bytes : physicalMemory();
  l.max_tensor = o.max_tensor_bytes > 0 ? o.max_tensor_bytes : l.max_total / 2;
  l.max_run_ms = o.max_run_ms;
  return l;
}

}  // namespace

Result<Session> Session::create(const std::string& path, const SessionOptions& options) {
  return make(options, path, [&](Impl& m) {
    return detail::loadGraph(path, resolveLimits(options), *m.pool, *m.k, m.info);
  });
}

Result<Session> Session::createFromMemory(const std::string& bytes, const SessionOptions& options) {
  return make(options, "the in-memory model", [&](Impl& m) {
    return detail::loadGraphBytes(bytes, "the in-memory model", "", resolveLimits(options), *m.pool, *m.k, m.info);
  });
}

template <typename Load>
Result<Session> Session::make(const SessionOptions& options, const std::string& name, Load&& load) {
  try {
    if (options.threads < 0) return Status{StatusCode::InvalidArgument, "threads must be >= 0 (0 = all cores)"};
    if (options.max_plans < 1) return Status{StatusCode::InvalidArgument, "max_plans must be >= 1"};
    if (options.max_tensor_bytes < 0 || options.max_total_bytes < 0)
      return Status{StatusCode::InvalidArgument, "max_tensor_bytes and max_total_bytes must be >= 0 (0 = default)"};
    if (options.max_run_ms < 0) return Status{StatusCode::InvalidArgument, "max_run_ms must be >= 0 (0 = no limit)"};
    auto impl = std::make_unique<Impl>();
    impl->opts = options;
    int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
    impl->pool = std::make_unique<detail::ThreadPool>(std::max(threads, 1));
    impl->k = &detail::kernelsFor(options.use_simd);
    impl->info.isa = impl->k->isa;
    impl->info.threads = impl->pool->size();
    impl->g = load(*impl);
    if (options.device_index < 0) return Status{StatusCode::InvalidArgument, "device_index must be >= 0"};
    impl->g.device = detail::makeBackend(options.device, options.device_index);
    if (detail::fuseQuantizedInputs(impl->g, options.int8_activations, *impl->k) > 0) {
      detail::pruneUnused(impl->g);  // the QuantizeLinear -> DequantizeLinear pairs now inside their MatMuls
      detail::prepareRuns(impl->g);
    }
    if (options.fuse && (impl->info.fused_nodes = detail::fuseChains(impl->g, !impl->g.device)) > 0) {
      detail::pruneUnused(impl->g);
      detail::prepareRuns(impl->g);
    }
    // a GPU computes from the dense packed weights: no CPU-only forms for weights it may take
    const bool dense = impl->g.device && impl->g.device->denseWeights();
    const Int8Activations int8 = dense ? Int8Activations::Off : options.int8_activations;
    impl->info.sparse_matmuls = detail::chooseSparseForms(impl->g, dense ? SparseMode::Off : options.sparse, *impl->k, int8, -1,
                                                              impl->pool.get());
    for (const detail::Node& n : impl->g.nodes)
      impl->info.sparse_pairs += n.packed && n.packed->sparse && n.packed->sparse->pairs;
    impl->info.int8_matmuls = detail::chooseInt8Activations(impl->g, int8, *impl->k);
    if (impl->info.int8_matmuls > 0) impl->info.int8_isa = impl->k->i8_isa;
    impl->info.panel_matmuls = dense ? 0 : detail::choosePanelForms(impl->g, *impl->k, impl->pool.get());  // those left on exact kernels
    if (impl->info.sparse_matmuls > 0 || impl->info.int8_matmuls > 0 || impl->info.panel_matmuls > 0) {  // bytes per step
      impl->info.weight_bytes = 0;
      for (const detail::Node& n : impl->g.nodes)
        if (n.packed) impl->info.weight_bytes += n.packed->bytes();
    }
    if (options.kv_capacity < -1)
      return Status{StatusCode::InvalidArgument, "kv_capacity must be >= -1 (0: no in-session cache, -1: the model's context)"};
    if (options.kv_capacity != 0 && (!options.kv_if_present || detail::hasKvInputs(impl->g)))
      impl->info.fused_nodes += detail::enableKvCache(
          impl->g, options.kv_capacity > 0 ? options.kv_capacity : detail::modelContext(impl->g.metadata, 2048), options.kv_dtype);
    if (options.last_position_logits) detail::lastPositionLogits(impl->g);
    impl->placeOnDevice();
    impl->vals.resize(impl->g.values.size());
    for (size_t i = 0; i < impl->g.values.size(); ++i)
      if (impl->g.values[i].is_const) impl->vals[i] = impl->g.values[i].constant;
    return Session(std::move(impl));
  } catch (const detail::Failure& e) {
    return Status{e.code, e.what()};
  } catch (const std::bad_alloc&) {
    return Status{StatusCode::ModelError, name + ": out of memory while loading (lower SessionOptions::max_total_bytes to fail earlier)"};
  } catch (const std::exception& e) {
    return Status{StatusCode::Internal, name + ": " + e.what()};
  }
}

void Session::Impl::placeOnDevice() {
  if (!g.device) return;
  info.device = g.device->name();
  info.device_nodes = detail::placeNodes(g);
  std::map<std::string, int> host;  // what runs on the host every run (copies and static nodes aside)
  for (const detail::Node& n : g.nodes) {
    const bool copy = n.fn == detail::opCopyToDevice || n.fn == detail::opCopyToHost;
    info.device_copies += copy;
    if (copy && !n.is_static) info.copied_values += (info.copied_values.empty() ? "" : ", ") + n.name;
    if (!copy && !n.on_device && !n.is_static) ++host[n.domain.empty() ? n.op : n.domain + "." + n.op];
  }
  for (const auto& [op, count] : host) info.host_ops += (info.host_ops.empty() ? "" : ", ") + op + " " + std::to_string(count);
  detail::prepareRuns(g);
}

namespace {

/// Binds the caller's tensors to the graph inputs after checking names, types, shapes and sizes. Returns the
/// length of the plan key.
Status bindInputs(const detail::Graph& g, std::vector<detail::Buf>& vals,
                  const std::vector<std::pair<std::string, TensorView>>& inputs, size_t& keyLen) {
  if (inputs.size() != g.inputs.size())
    return Status{StatusCode::InvalidArgument, "the model takes " + std::to_string(g.inputs.size()) + " input(s), got " + std::to_string(inputs.size())};
  keyLen = 0;
  for (size_t i = 0; i < g.inputs.size(); ++i) {
    const IoInfo& io = g.input_info[i];
    const TensorView* tv = nullptr;
    for (const auto& [name, view] : inputs)
      if (name == io.name) tv = &view;
    if (!tv) return Status{StatusCode::InvalidArgument, "missing input '" + io.name + "'"};
    if (tv->dtype != io.dtype)
      return Status{StatusCode::InvalidArgument, "input '" + io.name + "' must be " + dtypeName(io.dtype) + ", got " + dtypeName(tv->dtype)};
    if (!io.shape.empty() || tv->shape.empty()) {
      if (tv->shape.size() != io.shape.size())
        return Status{StatusCode::InvalidArgument, "input '" + io.name + "' must have rank " + std::to_string(io.shape.size()) + ", got " + std::to_string(tv->shape.size())};
      for (size_t d = 0; d < io.shape.size(); ++d)
        if (io.shape[d] >= 0 && tv->shape[d] != io.shape[d])
          return Status{StatusCode::InvalidArgument, "input '" + io.name + "' dim " + std::to_string(d) + " must be " + std::to_string(io.shape[d]) + ", got " + std::to_string(tv->shape[d])};
    }
    if (tv->shape.size() > static_cast<size_t>(detail::kMaxRank))
      return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has rank above 8"};
    for (int64_t d : tv->shape)
      if (d < 0) return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has a negative dim"};
    const int64_t numel = tv->numel();
    int64_t bytes = 0;
    if (numel < 0 || !checkedBytes(numel, static_cast<int64_t>(dtypeSize(tv->dtype)), &bytes))
      return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has more than 2^48 elements"};
    if (bytes > g.limits.max_tensor)
      return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has " + std::to_string(bytes) + " bytes, above the " +
                                                     std::to_string(g.limits.max_tensor) + "-byte limit for one tensor (SessionOptions::max_tensor_bytes)"};
    if (numel > 0 && !tv->data) return Status{StatusCode::InvalidArgument, "input '" + io.name + "' has no data"};
    detail::Buf& b = vals[g.inputs[i]];
    b.dt = tv->dtype;
    b.shape = detail::Shape();
    for (int64_t d : tv->shape) b.shape.push(d);
    b.data = const_cast<void*>(tv->data);
    if (!g.values[g.inputs[i]].per_run_shape) keyLen += tv->shape.size() + 1;  // masks over the cache: not in the key
  }
  return Status::Ok();
}

/// With an in-session cache: the run's token count, checked against the batch and the room left.
Status checkKvRun(const detail::Graph& g, const std::vector<detail::Buf>& vals, int64_t& tokens) {
  const detail::Shape& s = vals[g.inputs[0]].shape;
  if (s.rank != 2 || s[0] != 1)
    return Status{StatusCode::InvalidArgument, "with the in-session KV cache the input '" + g.input_info[0].name +
                                                   "' is [1, new tokens] (one sequence), got " + s.str()};
  tokens = s[1];
  if (tokens < 1) return Status{StatusCode::InvalidArgument, "a run with the KV cache needs at least one new token"};
  const detail::KvState& kv = *g.kv;
  if (kv.length + tokens > kv.capacity)
    return Status{StatusCode::InvalidArgument, std::to_string(kv.length) + " cached + " + std::to_string(tokens) +
                                                   " new tokens exceed the KV cache's " + std::to_string(kv.capacity) +
                                                   " (the context: SessionOptions::kv_capacity, crun --ctx)"};
  for (const auto& t : kv.total_inputs) {
    const detail::Shape& m = vals[t.value].shape;
    if (m.rank != 2 || m[0] != 1 || m[1] != kv.length + tokens)
      return Status{StatusCode::InvalidArgument, "input '" + g.values[t.value].name + "' covers the cached and the new tokens: [1, " +
                                                     std::to_string(kv.length + tokens) + "], got " + m.str()};
  }
  return Status::Ok();
}

}  // namespace

detail::Plan* Session::Impl::findPlan(size_t keyLen) {
  for (auto& p : plans) {
    if (p->key.size() != keyLen) continue;
    size_t j = 0;
    bool same = true;
    for (int in : g.inputs) {
      if (g.values[in].per_run_shape) continue;
      const detail::Shape& s = vals[in].shape;
      same &= p->key[j++] == s.rank;
      for (int d = 0; d < s.rank && same; ++d) same &= p->key[j++] == s[d];
      if (!same) break;
    }
    if (same) return p.get();
  }
  return nullptr;
}

bool Session::Impl::replay(detail::Plan& plan, detail::RunGuard& guard) {
  plan.last_used = ++tick;
  for (const auto& [v, b] : plan.static_vals) vals[v] = b;
  try {
    detail::Replayer r(g, plan, g.kv != nullptr);
    execute(r, true, guard);
    return true;
  } catch (const detail::ReplanNeeded&) {  // data-dependent shapes (or a longer cache than recorded): record again
    for (auto it = plans.begin(); it != plans.end(); ++it)
      if (it->get() == &plan) {
        plans.erase(it);
        break;
      }
    return false;
  }
}

void Session::Impl::record(detail::RunGuard& guard) {
  auto p = std::make_unique<detail::Plan>();
  for (int in : g.inputs) {
    if (g.values[in].per_run_shape) continue;
    const detail::Shape& s = vals[in].shape;
    p->key.push_back(s.rank);
    for (int d = 0; d < s.rank; ++d) p->key.push_back(s[d]);
  }
  last_temp.clear();
  detail::Recorder rec(g, *p, g.kv != nullptr);
  execute(rec, false, guard);
  rec.finish();
  for (size_t v = 0; v < g.values.size(); ++v)
    if (g.values[v].is_static) p->static_vals.push_back({static_cast<int>(v), vals[v]});
  last_temp = rec.takeTemp();
  p->last_used = ++tick;
  if (static_cast<int>(plans.size()) >= opts.max_plans) {
    auto lru = std::min_element(plans.begin(), plans.end(), [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    plans.erase(lru);
  }
  plans.push_back(std::move(p));
}

Status Session::run(const std::vector<std::pair<std::string, TensorView>>& inputs, std::vector<TensorView>& outputs) {
  Impl& m = *impl_;
  detail::Graph& g = m.g;
  try {
    detail::RunGuard guard(g.limits.max_run_ms, &m.stop_asked, "the run");
    size_t keyLen = 0;
    Status st = bindInputs(g, m.vals, inputs, keyLen);
    if (!st.ok()) return st;
    if (g.device) g.device->beginRun();
    int64_t tokens = 0;
    if (g.kv) {
      st = checkKvRun(g, m.vals, tokens);
      if (!st.ok()) return st;
      detail::KvState& kv = *g.kv;
      if (!m.findPlan(keyLen) && tokens == 1 && kv.length + 1 < kv.capacity) {
        // one-token steps: record once at the full capacity (a dry run writing only unused cache rows),
        // so every later step replays the same plan without allocating
        const int64_t len = kv.length;
        std::vector<detail::Buf> masks;
        for (const auto& t : kv.total_inputs) masks.push_back(m.vals[t.value]);
        kv.length = kv.capacity - 1;
        detail::bindKvPast(g, m.vals.data(), kv.length);
        detail::bindKvDryRun(g, m.vals.data());
        try {
          m.record(guard);
        } catch (...) {
          kv.length = len;
          throw;
        }
        kv.length = len;
        for (size_t i = 0; i < masks.size(); ++i) m.vals[kv.total_inputs[i].value] = masks[i];
      }
      detail::bindKvPast(g, m.vals.data(), kv.length);
    }
    detail::Plan* plan = m.findPlan(keyLen);
    if (!plan || !m.replay(*plan, guard)) m.record(guard);
    if (g.kv) g.kv->length += tokens;
    outputs.resize(g.outputs.size());
    for (size_t i = 0; i < g.outputs.size(); ++i) {
      const detail::Buf& b = m.vals[g.outputs[i]];
      outputs[i].dtype = b.dt;
      outputs[i].shape.assign(b.shape.d, b.shape.d + b.shape.rank);
      outputs[i].data = b.data;
    }
    return Status::Ok();
  } catch (const detail::Failure& e) {
    return Status{e.code, e.what()};
  } catch (const std::bad_alloc&) {
    return Status{StatusCode::DataError, "out of memory while running (inputs too large for this machine? lower SessionOptions::max_total_bytes to fail earlier)"};
  } catch (const std::exception& e) {
    return Status{StatusCode::Internal, e.what()};
  }
}

const std::map<std::string, std::string>& Session::metadata() const { return impl_->g.metadata; }
bool Session::hasKvCache() const { return impl_->g.kv != nullptr; }
int64_t Session::kvLength() const { return impl_->g.kv ? impl_->g.kv->length : 0; }
int64_t Session::kvCapacity() const { return impl_->g.kv ? impl_->g.kv->capacity : 0; }
Status Session::kvTruncate(int64_t keep) {
  if (!impl_->g.kv) return Status{StatusCode::InvalidArgument, "the session keeps no KV cache (SessionOptions::kv_capacity)"};
  if (keep < 0 || keep > impl_->g.kv->length)
    return Status{StatusCode::InvalidArgument, "kvTruncate(" + std::to_string(keep) + "): the cache holds " + std::to_string(impl_->g.kv->length) + " tokens"};
  impl_->g.kv->length = keep;
  return Status::Ok();
}

void Session::stop() {
  if (impl_) impl_->stop_asked.store(true);
}

Result<std::vector<Tensor>> Session::run(const std::vector<std::pair<std::string, TensorView>>& inputs) {
  std::vector<TensorView> views;
  Status st = run(inputs, views);
  if (!st.ok()) return st;
  std::vector<Tensor> out;
  for (const TensorView& v : views) {
    Tensor t;
    t.dtype = v.dtype;
    t.shape = v.shape;
    const auto* p = static_cast<const uint8_t*>(v.data);
    t.bytes.assign(p, p + v.bytes());
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace crt
