// crt_run.h — runs an ONNX file in crun from a test (int64/float32 feeds, float outputs). Include after
// <catch2/catch.hpp>: it uses INFO/REQUIRE.
#pragma once

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "runtime/crt.h"

namespace testutil {

/// Every output of one run with these options, as float32; `info` receives the session's load facts.
inline std::vector<at::Tensor> runCrtWith(const std::string& path, const std::map<std::string, at::Tensor>& inputs,
                                          const crt::SessionOptions& so, crt::SessionInfo* info = nullptr) {
  auto s = crt::Session::create(path, so);
  INFO(s.status().message);
  REQUIRE(s.ok());
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  for (const auto& [name, t] : inputs) {
    crt::DType dt = t.scalar_type() == at::kLong ? crt::DType::I64 : crt::DType::F32;
    feeds.push_back({name, crt::TensorView{dt, t.sizes().vec(), t.data_ptr()}});
  }
  if (info) *info = s->info();
  auto out = s->run(feeds);
  INFO(out.status().message);
  REQUIRE(out.ok());
  std::vector<at::Tensor> r;
  for (const auto& o : out.value()) {
    at::Tensor t = at::empty(o.shape, o.dtype == crt::DType::F16 ? at::kHalf : at::kFloat);
    std::memcpy(t.data_ptr(), o.bytes.data(), o.bytes.size());
    r.push_back(t.to(at::kFloat));
  }
  return r;
}

/// Every output of one run, as float32 (threads 0: all hardware threads).
inline std::vector<at::Tensor> runCrt(const std::string& path, const std::map<std::string, at::Tensor>& inputs, int threads = 0,
                                      bool simd = true, crt::Int8Activations int8 = crt::Int8Activations::Model,
                                      int* int8_matmuls = nullptr) {
  crt::SessionOptions so;
  so.threads = threads;
  so.use_simd = simd;
  so.int8_activations = int8;
  crt::SessionInfo info;
  auto r = runCrtWith(path, inputs, so, &info);
  if (int8_matmuls) *int8_matmuls = info.int8_matmuls;
  return r;
}

}  // namespace testutil
