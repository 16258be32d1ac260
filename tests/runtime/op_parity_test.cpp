// op_parity_test.cpp — the op table (runtime/op_table.def) against both implementations: every row has
// an executor kernel and a runtime kernel, and one-node graphs of each op — dtypes, broadcasting, negative
// axes, zero-size dims, the attribute variants — give the same values in crun as in the executor.
#include <cmath>
#include <cstring>

#include "compress/executor.h"
#include "export/onnx_export.h"
#include "runtime/crt.h"
#include "runtime/op_table.h"
#include "test_util.h"

#include <catch2/catch.hpp>  // after the LibTorch headers (glog defines CHECK)

using namespace compress;

namespace {

struct OpCase {
  std::string label, op;
  std::vector<at::Tensor> inputs;  // undefined = omitted optional input
  std::map<std::string, Attribute> attrs;
  int outputs = 1;
};

at::Tensor f32(std::vector<int64_t> shape, int seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen);
}
at::Tensor i64(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }
at::Tensor scalarL(int64_t v) { return at::scalar_tensor(v, at::kLong); }
at::Tensor scalarF(double v) { return at::scalar_tensor(v, at::kFloat); }

std::vector<OpCase> cases() {
  at::Tensor a = f32({2, 3, 4}, 1), b = f32({4}, 2), ints = i64({-7, -2, 0, 3, 8, 11}).reshape({2, 3});
  at::Tensor mask1 = at::tensor(std::vector<int64_t>{1, 0}, at::kLong).to(at::kBool).reshape({2, 1});
  at::Tensor mask2 = at::tensor(std::vector<int64_t>{1, 1, 0}, at::kLong).to(at::kBool);
  at::Tensor nan = f32({5}, 3);
  nan[2] = NAN;
  at::Tensor empty = f32({0, 4}, 4);
  at::Tensor img = f32({1, 4, 5, 6}, 5);
  return {
      {"Mod, Python sign rule, int64 broadcast", "Mod", {ints, i64({3, -4, 5})}, {}},
      {"Mod fmod=1, float", "Mod", {a, scalarF(0.7)}, {{"fmod", int64_t{1}}}},
      {"LessOrEqual broadcast", "LessOrEqual", {a, b}, {}},
      {"GreaterOrEqual int64", "GreaterOrEqual", {ints, i64({0, 3, 8})}, {}},
      {"And broadcast [2,1] x [3]", "And", {mask1, mask2}, {}},
      {"Or", "Or", {mask1, mask2}, {}},
      {"Xor", "Xor", {mask1, mask2}, {}},
      {"Not", "Not", {mask2}, {}},
      {"IsNaN", "IsNaN", {nan}, {}},
      {"Sin", "Sin", {a}, {}},
      {"Cos", "Cos", {a}, {}},
      {"LeakyRelu alpha 0.1", "LeakyRelu", {a}, {{"alpha", 0.1}}},
      {"Elu", "Elu", {a}, {{"alpha", 0.7}}},
      {"HardSigmoid torch's alpha", "HardSigmoid", {a * 4}, {{"alpha", 1.0 / 6}, {"beta", 0.5}}},
      {"HardSigmoid ONNX default", "HardSigmoid", {a * 4}, {}},
      {"HardSwish", "HardSwish", {a * 4}, {}},
      {"Gelu exact", "Gelu", {a}, {}},
      {"Gelu tanh", "Gelu", {a}, {{"approximate", std::string("tanh")}}},
      {"Clip min and max", "Clip", {a, scalarF(-0.5), scalarF(0.3)}, {}},
      {"Clip max only", "Clip", {a, at::Tensor(), scalarF(0.3)}, {}},
      {"Clip int64", "Clip", {ints, scalarL(-2), scalarL(5)}, {}},
      {"Range int64", "Range", {scalarL(2), scalarL(11), scalarL(3)}, {}},
      {"Range float, negative step", "Range", {scalarF(1.0), scalarF(-2.0), scalarF(-0.5)}, {}},
      {"Tile", "Tile", {f32({2, 3}, 6), i64({2, 1})}, {}},
      {"Trilu upper k=1", "Trilu", {a, scalarL(1)}, {}},
      {"Trilu lower k=-1", "Trilu", {a, scalarL(-1)}, {{"upper", int64_t{0}}}},
      {"Trilu zero-size", "Trilu", {empty}, {}},
      {"CumSum negative axis", "CumSum", {a, scalarL(-1)}, {}},
      {"CumSum exclusive reverse", "CumSum", {a, scalarL(1)}, {{"exclusive", int64_t{1}}, {"reverse", int64_t{1}}}},
      {"CumSum int64", "CumSum", {ints, scalarL(0)}, {}},
      {"ReduceSum axes input, negative", "ReduceSum", {a, i64({-1})}, {{"keepdims", int64_t{0}}}},
      {"ReduceSum zero-size", "ReduceSum", {empty, i64({0})}, {}},
      {"ReduceMin", "ReduceMin", {a}, {{"axes", std::vector<int64_t>{1}}}},
      {"ReduceProd", "ReduceProd", {a}, {{"axes", std::vector<int64_t>{0, 2}}, {"keepdims", int64_t{0}}}},
      {"ReduceL2", "ReduceL2", {a}, {{"axes", std::vector<int64_t>{-1}}}},
      {"ArgMax negative axis", "ArgMax", {a}, {{"axis", int64_t{-1}}, {"keepdims", int64_t{0}}}},
      {"ArgMax keepdims", "ArgMax", {a}, {{"axis", int64_t{1}}}},
      {"TopK largest", "TopK", {a, i64({2})}, {{"axis", int64_t{-1}}}, 2},
      {"TopK smallest", "TopK", {a, i64({3})}, {{"axis", int64_t{1}}, {"largest", int64_t{0}}}, 2},
      {"InstanceNormalization", "InstanceNormalization", {img, f32({4}, 7), f32({4}, 8)}, {{"epsilon", 1e-5}}},
      {"Pad constant", "Pad", {a, i64({0, 1, 2, 1, 0, 3}), scalarF(0.5)}, {{"mode", std::string("constant")}}},
      {"Pad crop (negative)", "Pad", {a, i64({0, -1, 1, 0, 0, -2})}, {{"mode", std::string("constant")}}},
      {"Pad reflect", "Pad", {img, i64({0, 0, 2, 1, 0, 0, 1, 2})}, {{"mode", std::string("reflect")}}},
      {"Pad edge", "Pad", {img, i64({0, 0, 1, 3, 0, 0, 2, 0})}, {{"mode", std::string("edge")}}},
      {"Resize nearest x2 (scales)", "Resize", {img, at::Tensor(), at::tensor(std::vector<float>{1, 1, 2, 2})},
       {{"mode", std::string("nearest")}, {"coordinate_transformation_mode", std::string("asymmetric")},
        {"nearest_mode", std::string("floor")}}},
      {"Resize linear (sizes)", "Resize", {img, at::Tensor(), at::Tensor(), i64({1, 4, 7, 9})},
       {{"mode", std::string("linear")}, {"coordinate_transformation_mode", std::string("pytorch_half_pixel")}}},
      {"Resize linear align_corners", "Resize", {img, at::Tensor(), at::Tensor(), i64({1, 4, 3, 11})},
       {{"mode", std::string("linear")}, {"coordinate_transformation_mode", std::string("align_corners")}}},
      {"Einsum matrix product", "Einsum", {f32({3, 4}, 9), f32({4, 5}, 10)}, {{"equation", std::string("ij,jk->ik")}}},
      {"Einsum attention scores", "Einsum", {f32({2, 2, 3, 4}, 11), f32({2, 2, 5, 4}, 12)},
       {{"equation", std::string("bhqd,bhkd->bhqk")}}},
      {"Einsum outer", "Einsum", {f32({3}, 13), f32({4}, 14)}, {{"equation", std::string("i,j->ij")}}},
      {"Einsum one operand, transpose and sum", "Einsum", {a}, {{"equation", std::string("ijk->ki")}}},
      {"ConvTranspose stride 2, pads, output_padding, groups", "ConvTranspose", {img, f32({4, 3, 3, 3}, 15), f32({6}, 16)},
       {{"strides", std::vector<int64_t>{2, 2}}, {"pads", std::vector<int64_t>{1, 0, 1, 0}},
        {"output_padding", std::vector<int64_t>{1, 0}}, {"group", int64_t{2}}, {"kernel_shape", std::vector<int64_t>{3, 3}}}},
      {"Max of two, broadcast", "Max", {a, b}, {}},
      {"Where broadcast", "Where", {mask1.reshape({2, 1, 1}), a, scalarF(-1.0)}, {}},
      {"Add zero-size", "Add", {empty, b}, {}},
      {"Softmax negative axis", "Softmax", {a}, {{"axis", int64_t{-2}}}},
      {"Gather negative axis", "Gather", {a, i64({3, -1, 0})}, {{"axis", int64_t{-1}}}},
      {"Gather one scalar index (a strided slab)", "Gather", {a, at::scalar_tensor(-2, at::kLong)}, {{"axis", int64_t{1}}}},
      {"Gather one index of shape [1] on the last axis", "Gather", {a, i64({2})}, {{"axis", int64_t{-1}}}},
      {"Gather one index, int64 data", "Gather", {ints, i64({1})}, {{"axis", int64_t{0}}}},
      {"Concat negative axis", "Concat", {a, a * 2}, {{"axis", int64_t{-1}}}},
      {"Concat of single elements (torch.stack's interleave)", "Concat", {f32({2, 3, 1}, 17), f32({2, 3, 1}, 18), f32({2, 3, 1}, 19)},
       {{"axis", int64_t{-1}}}},
      {"Concat of single int64 elements", "Concat", {ints.reshape({2, 3, 1}), (ints * 3).reshape({2, 3, 1})}, {{"axis", int64_t{2}}}},
      {"Add, large enough to split over threads, broadcast", "Add", {f32({4, 3, 64, 50}, 20), f32({3, 1, 50}, 21)}, {}},
      {"Mul, split over threads, a scalar per row", "Mul", {f32({2, 70, 300}, 22), f32({70, 1}, 23)}, {}},
      {"Sub, split over threads, rank 1", "Sub", {f32({40000}, 24), scalarF(0.25)}, {}},
      {"QuantizeLinear per tensor, default uint8", "QuantizeLinear", {a * 40, scalarF(0.5)}, {}},
      {"QuantizeLinear int8 zero point, ties and saturation", "QuantizeLinear",
       {at::tensor(std::vector<float>{0.5f, 1.5f, -2.5f, 300.f, -300.f, 2.49f}), scalarF(1.0), at::scalar_tensor(3, at::kChar)}, {}},
      {"QuantizeLinear per axis (uint8)", "QuantizeLinear",
       {a * 10, at::tensor(std::vector<float>{0.1f, 0.2f, 0.3f}), at::tensor(std::vector<int64_t>{0, 128, 255}).to(at::kByte)},
       {{"axis", int64_t{1}}}},
      {"QuantizeLinear per row, blocked along the last axis, output_dtype int8", "QuantizeLinear",
       {a * 5, at::tensor(std::vector<float>{0.05f, 0.1f, 0.2f, 0.4f, 0.8f, 1.6f}).reshape({2, 3, 1})},
       {{"axis", int64_t{-1}}, {"block_size", int64_t{4}}, {"output_dtype", int64_t{3}}}},
  };
}

crt::DType crtType(at::ScalarType st) {
  switch (st) {
    case at::kLong: return crt::DType::I64;
    case at::kBool: return crt::DType::Bool;
    case at::kInt: return crt::DType::I32;
    case at::kChar: return crt::DType::I8;
    case at::kByte: return crt::DType::U8;
    default: return crt::DType::F32;
  }
}

/// One node with every defined input as a graph input (outputs typed like `want`), exported and run by
/// crun; output 0, or the run's failure in `status`.
at::Tensor runOneNode(const OpCase& c, const std::vector<at::Tensor>& want, crt::Status* status = nullptr) {
  Graph g;
  Node n;
  n.op = c.op;
  n.name = "node";
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  std::vector<at::Tensor> keep;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!c.inputs[i].defined()) {
      n.inputs.push_back("");
      continue;
    }
    const std::string name = "in" + std::to_string(i);
    at::Tensor t = c.inputs[i].contiguous();
    keep.push_back(t);
    Shape s;
    for (auto d : t.sizes()) s.push_back(Dim::fixed(d));
    g.inputs.push_back(name);
    g.values[name] = ValueInfo{dtypeFromScalarType(t.scalar_type()), s};
    n.inputs.push_back(name);
    feeds.push_back({name, crt::TensorView{crtType(t.scalar_type()), t.sizes().vec(), t.data_ptr()}});
  }
  for (int k = 0; k < c.outputs; ++k) {
    const std::string name = "out" + std::to_string(k);
    n.outputs.push_back(name);
    Shape s;
    for (auto d : want[k].sizes()) s.push_back(Dim::fixed(d));
    g.values[name] = ValueInfo{dtypeFromScalarType(want[k].scalar_type()), s};
    g.outputs.push_back(name);
  }
  n.attrs = c.attrs;
  g.nodes.push_back(n);
  const std::string path = testutil::tempDir("") + "/op.onnx";
  exportOnnx(g, path, {});
  auto s = crt::Session::create(path);
  INFO(s.status().message);
  REQUIRE(s.ok());
  auto out = s->run(feeds);
  if (status) {
    *status = out.status();
    if (!out.ok()) return at::Tensor();
  }
  INFO(out.status().message);
  REQUIRE(out.ok());
  const auto& o = out.value()[0];
  at::ScalarType st = o.dtype == crt::DType::I64 ? at::kLong : o.dtype == crt::DType::Bool ? at::kBool
                     : o.dtype == crt::DType::I8 ? at::kChar : o.dtype == crt::DType::U8 ? at::kByte : at::kFloat;
  at::Tensor t = at::empty(o.shape, st);
  std::memcpy(t.data_ptr(), o.bytes.data(), o.bytes.size());
  return t;
}

}  // namespace

TEST_CASE("op table: every row has an executor kernel, and every executor op is a row", "[ops]") {
  for (const crt::OpInfo* p = crt::opTableBegin(); p != crt::opTableEnd(); ++p) {
    if (!p->domain.empty()) continue;  // com.microsoft.MatMulNBits: the runtime's; the IR writes it only at export
    INFO(p->name);
    CHECK(isSupportedOp(std::string(p->name)));
  }
  for (const auto& op : supportedOps()) {
    INFO(op);
    CHECK(crt::findOpInfo("", op) != nullptr);
  }
}

TEST_CASE("op table: one-node graphs give the same values in crun as in the executor", "[ops]") {
  for (const auto& c : cases()) {
    INFO(c.label);
    Node n;
    n.op = c.op;
    n.name = "node";
    n.attrs = c.attrs;
    for (int k = 0; k < c.outputs; ++k) n.outputs.push_back("out" + std::to_string(k));
    std::vector<at::Tensor> want = runNode(n, c.inputs);
    at::Tensor got = runOneNode(c, want);
    REQUIRE(got.sizes() == want[0].sizes());
    REQUIRE(got.scalar_type() == (want[0].scalar_type() == at::kInt ? at::kLong : want[0].scalar_type()));
    if (c.op == "QuantizeLinear") {  // integers: exactly the executor's
      CHECK(at::equal(got, want[0]));
      continue;
    }
    if (got.numel() == 0) continue;
    const at::Tensor w = want[0].to(at::kDouble), x = got.to(at::kDouble);
    const double scale = std::max(w.abs().nan_to_num(0).max().item<double>(), 1.0);
    CHECK((x - w).abs().nan_to_num(0).max().item<double>() <= 1e-5 * scale);
    CHECK(at::equal(at::isnan(x), at::isnan(w)));
  }
}

TEST_CASE("op table: hostile values in the new ops are data errors, not crashes", "[ops][errors]") {
  at::Tensor a = f32({2, 3}, 1);
  const std::vector<std::pair<OpCase, at::Tensor>> bad = {
      {{"Range with delta 0", "Range", {scalarL(0), scalarL(10), scalarL(0)}, {}}, i64({0})},
      {{"Range with 2^62 elements", "Range", {scalarL(0), scalarL(int64_t{1} << 62), scalarL(1)}, {}}, i64({0})},
      {{"TopK with K beyond the axis", "TopK", {a, i64({7})}, {}, 2}, a},
      {{"Tile with a negative repeat", "Tile", {a, i64({1, -2})}, {}}, a},
      {{"Pad removing more than the input", "Pad", {a, i64({0, -5, 0, 0})}, {{"mode", std::string("constant")}}}, a},
      {{"Pad with overflowing pads", "Pad", {a, i64({0, INT64_MAX, 0, 1})}, {{"mode", std::string("constant")}}}, a},
      {{"Resize with an enormous scale", "Resize", {at::zeros({1, 1, 2, 2}), at::Tensor(), at::tensor(std::vector<float>{1, 1, 6e4f, 6e4f})},
        {{"mode", std::string("nearest")}}}, at::zeros({1, 1, 2, 2})},
      {{"CumSum with an out-of-range axis", "CumSum", {a, scalarL(5)}, {}}, a},
      {{"QuantizeLinear to float (output_dtype 1)", "QuantizeLinear", {a, scalarF(0.1)}, {{"output_dtype", int64_t{1}}}},
       at::zeros({2, 3}, at::kByte)},
      {{"QuantizeLinear with a scale per row of the wrong count", "QuantizeLinear", {a, f32({5}, 9).abs()}, {{"axis", int64_t{0}}}},
       at::zeros({2, 3}, at::kByte)},
      {{"Einsum with mismatched label sizes", "Einsum", {f32({2, 3}, 2), f32({4, 5}, 3)}, {{"equation", std::string("ij,jk->ik")}}},
       f32({2, 5}, 4)},
  };
  for (const auto& [c, like] : bad) {
    INFO(c.label);
    crt::Status st;
    std::vector<at::Tensor> want(static_cast<size_t>(c.outputs), like);
    runOneNode(c, want, &st);
    CHECK(st.code == crt::StatusCode::DataError);
    CHECK_FALSE(st.message.empty());
  }
}
