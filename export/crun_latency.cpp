#include "export/crun_latency.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "compress/error.h"
#include "runtime/crt.h"

namespace compress {

CrunLatency crunLatency(const std::string& model, const std::map<std::string, at::Tensor>& inputs, int runs, int threads) {
  crt::SessionOptions so;
  so.threads = threads;
  so.kv_capacity = -1;  // a cached export keeps its cache in the session: each run is a prefill from an empty one
  so.kv_if_present = true;
  auto s = crt::Session::create(model, so);
  if (!s.ok()) fail(ErrorCategory::Data, model + ": crun cannot load it: " + s.status().message);
  std::vector<at::Tensor> keep;
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  for (const auto& [name, t] : inputs) {
    keep.push_back(t.contiguous());
    const bool ints = t.scalar_type() == at::kLong;
    if (!ints) keep.back() = keep.back().to(at::kFloat);
    feeds.push_back({name, crt::TensorView{ints ? crt::DType::I64 : crt::DType::F32, t.sizes().vec(), keep.back().data_ptr()}});
  }
  std::vector<crt::TensorView> outs;
  std::vector<double> ms;
  for (int i = 0; i <= std::max(runs, 1); ++i) {
    if (s->hasKvCache()) s->kvTruncate(0);
    const auto t0 = std::chrono::steady_clock::now();
    crt::Status st = s->run(feeds, outs);
    if (!st.ok()) fail(ErrorCategory::Data, model + ": crun cannot run it: " + st.message);
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  CrunLatency l;
  l.median_ms = ms[ms.size() / 2];
  l.p90_ms = ms[std::min(ms.size() - 1, ms.size() * 9 / 10)];
  l.sparse_matmuls = s->info().sparse_matmuls;
  l.weight_bytes = s->info().weight_bytes;
  l.isa = s->info().isa;
  return l;
}

}  // namespace compress
