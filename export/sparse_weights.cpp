#include "export/sparse_weights.h"

#include <cstring>
#include <vector>

namespace compress {
namespace {

constexpr int64_t kMinElements = 1024;
constexpr int64_t kMinSaving = 2048;  // bytes: the rebuilding nodes and their small tensors cost about 1.5 KB

std::string raw(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

onnx::TensorProto tensor(const std::string& name, int dtype, const std::vector<int64_t>& dims, const std::string& bytes) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(dtype);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(bytes);
  return t;
}

void addTensor(onnx::GraphProto& g, const std::string& name, int dtype, const std::vector<int64_t>& dims,
               const std::string& bytes) {
  *g.add_initializer() = tensor(name, dtype, dims, bytes);
}

onnx::NodeProto* addNode(std::vector<onnx::NodeProto>& nodes, const std::string& op, std::vector<std::string> in,
                         const std::string& out) {
  nodes.emplace_back();
  onnx::NodeProto& n = nodes.back();
  n.set_op_type(op);
  n.set_name(out);
  for (auto& i : in) n.add_input(i);
  n.add_output(out);
  return &n;
}

void intAttr(onnx::NodeProto* n, const std::string& k, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(k);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

/// The shared constants of the rebuilding subgraphs (added once).
struct Constants {
  const std::string axes = "sparse_weights.axes1", pow2 = "sparse_weights.pow2", two = "sparse_weights.two",
                    axis0 = "sparse_weights.axis0", zero = "sparse_weights.zero_f32";
  void add(onnx::GraphProto& g, bool anyFloat) {
    const int64_t one = 1, ax0 = 0;
    addTensor(g, axes, onnx::TensorProto::INT64, {1}, raw(&one, 8));
    std::vector<int32_t> p = {1, 2, 4, 8, 16, 32, 64, 128};
    addTensor(g, pow2, onnx::TensorProto::INT32, {1, 8}, raw(p.data(), 32));
    const int32_t t = 2;
    addTensor(g, two, onnx::TensorProto::INT32, {1}, raw(&t, 4));
    addTensor(g, axis0, onnx::TensorProto::INT64, {}, raw(&ax0, 8));
    const float z = 0.f;
    if (anyFloat) addTensor(g, zero, onnx::TensorProto::FLOAT, {}, raw(&z, 4));  // only Where reads it
  }
};

/// Nodes rebuilding initializer `w` (dims, dtype) from w.mask and w.values.
void rebuild(std::vector<onnx::NodeProto>& nodes, const Constants& k, const std::string& w, int dtype,
             const std::string& shape) {
  const std::string p = w + ".sparse/";
  intAttr(addNode(nodes, "Cast", {w + ".mask"}, p + "mask_i32"), "to", onnx::TensorProto::INT32);
  addNode(nodes, "Unsqueeze", {p + "mask_i32", k.axes}, p + "mask_col");
  addNode(nodes, "Div", {p + "mask_col", k.pow2}, p + "shifted");
  addNode(nodes, "Mod", {p + "shifted", k.two}, p + "bits8");
  addNode(nodes, "Reshape", {p + "bits8", p + "flat_shape"}, p + "bits");
  intAttr(addNode(nodes, "CumSum", {p + "bits", k.axis0}, p + "pos"), "exclusive", 1);
  addNode(nodes, "Gather", {w + ".values", p + "pos"}, p + "gathered");
  if (dtype == onnx::TensorProto::FLOAT) {
    intAttr(addNode(nodes, "Cast", {p + "bits"}, p + "keep"), "to", onnx::TensorProto::BOOL);
    addNode(nodes, "Where", {p + "keep", p + "gathered", k.zero}, p + "flat");
  } else {
    intAttr(addNode(nodes, "Cast", {p + "gathered"}, p + "gathered_i32"), "to", onnx::TensorProto::INT32);
    addNode(nodes, "Mul", {p + "gathered_i32", p + "bits"}, p + "flat_i32");
    intAttr(addNode(nodes, "Cast", {p + "flat_i32"}, p + "flat"), "to", dtype);
  }
  addNode(nodes, "Reshape", {p + "flat", shape}, w);
}

}  // namespace

nlohmann::json compactSparseWeights(onnx::GraphProto& g, const std::set<std::string>& weights, double min_zeros) {
  Constants k;
  std::vector<onnx::NodeProto> nodes;
  std::vector<onnx::TensorProto> keep, added;
  int64_t dense = 0, compact = 0;
  int count = 0;
  bool anyFloat = false;
  for (onnx::TensorProto& t : *g.mutable_initializer()) {
    const bool f32 = t.data_type() == onnx::TensorProto::FLOAT, i8 = t.data_type() == onnx::TensorProto::INT8;
    int64_t n = 1;
    for (int64_t d : t.dims()) n *= d;
    const size_t es = f32 ? 4 : 1;
    if (!weights.count(t.name()) || (!f32 && !i8) || t.dims_size() < 2 || n < kMinElements || n % 8 != 0 ||
        t.raw_data().size() != static_cast<size_t>(n) * es) {
      keep.push_back(std::move(t));
      continue;
    }
    const char* data = t.raw_data().data();
    std::string mask(static_cast<size_t>(n / 8), '\0'), values;
    int64_t nnz = 0;
    for (int64_t i = 0; i < n; ++i) {
      float v = 0.f;
      if (f32) std::memcpy(&v, data + i * es, 4);
      if (f32 ? v == 0.f : data[i] == 0) continue;  // -0.0 is a zero too
      mask[i / 8] = static_cast<char>(mask[i / 8] | (1 << (i % 8)));
      values.append(data + i * es, es);
      ++nnz;
    }
    const int64_t compactBytes = n / 8 + (nnz + 1) * static_cast<int64_t>(es);
    if (static_cast<double>(n - nnz) < min_zeros * static_cast<double>(n) ||
        static_cast<int64_t>(t.raw_data().size()) - compactBytes < kMinSaving) {
      keep.push_back(std::move(t));
      continue;
    }
    values.append(es, '\0');  // one padding value: the exclusive count after the last nonzero gathers it
    const std::string w = t.name();
    const std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
    added.push_back(tensor(w + ".mask", onnx::TensorProto::UINT8, {n / 8}, mask));
    added.push_back(tensor(w + ".values", t.data_type(), {nnz + 1}, values));
    added.push_back(tensor(w + ".sparse/flat_shape", onnx::TensorProto::INT64, {1}, raw(&n, 8)));
    added.push_back(tensor(w + ".sparse/shape", onnx::TensorProto::INT64, {static_cast<int64_t>(dims.size())},
                           raw(dims.data(), dims.size() * 8)));
    rebuild(nodes, k, w, t.data_type(), w + ".sparse/shape");
    anyFloat |= f32;
    dense += static_cast<int64_t>(t.raw_data().size());
    compact += static_cast<int64_t>(mask.size() + values.size());
    ++count;
  }
  g.clear_initializer();
  for (auto& t : keep) *g.add_initializer() = std::move(t);
  for (auto& t : added) *g.add_initializer() = std::move(t);
  if (count > 0) {
    k.add(g, anyFloat);
    std::vector<onnx::NodeProto> rest(g.node().begin(), g.node().end());
    g.clear_node();
    for (auto& n : nodes) *g.add_node() = std::move(n);
    for (auto& n : rest) *g.add_node() = std::move(n);
  }
  return {{"weights", count}, {"dense_bytes", dense}, {"compact_bytes", compact}};
}

}  // namespace compress
