// format.cpp — reference quantization (see format.h for the formulas).
#include "quant/format.h"

#include <algorithm>
#include <optional>

#include "compress/error.h"
#include "compress/options.h"

namespace compress {

std::string QuantFormat::name() const {
  std::string n = "int" + std::to_string(bits);
  if (group_size > 0) n += "-g" + std::to_string(group_size);
  if (!symmetric) n += "-asym";
  if (fp16_scales) n += "-s16";
  return n;
}

QuantFormat readFormatOptions(OptionReader& r, const QuantFormat& d) {
  QuantFormat f;
  f.bits = static_cast<int32_t>(r.integer("bits", d.bits, 2, 8, "bits per weight"));
  f.group_size = static_cast<int32_t>(
      r.integer("group_size", d.group_size, -1, 1 << 20, "input channels per scale; -1 = one scale per output channel"));
  f.symmetric = r.boolean("symmetric", d.symmetric, "symmetric (no zero point) or asymmetric (uint with zero point)");
  f.fp16_scales = r.choice("scale_dtype", d.fp16_scales ? "float16" : "float32", {"float32", "float16"},
                           "float16: scales rounded to fp16 in the pass (what int8-activation kernels and llama.cpp keep; "
                           "the file still stores float32)") == "float16";
  if (f.group_size == 0 || f.group_size == 1) r.error("group_size", "must be -1 (per channel) or at least 2");
  return f;
}

const std::vector<QuantFormat>& formatTable() {
  static const std::vector<QuantFormat> table = {
      {8, -1, true},  {8, -1, false}, {8, 128, true}, {6, 32, true}, {5, 32, false}, {4, -1, true},
      {4, 32, true},  {4, 32, false}, {4, 128, true}, {3, 32, true}, {3, 32, false}, {2, 16, false},
  };
  return table;
}

namespace {

// Reshapes [out, in] into [out, groups, g] (zero-padding the last group) for group-wise statistics.
at::Tensor grouped(const at::Tensor& w, int64_t g) {
  int64_t out = w.size(0), in = w.size(1);
  int64_t groups = (in + g - 1) / g;
  at::Tensor x = w;
  if (groups * g != in) x = at::constant_pad_nd(w, {0, groups * g - in});
  return x.reshape({out, groups, g});
}

at::Tensor expandGroups(const at::Tensor& s, int64_t g, int64_t in) {
  if (s.dim() == 1) return s.unsqueeze(1);
  return s.repeat_interleave(g, 1).narrow(1, 0, in);
}

}  // namespace

void computeScales(const at::Tensor& weight, const QuantFormat& f, at::Tensor& scales, at::Tensor& zero_points) {
  at::Tensor w = weight.to(at::kFloat);
  int64_t g = f.group_size > 0 ? f.group_size : w.size(1);
  at::Tensor x = grouped(w, g);  // [out, groups, g]
  // fp16 scales: rounded to the nearest fp16 normal (a smaller one only coarsens a group of near-zero weights; a
  // larger one is refused), before the zero points are taken from them.
  auto storable = [&](at::Tensor s) {
    if (!f.fp16_scales) return s;
    constexpr double kHalfMinNormal = 6.103515625e-05, kHalfMax = 65504.0;
    if (s.max().item<double>() > kHalfMax)
      fail(ErrorCategory::Config, "scale_dtype float16: a scale of " + std::to_string(s.max().item<double>()) +
                                      " is beyond fp16's range (65504); use scale_dtype: float32 for this model");
    return s.clamp_min(kHalfMinNormal).to(at::kHalf).to(at::kFloat);
  };
  if (f.symmetric) {
    double qmax = (1 << (f.bits - 1)) - 1;
    at::Tensor amax = x.abs().amax(-1);
    scales = amax / qmax;
    scales = storable(at::where(scales > 0, scales, at::ones_like(scales)));
    zero_points = at::Tensor();
  } else {
    double qmax = (1 << f.bits) - 1;
    at::Tensor lo = at::clamp_max(x.amin(-1), 0), hi = at::clamp_min(x.amax(-1), 0);
    scales = (hi - lo) / qmax;
    scales = storable(at::where(scales > 0, scales, at::ones_like(scales)));
    zero_points = at::clamp(at::round(-lo / scales), 0, qmax).to(at::kByte);
  }
  scales = at::where(scales > 0, scales, at::ones_like(scales));  // all-zero rows/groups
  if (f.group_size <= 0) {
    scales = scales.reshape({-1});
    if (zero_points.defined()) zero_points = zero_points.reshape({-1});
  }
  scales = scales.contiguous();
}

QuantizedTensor quantizeRtn(const at::Tensor& weight, const QuantFormat& f) {
  if (weight.dim() != 2) fail(ErrorCategory::Internal, "quantizeRtn expects a 2-D weight, got " + c10::str(weight.sizes()));
  if (f.bits < 2 || f.bits > 8) fail(ErrorCategory::Config, "bits must be between 2 and 8, got " + std::to_string(f.bits));
  at::Tensor w = weight.detach().to(at::kFloat).cpu();
  if (!at::isfinite(w).all().item<bool>())
    fail(ErrorCategory::Numeric, "the weight contains NaN or Inf; it cannot be quantized");
  QuantizedTensor q;
  q.format = f;
  computeScales(w, f, q.scales, q.zero_points);
  int64_t g = f.group_size > 0 ? f.group_size : w.size(1);
  at::Tensor s = expandGroups(q.scales, g, w.size(1));
  if (f.symmetric) {
    double lo = -(1 << (f.bits - 1)), hi = (1 << (f.bits - 1)) - 1;
    q.qdata = at::clamp(at::round(w / s), lo, hi).to(at::kChar);
  } else {
    at::Tensor z = expandGroups(q.zero_points.to(at::kFloat), g, w.size(1));
    q.qdata = at::clamp(at::round(w / s) + z, 0, (1 << f.bits) - 1).to(at::kByte);
  }
  return q;
}

at::Tensor dequantize(const QuantizedTensor& q) {
  int64_t in = q.qdata.size(1);
  int64_t g = q.format.group_size > 0 ? q.format.group_size : in;
  at::Tensor x = q.qdata.to(at::kFloat);
  if (q.zero_points.defined()) x = x - expandGroups(q.zero_points.to(at::kFloat), g, in);
  return x * expandGroups(q.scales, g, in);
}

std::vector<uint8_t> packBits(const at::Tensor& qdata, int bits, bool symmetric) {
  at::Tensor u = qdata.to(at::kInt).contiguous().cpu();
  if (symmetric) u = u + (1 << (bits - 1));  // offset to unsigned
  const int32_t* p = u.data_ptr<int32_t>();
  int64_t rows = u.size(0), cols = u.numel() / std::max<int64_t>(rows, 1);
  int64_t row_bytes = (cols * bits + 7) / 8;
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes), 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = out.data() + r * row_bytes;
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t v = static_cast<uint32_t>(p[r * cols + c]) & ((1u << bits) - 1);
      int64_t bit = c * bits;
      for (int k = 0; k < bits; ++k, ++bit)
        if (v >> k & 1u) dst[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    }
  }
  return out;
}

// A conv weight is quantized as its [out, fan_in] matrix (groups run along in·k), so DequantizeLinear
// gives that matrix and a Reshape gives the conv its kernel shape back: the same DQ -> op form as linears.
static void reshapeQuantizedConv(Graph& g, const std::string& weight, const std::vector<int64_t>& shape) {
  const std::string shape_name = g.freshName(weight + ".kernel_shape");
  const std::string kernel = g.freshName(weight + ".kernel");
  for (int c : g.consumers(weight))
    for (auto& in : g.nodes[static_cast<size_t>(c)].inputs)
      if (in == weight) in = kernel;
  g.initializers[shape_name] = at::tensor(shape, at::kLong);
  g.values[shape_name] = ValueInfo{DType::Int64, Shape{Dim::fixed(static_cast<int64_t>(shape.size()))}};
  Shape ks;
  for (auto d : shape) ks.push_back(Dim::fixed(d));
  g.values[kernel] = ValueInfo{g.values[weight].dtype == DType::Undefined ? DType::Float32 : g.values[weight].dtype, ks};
  g.values[weight].shape = Shape{Dim::fixed(shape[0]), Dim::fixed(g.initializers.at(weight + ".qdata").size(1))};
  Node r;
  r.op = "Reshape";
  r.name = g.freshName("kernel." + weight);
  r.inputs = {weight, shape_name};
  r.outputs = {kernel};
  g.nodes.insert(g.nodes.begin() + 1, std::move(r));  // right after the DequantizeLinear
}

void installQuantized(Graph& g, const std::string& weight, const QuantizedTensor& q, const std::string& method) {
  if (!g.isInitializer(weight))
    fail(ErrorCategory::Internal, "cannot quantize '" + weight + "': it is not a float initializer");
  const std::vector<int64_t> shape = g.initializers.at(weight).sizes().vec();
  g.initializers.erase(weight);
  g.parameters.erase(weight);
  auto add = [&](const std::string& name, const at::Tensor& t) {
    g.initializers[name] = t.contiguous();
    Shape s;
    for (auto d : t.sizes()) s.push_back(Dim::fixed(d));
    g.values[name] = ValueInfo{dtypeFromScalarType(t.scalar_type()), s};
  };
  add(weight + ".qdata", q.qdata);
  add(weight + ".scale", q.scales.to(at::kFloat));
  Node n;
  n.op = "DequantizeLinear";
  n.name = g.freshName("dequant." + weight);
  n.inputs = {weight + ".qdata", weight + ".scale"};
  if (q.zero_points.defined()) {
    add(weight + ".zero_point", q.zero_points);
    n.inputs.push_back(weight + ".zero_point");
  }
  n.outputs = {weight};
  if (q.format.group_size > 0) {
    n.attrs["axis"] = int64_t{1};
    n.attrs["block_size"] = static_cast<int64_t>(q.format.group_size);
  } else {
    n.attrs["axis"] = int64_t{0};
  }
  g.nodes.insert(g.nodes.begin(), n);
  g.quant[weight] = QuantInfo{q.format.bits, q.format.group_size, q.format.symmetric, method};
  if (shape.size() > 2) reshapeQuantizedConv(g, weight, shape);
}

QuantizedTensor quantizedOf(const Graph& g, const std::string& weight) {
  auto it = g.quant.find(weight);
  if (it == g.quant.end()) fail(ErrorCategory::Internal, "'" + weight + "' is not quantized");
  QuantizedTensor q;
  q.format = QuantFormat{it->second.bits, static_cast<int32_t>(it->second.group_size), it->second.symmetric};
  q.qdata = g.initializers.at(weight + ".qdata");
  q.scales = g.initializers.at(weight + ".scale");
  if (g.initializers.count(weight + ".zero_point")) q.zero_points = g.initializers.at(weight + ".zero_point");
  return q;
}

namespace {

/// A DequantizeLinear whose inputs are all initializers, as the IR quantizes: its integers and scales in
/// the [out, in] orientation of the weight it makes (`transposed`: the DQ's own layout is [in, out]).
std::optional<QuantizedTensor> quantizedFromDq(const Graph& g, const Node& dq, bool transposed, bool four_bit) {
  if (dq.inputs.size() < 2) return std::nullopt;
  for (const auto& in : dq.inputs)
    if (!in.empty() && !g.isInitializer(in)) return std::nullopt;
  at::Tensor x = g.initializers.at(dq.inputs[0]);
  if (x.dim() != 2 || (x.scalar_type() != at::kChar && x.scalar_type() != at::kByte)) return std::nullopt;
  at::Tensor s = g.initializers.at(dq.inputs[1]).to(at::kFloat);
  at::Tensor z = dq.inputs.size() > 2 && !dq.inputs[2].empty() ? g.initializers.at(dq.inputs[2]) : at::Tensor();
  if (!g.initializers.at(dq.inputs[1]).is_floating_point() || (z.defined() && (z.sizes() != s.sizes() || z.scalar_type() != x.scalar_type())))
    return std::nullopt;  // a file whose DequantizeLinear the op itself would reject: left to it
  const int64_t axis = dq.attrInt("axis", 1), block = dq.attrInt("block_size", 0);
  // In the [out, in] orientation: the output channel is DQ axis 1 when transposed, else 0.
  const int64_t out_axis = transposed ? 1 : 0, out = x.size(out_axis), in = x.size(1 - out_axis);
  QuantizedTensor q;
  q.format.bits = four_bit ? 4 : 8;
  auto orient = [&](const at::Tensor& t) { return (transposed ? t.t() : t).contiguous(); };
  q.qdata = orient(x);
  if (block > 0) {
    // Blocks along the input, the last one ragged when `block` does not divide it (as ONNX allows).
    if (axis != 1 - out_axis || s.dim() != 2 || s.size(1 - out_axis) != (in + block - 1) / block || s.size(out_axis) != out) return std::nullopt;
    q.format.group_size = static_cast<int32_t>(block);
    q.scales = orient(s);
    if (z.defined()) z = orient(z);
  } else {
    if (s.numel() == 1) s = s.reshape({1}).expand({out}), z = z.defined() ? z.reshape({1}).expand({out}) : z;  // per tensor
    else if (axis != out_axis || s.dim() != 1 || s.size(0) != out) return std::nullopt;
    q.scales = s.contiguous();
    if (z.defined()) z = z.contiguous();
  }
  const bool zero = !z.defined() || z.to(at::kInt).eq(0).all().item<bool>();
  if (x.scalar_type() == at::kChar) {
    if (!zero) return std::nullopt;  // signed with an offset: not a format the IR has
    q.format.symmetric = true;
  } else {
    q.format.symmetric = false;
    q.zero_points = z.defined() ? z.to(at::kByte).contiguous() : at::zeros_like(q.scales, at::kByte);
  }
  return q;
}

/// The `count` values of `bits` bits each packed low bits first in every row of `bytes` [rows, row_bytes].
at::Tensor unpackRows(const at::Tensor& bytes, int64_t rows, int64_t count, int bits) {
  at::Tensor b = bytes.to(at::kByte).contiguous().reshape({rows, -1});
  const int64_t row_bytes = b.size(1);
  at::Tensor out = at::empty({rows, count}, at::kInt);
  auto src = b.accessor<uint8_t, 2>();
  auto dst = out.accessor<int32_t, 2>();
  const int mask = (1 << bits) - 1;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t bit = i * bits, at = bit / 8;
      int window = src[r][at] | (at + 1 < row_bytes ? src[r][at + 1] << 8 : 0);
      dst[r][i] = (window >> (bit % 8)) & mask;
    }
  return out;
}

/// The quantized weight a MatMulNBits node holds ([N, K] in the IR's layout), or nothing when its inputs
/// are not plain initializers of the documented shapes.
std::optional<QuantizedTensor> quantizedFromNBits(const Graph& g, const Node& m) {
  const int64_t K = m.attrInt("K", -1), N = m.attrInt("N", -1), bits = m.attrInt("bits", 4), bs = m.attrInt("block_size", -1);
  if (K <= 0 || N <= 0 || bs < 16 || (bs & (bs - 1)) != 0 || (bits != 2 && bits != 4 && bits != 8)) return std::nullopt;
  if (m.inputs.size() < 3 || m.outputs.size() != 1 || !g.isInitializer(m.inputs[1]) || !g.isInitializer(m.inputs[2])) return std::nullopt;
  if (m.inputs.size() > 4 && !m.inputs[4].empty()) return std::nullopt;  // g_idx (act-order): not a format the IR has
  const int64_t blocks = (K + bs - 1) / bs, blob = bs * bits / 8;
  const at::Tensor& B = g.initializers.at(m.inputs[1]);
  const at::Tensor& S = g.initializers.at(m.inputs[2]);
  if (B.scalar_type() != at::kByte || B.numel() != N * blocks * blob || !S.is_floating_point() || S.numel() != N * blocks) return std::nullopt;
  QuantizedTensor q;
  q.format = QuantFormat{static_cast<int32_t>(bits), static_cast<int32_t>(bs), true};
  at::Tensor u = unpackRows(B, N * blocks, bs, static_cast<int>(bits)).reshape({N, blocks * bs}).narrow(1, 0, K);
  q.scales = S.to(at::kFloat).reshape({N, blocks}).contiguous();
  const bool has_zp = m.inputs.size() > 3 && !m.inputs[3].empty();
  if (!has_zp) {  // the default zero point 2^(bits-1): symmetric
    q.qdata = (u - (1 << (bits - 1))).to(at::kChar).contiguous();
    return q;
  }
  if (!g.isInitializer(m.inputs[3])) return std::nullopt;
  const at::Tensor& Z = g.initializers.at(m.inputs[3]);
  const int64_t zrow = (blocks * bits + 7) / 8;
  if (Z.scalar_type() != at::kByte || Z.numel() != N * zrow) return std::nullopt;
  q.format.symmetric = false;
  q.qdata = u.to(at::kByte).contiguous();
  q.zero_points = unpackRows(Z, N, blocks, static_cast<int>(bits)).to(at::kByte).contiguous();
  return q;
}

/// MatMulNBits(A, B, scales[, zero_points]) -> MatMul(A, Transpose(W)) with W the quantized weight.
bool readBackNBits(Graph& g, size_t i) {
  const Node m = g.nodes[i];
  auto q = quantizedFromNBits(g, m);
  if (!q) return false;
  std::string name = m.inputs[1];
  if (name.size() > 2 && name.compare(name.size() - 2, 2, ".B") == 0) name = name.substr(0, name.size() - 2);
  if (name == m.inputs[1] || g.isInitializer(name) || g.values.count(name)) name = g.freshName(m.name + ".weight");
  std::vector<Node> add;
  const Node tr = linearTranspose(g, name);
  Node mm;
  mm.op = "MatMul";
  mm.name = m.name;
  mm.source = m.source;
  mm.inputs = {m.inputs[0], tr.outputs[0]};
  const bool bias = m.inputs.size() > 5 && !m.inputs[5].empty();
  mm.outputs = {bias ? g.freshName(m.outputs[0] + ".mm") : m.outputs[0]};
  add = {tr, mm};
  if (bias) {
    Node b;
    b.op = "Add";
    b.name = g.freshName(m.name + ".bias");
    b.inputs = {mm.outputs[0], m.inputs[5]};
    b.outputs = {m.outputs[0]};
    add.push_back(b);
  }
  g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
  g.nodes.insert(g.nodes.begin() + static_cast<std::ptrdiff_t>(i), add.begin(), add.end());
  for (size_t k = 1; k < 4 && k < m.inputs.size(); ++k)
    if (!m.inputs[k].empty()) g.initializers.erase(m.inputs[k]), g.values.erase(m.inputs[k]);
  at::Tensor w = dequantize(*q);
  g.initializers[name] = w;
  g.values[name] = ValueInfo{DType::Float32, Shape{Dim::fixed(w.size(0)), Dim::fixed(w.size(1))}};
  g.values[tr.outputs[0]] = ValueInfo{DType::Float32, Shape{Dim::fixed(w.size(1)), Dim::fixed(w.size(0))}};
  g.parameters.insert(name);
  installQuantized(g, name, *q, "onnx");
  return true;
}

/// DequantizeLinear node i -> a quantized weight read by its MatMul or Conv; false when it is not one.
bool readBackDq(Graph& g, size_t i, const std::set<std::string>& four_bit) {
  const Node dq = g.nodes[i];
  if (dq.op != "DequantizeLinear" || !dq.domain.empty() || dq.inputs.size() < 2 || dq.outputs.size() != 1 || g.quant.count(dq.outputs[0]))
    return false;
  const std::string v = dq.outputs[0];
  auto readers = g.consumers(v);
  if (readers.size() != 1) return false;
  Node& r = g.nodes[static_cast<size_t>(readers[0])];
  if (r.inputs.size() < 2 || r.outputs.empty()) return false;  // (a malformed node: left for the op checks to refuse)
  // What reads the weight: MatMul(x, W[in, out]), Transpose -> MatMul, Conv, or Reshape -> Conv.
  int matmul = -1, conv = -1, between = -1;
  bool transposed = false;
  if (r.op == "MatMul" && r.inputs[1] == v) {
    matmul = readers[0], transposed = true;
  } else if ((r.op == "Transpose" || r.op == "Reshape") && g.consumers(r.outputs[0]).size() == 1) {
    const int next = g.consumers(r.outputs[0])[0];
    const Node& nx = g.nodes[static_cast<size_t>(next)];
    if (nx.inputs.size() < 2) return false;
    if (r.op == "Transpose" && nx.op == "MatMul" && nx.inputs[1] == r.outputs[0] && r.attrInts("perm") == std::vector<int64_t>{1, 0})
      matmul = next, between = readers[0];
    else if (r.op == "Reshape" && nx.op == "Conv" && nx.inputs[1] == r.outputs[0] && g.isInitializer(r.inputs[1]))
      conv = next, between = readers[0];
  } else if (r.op == "Conv" && r.inputs[1] == v) {
    conv = readers[0];
  }
  if (matmul < 0 && conv < 0) return false;
  const Node& x0 = dq;
  at::Tensor xs = g.initializers.count(x0.inputs[0]) ? g.initializers.at(x0.inputs[0]) : at::Tensor();
  if (!xs.defined()) return false;
  std::vector<int64_t> kernel;  // a conv weight's shape
  Node dq2 = dq;
  if (conv >= 0) {
    if (between >= 0) {  // the kernel shape: the Reshape's constant target (all sizes given)
      at::Tensor shape = g.initializers.at(g.nodes[static_cast<size_t>(between)].inputs[1]).to(at::kLong).reshape({-1});
      for (int64_t k = 0; k < shape.numel(); ++k) kernel.push_back(shape[k].item<int64_t>());
      int64_t numel = 1;
      for (int64_t d : kernel) numel = d > 0 ? numel * d : -1;
      if (numel != xs.numel()) return false;
    } else if (xs.dim() == 4 && dq.attrInt("axis", 1) == 0) {  // a 4-D kernel quantized per output channel
      kernel = xs.sizes().vec();
      g.initializers.at(x0.inputs[0]) = xs.reshape({xs.size(0), -1}).contiguous();
      dq2.attrs["axis"] = int64_t{0};
    } else {
      return false;
    }
  }
  auto q = quantizedFromDq(g, dq2, transposed, four_bit.count(dq.inputs[0]) != 0);
  if (!q) {
    if (!kernel.empty() && between < 0) g.initializers.at(x0.inputs[0]) = xs;  // undo the reshape
    return false;
  }
  // The weight's name: the integers' name without its ".qdata" / "_quantized" suffix, else the DQ output.
  std::string name = dq.inputs[0];
  for (const char* suffix : {".qdata", "_quantized"}) {
    const std::string sfx = suffix;
    if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) name = name.substr(0, name.size() - sfx.size());
  }
  if (name == dq.inputs[0] || g.isInitializer(name) || (g.values.count(name) && name != v)) name = v;
  // Rewire: the reader takes a float weight `name` ([out, in] behind a Transpose, or the kernel).
  at::Tensor w = dequantize(*q);
  if (!kernel.empty()) w = w.reshape(kernel);
  std::vector<int> drop = {static_cast<int>(i)};
  if (between >= 0) drop.push_back(between);
  const std::string between_out = between >= 0 ? g.nodes[static_cast<size_t>(between)].outputs[0] : "";
  Node tr;
  if (matmul >= 0) {
    tr = linearTranspose(g, name);
    g.nodes[static_cast<size_t>(matmul)].inputs[1] = tr.outputs[0];
    g.values[tr.outputs[0]] = ValueInfo{DType::Float32, Shape{Dim::fixed(w.size(1)), Dim::fixed(w.size(0))}};
  } else {
    g.nodes[static_cast<size_t>(conv)].inputs[1] = name;
  }
  const int reader = matmul >= 0 ? matmul : conv;
  std::vector<Node> nodes;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    if (std::find(drop.begin(), drop.end(), static_cast<int>(k)) != drop.end()) continue;
    if (static_cast<int>(k) == reader && matmul >= 0) nodes.push_back(tr);
    nodes.push_back(g.nodes[k]);
  }
  g.nodes = std::move(nodes);
  for (const auto& in : dq.inputs) g.initializers.erase(in), g.values.erase(in);
  g.values.erase(v);
  if (!between_out.empty()) g.values.erase(between_out);
  g.initializers[name] = w;
  Shape ws;
  for (int64_t d : w.sizes()) ws.push_back(Dim::fixed(d));
  g.values[name] = ValueInfo{DType::Float32, ws};
  g.parameters.insert(name);
  installQuantized(g, name, *q, "onnx");
  return true;
}

}  // namespace

int readBackQuantizedWeights(Graph& g, const std::set<std::string>& four_bit) {
  int count = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (g.nodes[i].op == "MatMulNBits" && g.nodes[i].domain == "com.microsoft" && readBackNBits(g, i)) ++count;
  // Each rewrite changes the node list (its new DequantizeLinear, at the front, reads a quantized weight's
  // ".qdata" and is skipped): start over until nothing is left to read back.
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (readBackDq(g, i, four_bit)) ++count, i = static_cast<size_t>(-1);
  return count;
}

std::vector<std::string> floatTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& weights) {
  std::vector<std::string> out;
  for (const auto& w : weights)
    if (g.isInitializer(w)) out.push_back(w);
  if (out.empty() && !weights.empty()) {
    auto q = g.quant.find(weights[0]);
    const std::string how = q == g.quant.end() ? "" : " (" + std::to_string(q->second.bits) + "-bit, " +
                                                       (q->second.method == "onnx" ? std::string("as the ONNX file stores it") : "by " + q->second.method) + ")";
    fail(ErrorCategory::Config, pass + ": every targeted weight is already quantized, e.g. '" + weights[0] + "'" + how +
                                    "; quantizing again would add a second rounding error — start from the float model");
  }
  return out;
}

}  // namespace compress
