#include "compress/serialize.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "compress/cir_format.h"
#include "compress/error.h"
#include "compress/npy.h"

namespace compress {
namespace {

using json = nlohmann::json;

json attrToJson(const Attribute& a) {
  return std::visit(
      [](const auto& v) -> json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>) return {{"i", v}};
        else if constexpr (std::is_same_v<T, double>) return {{"f", v}};
        else if constexpr (std::is_same_v<T, std::string>) return {{"s", v}};
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return {{"ints", v}};
        else return {{"floats", v}};
      },
      a);
}

Attribute attrFromJson(const json& j) {
  if (j.contains("i")) return j["i"].get<int64_t>();
  if (j.contains("f")) return j["f"].get<double>();
  if (j.contains("s")) return j["s"].get<std::string>();
  if (j.contains("ints")) return j["ints"].get<std::vector<int64_t>>();
  return j["floats"].get<std::vector<double>>();
}

json shapeToJson(const Shape& s) {
  json a = json::array();
  for (const auto& d : s) a.push_back(d.isFixed() ? json(d.value) : json(d.symbol));
  return a;
}

Shape shapeFromJson(const json& a) {
  Shape s;
  for (const auto& d : a) s.push_back(d.is_number() ? Dim::fixed(d.get<int64_t>()) : Dim::sym(d.get<std::string>()));
  return s;
}

}  // namespace

void saveGraph(const Graph& g, const std::string& path) {
  json h;
  h["format"] = "compress-ir";
  h["version"] = 1;
  h["inputs"] = g.inputs;
  h["outputs"] = g.outputs;
  h["parameters"] = std::vector<std::string>(g.parameters.begin(), g.parameters.end());
  h["aliases"] = g.aliases;
  json values = json::object();
  for (const auto& [n, v] : g.values) {
    json jv = {{"dtype", static_cast<int>(v.dtype)}};
    if (v.shape) jv["shape"] = shapeToJson(*v.shape);
    values[n] = jv;
  }
  h["values"] = values;
  json nodes = json::array();
  for (const auto& n : g.nodes) {
    json attrs = json::object();
    for (const auto& [k, a] : n.attrs) attrs[k] = attrToJson(a);
    nodes.push_back({{"op", n.op}, {"domain", n.domain}, {"name", n.name}, {"inputs", n.inputs},
                     {"outputs", n.outputs}, {"attrs", attrs}, {"source", n.source}});
  }
  h["nodes"] = nodes;
  json quant = json::object();
  for (const auto& [w, q] : g.quant)
    quant[w] = {{"bits", q.bits}, {"group_size", q.group_size}, {"symmetric", q.symmetric}, {"method", q.method}};
  h["quant"] = quant;

  std::string data;
  json tensors = json::array();
  auto addTensor = [&](const std::string& name, const std::string& kind, const at::Tensor& t0) {
    at::Tensor t = t0.detach().to(at::kCPU).contiguous();
    data.append((64 - data.size() % 64) % 64, '\0');
    tensors.push_back({{"name", name}, {"kind", kind}, {"dtype", static_cast<int>(dtypeFromScalarType(t.scalar_type()))},
                       {"shape", t.sizes().vec()}, {"offset", data.size()}, {"nbytes", t.nbytes()}});
    data.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  };
  for (const auto& [n, t] : g.initializers) addTensor(n, "initializer", t);
  json sparsity = json::object();
  for (const auto& [w, s] : g.sparsity) {
    addTensor(w, "mask", s.mask.to(at::kBool));
    sparsity[w] = {{"pattern", static_cast<int>(s.pattern)}, {"n", s.n}, {"m", s.m}};
  }
  h["sparsity"] = sparsity;
  h["tensors"] = tensors;
  h["data_bytes"] = data.size();
  h["data_fnv1a64"] = fnv1a64(data.data(), data.size());
  std::string header = h.dump();
  std::string out(kCirMagic, 8);
  uint64_t hl = header.size();
  out.append(reinterpret_cast<const char*>(&hl), 8);
  out += header;
  out += data;
  writeFileAtomic(path, out);
}

Graph loadGraph(const std::string& path) {
  const std::string bytes = readRegularFile(path, "a model.cir file");
  const CirFile f = parseCir(bytes, path);  // every tensor's type, shape and span checked
  auto bad = [&](const std::string& why) {
    fail(ErrorCategory::Model, "'" + path + "' is not a valid compressed model (model.cir): " + why +
                                   ". Re-run the recipe that produced it.");
  };
  const json& h = f.header;
  try {
    Graph g;
    g.inputs = h.at("inputs").get<std::vector<std::string>>();
    g.outputs = h.at("outputs").get<std::vector<std::string>>();
    for (const auto& p : h.at("parameters")) g.parameters.insert(p.get<std::string>());
    g.aliases = h.at("aliases").get<std::map<std::string, std::string>>();
    for (const auto& [n, v] : h.at("values").items()) {
      ValueInfo vi;
      vi.dtype = static_cast<DType>(v.at("dtype").get<int>());
      if (v.contains("shape")) vi.shape = shapeFromJson(v["shape"]);
      g.values[n] = vi;
    }
    for (const auto& jn : h.at("nodes")) {
      Node n;
      n.op = jn.at("op");
      n.domain = jn.at("domain");
      n.name = jn.at("name");
      n.inputs = jn.at("inputs").get<std::vector<std::string>>();
      n.outputs = jn.at("outputs").get<std::vector<std::string>>();
      n.source = jn.at("source");
      for (const auto& [k, a] : jn.at("attrs").items()) n.attrs[k] = attrFromJson(a);
      g.nodes.push_back(std::move(n));
    }
    for (const auto& [w, q] : h.at("quant").items())
      g.quant[w] = QuantInfo{q.at("bits"), q.at("group_size"), q.at("symmetric"), q.at("method")};
    for (const CirTensor& ct : f.tensors) {
      at::Tensor t = at::empty(ct.shape, toScalarType(static_cast<DType>(ct.dtype)));
      std::memcpy(t.data_ptr(), f.data + ct.offset, ct.nbytes);
      if (ct.kind == "mask") {
        const auto& s = h.at("sparsity").at(ct.name);
        g.sparsity[ct.name] = SparsityInfo{t, static_cast<SparsityPattern>(s.at("pattern").get<int>()), s.at("n"), s.at("m")};
      } else {
        g.initializers[ct.name] = t;
      }
    }
    verify(g);
    return g;
  } catch (const json::exception& e) {
    bad(std::string("malformed header (") + e.what() + ")");
  } catch (const Error& e) {
    if (e.category() == ErrorCategory::Internal) bad(e.what());
    throw;
  }
  return Graph();  // unreachable: every branch above returns or throws
}

}  // namespace compress
