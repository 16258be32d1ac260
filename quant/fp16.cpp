// fp16.cpp — FP16 mixed-precision conversion (the float16 converter of onnxconverter-common, on our IR).
// Changes: float32 weights/activations -> float16 outside the block list; Casts where precisions meet.
// Keeps: topology otherwise, names, quantized weights (dequantized in float32, then cast).
#include "quant/fp16.h"

#include "runtime/op_table.h"

#include <set>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"

namespace compress {

std::vector<std::string> defaultFp16BlockOps() {
  std::vector<std::string> ops;
  for (const crt::OpInfo* p = crt::opTableBegin(); p != crt::opTableEnd(); ++p)
    if (p->domain.empty() && !p->has(crt::op_trait::Fp16) && !p->has(crt::op_trait::Logic)) ops.emplace_back(p->name);
  return ops;
}

nlohmann::json convertToFp16(Graph& g, const Fp16Options& opts) {
  std::set<std::string> block(opts.block_ops.begin(), opts.block_ops.end());
  block.insert("DequantizeLinear");
  auto eligible = [&](const Node& n) { return n.domain.empty() && !block.count(n.op); };
  auto isFloat = [](DType d) { return d == DType::Float32 || d == DType::Float16; };
  std::map<std::string, DType> dt;
  for (const auto& [v, info] : g.values) dt[v] = info.dtype;

  // Initializers go to fp16 when every reader computes in fp16 (a Cast reads any float type).
  std::set<std::string> to_half;
  for (const auto& [name, t] : g.initializers) {
    if (t.scalar_type() != at::kFloat) continue;
    bool all = true;
    for (int ci : g.consumers(name)) all = all && eligible(g.nodes[ci]);
    if (all && !g.consumers(name).empty()) to_half.insert(name);
  }
  int64_t clamped = 0, converted = 0, converted_bytes = 0;
  for (const auto& name : to_half) {
    at::Tensor& t = g.initializers.at(name);
    at::Tensor finite_big = at::isfinite(t) & (t.abs() > 65504.0);
    clamped += finite_big.sum().item<int64_t>();
    t = at::where(finite_big, t.sign() * 65504.0, t).to(at::kHalf);
    dt[name] = DType::Float16;
    g.values[name].dtype = DType::Float16;
    ++converted;
    converted_bytes += t.numel() * 2;
  }
  if (!opts.keep_io_types)
    for (const auto& i : g.inputs)
      if (dt[i] == DType::Float32) dt[i] = g.values[i].dtype = DType::Float16;

  std::vector<Node> out;
  std::map<std::pair<std::string, DType>, std::string> casts;  // (value, target) -> cast output
  int inserted = 0, retargeted = 0;
  auto castOf = [&](const std::string& v, DType to, const std::string& source) {
    auto key = std::make_pair(v, to);
    auto it = casts.find(key);
    if (it != casts.end()) return it->second;
    std::string name = g.freshName(v + (to == DType::Float16 ? ".fp16" : ".fp32"));
    Node c{"Cast", "", g.freshName("cast." + name), {v}, {name}, {{"to", static_cast<int64_t>(to)}}, source};
    g.values[name] = ValueInfo{to, g.values[v].shape};
    dt[name] = to;
    out.push_back(c);
    ++inserted;
    return casts[key] = name;
  };
  for (Node n : g.nodes) {
    bool half = eligible(n);
    DType want = half ? DType::Float16 : DType::Float32;
    if (n.op == "Cast") {
      if (half && n.attrInt("to", 0) == static_cast<int64_t>(DType::Float32)) {
        n.attrs["to"] = static_cast<int64_t>(DType::Float16);
        ++retargeted;
      }
    } else {
      for (auto& i : n.inputs)
        if (!i.empty() && isFloat(dt[i]) && dt[i] != want) i = castOf(i, want, n.source);
    }
    for (const auto& o : n.outputs) {
      if (n.op == "Cast") dt[o] = static_cast<DType>(n.attrInt("to", 1));
      else if (isFloat(dt[o])) dt[o] = want;
      g.values[o].dtype = dt[o];
    }
    out.push_back(std::move(n));
  }
  // Graph outputs: float32 at the boundary when keep_io_types.
  for (auto& o : g.outputs) {
    if (!opts.keep_io_types || dt[o] != DType::Float16) continue;
    std::string inner = g.freshName(o + ".fp16");
    for (auto& n : out) {
      for (auto& x : n.outputs) if (x == o) x = inner;
      for (auto& x : n.inputs) if (x == o) x = inner;
    }
    g.values[inner] = ValueInfo{DType::Float16, g.values[o].shape};
    out.push_back(Node{"Cast", "", g.freshName("cast." + o), {inner}, {o}, {{"to", static_cast<int64_t>(DType::Float32)}}, ""});
    g.values[o].dtype = DType::Float32;
    ++inserted;
  }
  g.nodes = std::move(out);
  return {{"initializers_converted", converted}, {"bytes_fp16", converted_bytes}, {"casts_inserted", inserted},
          {"casts_retargeted", retargeted}, {"clamped_values", clamped}, {"block_ops", opts.block_ops},
          {"keep_io_types", opts.keep_io_types}};
}

namespace {

class Fp16Pass : public Pass {
 public:
  const char* name() const override { return "fp16"; }
  const char* description() const override {
    return "FP16 mixed precision: weights and activations in float16, numerically sensitive ops kept in float32.";
  }
  void configure(OptionReader& r) override {
    opts_.block_ops = r.strings("block_ops", Fp16Options{}.block_ops, "ops kept in float32 (ONNX op names)");
    opts_.keep_io_types = r.boolean("keep_io_types", true, "float32 model inputs/outputs with Casts");
    for (const auto& op : opts_.block_ops)
      if (!isSupportedOp(op)) r.error("block_ops", "'" + op + "' is not an op of the IR (see `compress passes --ops`)");
  }
  PassResult run(Graph& g, PassContext&) override {
    nlohmann::json s = convertToFp16(g, opts_);
    char buf[200];
    std::snprintf(buf, sizeof buf, "%lld tensors to float16, %lld Casts inserted, %lld values clamped to ±65504",
                  static_cast<long long>(s["initializers_converted"].get<int64_t>()),
                  static_cast<long long>(s["casts_inserted"].get<int64_t>()),
                  static_cast<long long>(s["clamped_values"].get<int64_t>()));
    return {buf, s};
  }

 private:
  Fp16Options opts_;
};

}  // namespace

std::unique_ptr<Pass> makeFp16Pass() { return std::make_unique<Fp16Pass>(); }

}  // namespace compress
