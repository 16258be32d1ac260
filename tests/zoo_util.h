// zoo_util.h — the fixture zoo (scripts/fixture_zoo.py) as tests read it: each family's TorchScript and
// ONNX file, its input specs and its recorded cases (inputs and torch's output).
#pragma once

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/npy.h"
#include "test_util.h"

namespace zooutil {

using Feeds = std::map<std::string, at::Tensor>;

struct ZooCase {
  Feeds inputs;
  at::Tensor output;
};

struct ZooModel {
  std::string name, task;
  std::vector<compress::InputSpec> specs;
  std::vector<ZooCase> cases, onnx_cases;
};

inline std::string zooDir() { return testutil::fixture("zoo"); }

inline at::Tensor tensorOf(const compress::NpyArray& a) {
  at::ScalarType st = a.descr == "<i8" ? at::kLong : a.descr == "<f4" ? at::kFloat : a.descr == "|b1" ? at::kBool : at::kInt;
  at::Tensor t = at::empty(a.shape, st);
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

inline ZooCase readCase(const nlohmann::json& c) {
  ZooCase z;
  for (const auto& [name, file] : c["inputs"].items())
    z.inputs[name] = tensorOf(compress::readNpy(zooDir() + "/" + file.get<std::string>()));
  z.output = tensorOf(compress::readNpy(zooDir() + "/" + c["output"].get<std::string>()));
  return z;
}

/// Every family of zoo.json (Error when the fixtures were not generated).
inline std::vector<ZooModel> zoo() {
  using compress::Dim;
  std::ifstream f(zooDir() + "/zoo.json");
  if (!f.good()) throw std::runtime_error("no " + zooDir() + "/zoo.json: the fixtures were not generated");
  nlohmann::json m = nlohmann::json::parse(f);
  std::vector<ZooModel> out;
  for (const auto& e : m) {
    ZooModel z{e["name"], e["task"], {}, {}, {}};
    for (const auto& i : e["inputs"]) {
      compress::InputSpec s{i["name"], i["dtype"] == "int64" ? compress::DType::Int64 : compress::DType::Float32, {}};
      for (const auto& d : i["shape"]) s.shape.push_back(d.is_string() ? Dim::sym(d.get<std::string>()) : Dim::fixed(d.get<int64_t>()));
      z.specs.push_back(s);
    }
    for (const auto& c : e["cases"]) z.cases.push_back(readCase(c));
    for (const auto& c : e["onnx_cases"]) z.onnx_cases.push_back(readCase(c));
    out.push_back(std::move(z));
  }
  return out;
}

/// max |a - b| relative to max |ref| (the acceptance bound is 1e-4).
inline double relDiff(const at::Tensor& a, const at::Tensor& ref) {
  if (a.sizes() != ref.sizes()) return 1e30;
  const double scale = std::max(ref.abs().max().item<double>(), 1e-6);
  return (a.to(at::kFloat) - ref.to(at::kFloat)).abs().max().item<double>() / scale;
}

inline compress::Graph importZoo(const ZooModel& z) {
  compress::ImportOptions io;
  io.inputs = z.specs;
  return compress::importTorchScript(zooDir() + "/" + z.name + ".pt", io);
}

/// One family of the zoo by name (Error when absent).
inline ZooModel zooModel(const std::string& name) {
  for (auto& z : zoo())
    if (z.name == name) return z;
  throw std::runtime_error("no zoo family " + name);
}

/// Smooth images (bilinear upsampling of coarse noise): neighbouring pixels correlate, as in real images.
inline at::Tensor smoothImages(int64_t n, int64_t size, uint64_t seed = 7) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor coarse = at::randn({n, 3, size / 4, size / 4}, gen);
  return at::upsample_bilinear2d(coarse, {size, size}, false);
}

/// The graph's first output on every recorded case of `z` (the executor's reference before a change).
inline std::vector<at::Tensor> outputsOf(const compress::Graph& g, const ZooModel& z) {
  compress::Executor ex(g);
  std::vector<at::Tensor> out;
  for (const auto& c : z.cases) out.push_back(ex.run(c.inputs)[0]);
  return out;
}

}  // namespace zooutil
