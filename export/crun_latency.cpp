#include "export/crun_latency.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "compress/error.h"
#include "runtime/crt.h"

namespace compress {

namespace {

/// A file loaded in crun, and its run times (ms).
struct Timed {
  std::string model;
  crt::Session s;
  std::vector<double> ms;
};

crt::Session load(const std::string& model, int threads) {
  crt::SessionOptions so;
  so.threads = threads;
  so.kv_capacity = -1;  // a cached export keeps its cache in the session: each run is a prefill from an empty one
  so.kv_if_present = true;
  auto s = crt::Session::create(model, so);
  if (!s.ok()) fail(ErrorCategory::Data, model + ": crun cannot load it: " + s.status().message);
  return std::move(*s);
}

/// One run of t (ms).
double runOnce(Timed& t, const std::vector<std::pair<std::string, crt::TensorView>>& feeds) {
  if (t.s.hasKvCache()) t.s.kvTruncate(0);
  std::vector<crt::TensorView> outs;
  const auto t0 = std::chrono::steady_clock::now();
  crt::Status st = t.s.run(feeds, outs);
  if (!st.ok()) fail(ErrorCategory::Data, t.model + ": crun cannot run it: " + st.message);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<CrunLatency> crunLatencies(const std::vector<std::string>& models, const std::map<std::string, at::Tensor>& inputs,
                                       int runs, int threads) {
  std::vector<at::Tensor> keep;
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  for (const auto& [name, t] : inputs) {
    keep.push_back(t.contiguous());
    const bool ints = t.scalar_type() == at::kLong;
    if (!ints) keep.back() = keep.back().to(at::kFloat);
    feeds.push_back({name, crt::TensorView{ints ? crt::DType::I64 : crt::DType::F32, t.sizes().vec(), keep.back().data_ptr()}});
  }
  std::vector<Timed> timed;
  for (const std::string& m : models) timed.push_back(Timed{m, load(m, threads), {}});
  for (Timed& t : timed) runOnce(t, feeds);  // warm-up
  for (int i = 0; i < std::max(runs, 1); ++i)
    for (Timed& t : timed) t.ms.push_back(runOnce(t, feeds));
  std::vector<CrunLatency> out;
  for (Timed& t : timed) {
    std::sort(t.ms.begin(), t.ms.end());
    CrunLatency l;
    l.median_ms = t.ms[t.ms.size() / 2];
    l.p90_ms = t.ms[std::min(t.ms.size() - 1, t.ms.size() * 9 / 10)];
    l.sparse_matmuls = t.s.info().sparse_matmuls;
    l.weight_bytes = t.s.info().weight_bytes;
    l.isa = t.s.info().isa;
    out.push_back(l);
  }
  return out;
}

}  // namespace compress
