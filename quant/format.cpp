// format.cpp — reference quantization (see format.h for the formulas).
#include "quant/format.h"

#include <algorithm>

#include "compress/error.h"
#include "compress/options.h"

namespace compress {

std::string QuantFormat::name() const {
  std::string n = "int" + std::to_string(bits);
  if (group_size > 0) n += "-g" + std::to_string(group_size);
  if (!symmetric) n += "-asym";
  return n;
}

QuantFormat readFormatOptions(OptionReader& r, const QuantFormat& d) {
  QuantFormat f;
  f.bits = static_cast<int32_t>(r.integer("bits", d.bits, 2, 8, "bits per weight"));
  f.group_size = static_cast<int32_t>(
      r.integer("group_size", d.group_size, -1, 1 << 20, "input channels per scale; -1 = one scale per output channel"));
  f.symmetric = r.boolean("symmetric", d.symmetric, "symmetric (no zero point) or asymmetric (uint with zero point)");
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
  if (f.symmetric) {
    double qmax = (1 << (f.bits - 1)) - 1;
    at::Tensor amax = x.abs().amax(-1);
    scales = amax / qmax;
    zero_points = at::Tensor();
  } else {
    double qmax = (1 << f.bits) - 1;
    at::Tensor lo = at::clamp_max(x.amin(-1), 0), hi = at::clamp_min(x.amax(-1), 0);
    scales = (hi - lo) / qmax;
    scales = at::where(scales > 0, scales, at::ones_like(scales));
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

}  // namespace compress
