// model_builder.h — small ONNX graphs built in code for the runtime's tests.
#pragma once

#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <string>
#include <vector>

#include "../scratch_paths.h"

namespace {

struct ModelBuilder {
  onnx::ModelProto m;
  onnx::GraphProto* g;
  ModelBuilder(int opset = 17) {
    m.set_ir_version(8);
    auto* o = m.add_opset_import();
    o->set_version(opset);
    g = m.mutable_graph();
    g->set_name("t");
  }
  void io(bool input, const std::string& name, int type, std::vector<std::string> dims) {
    auto* v = input ? g->add_input() : g->add_output();
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(type);
    for (const auto& d : dims) {
      auto* dd = t->mutable_shape()->add_dim();
      if (std::isdigit(static_cast<unsigned char>(d[0]))) dd->set_dim_value(std::stoll(d));
      else dd->set_dim_param(d);
    }
  }
  void initF(const std::string& name, std::vector<int64_t> dims, std::vector<float> v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(1);
    for (auto d : dims) t->add_dims(d);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  }
  void initI(const std::string& name, std::vector<int64_t> dims, std::vector<int64_t> v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(7);
    for (auto d : dims) t->add_dims(d);
    for (auto x : v) t->add_int64_data(x);
  }
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(op + std::to_string(g->node_size()));
    for (auto& i : in) n->add_input(i);
    for (auto& o : out) n->add_output(o);
    return n;
  }
  std::string save(const std::string& tag) {
    std::string path = testutil::removeAtExit("/tmp/crt-test-" + tag + "-" + std::to_string(::getpid()) + ".onnx");
    std::ofstream f(path, std::ios::binary);
    m.SerializeToOstream(&f);
    return path;
  }
};

/// y = x W^n: a chain of `n` MatMuls with W [256, 256] all 1/256 (each row of y is its row of x's mean), on an input
/// of m rows (symbolic); with `constant`, x is an initializer [m, 256] of ones and the whole chain folds at load.
inline std::string matmulChain(const std::string& tag, int n, bool constant, int64_t m = 1) {
  ModelBuilder b;
  b.initF("W", {256, 256}, std::vector<float>(256 * 256, 1.f / 256));
  if (constant) b.initF("x", {m, 256}, std::vector<float>(m * 256, 1.f));
  else b.io(true, "x", 1, {"m", "256"});
  b.io(false, "y", 1, {constant ? std::to_string(m) : "m", "256"});
  std::string prev = "x";
  for (int i = 0; i < n; ++i) {
    const std::string out = i + 1 == n ? "y" : "h" + std::to_string(i);
    b.node("MatMul", {prev, "W"}, {out});
    prev = out;
  }
  return b.save(tag);
}

/// An initializer of ONNX type `type` whose raw data is `bytes`.
inline void initRaw(ModelBuilder& b, const std::string& name, std::vector<int64_t> dims, int type, const std::string& bytes) {
  auto* t = b.g->add_initializer();
  t->set_name(name);
  t->set_data_type(type);
  for (auto d : dims) t->add_dims(d);
  t->set_raw_data(bytes);
}

template <typename T>
std::string bytesOf(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

inline void attrInt(onnx::NodeProto* n, const std::string& k, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(k);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

/// y = com.microsoft MatMulNBits(x) with 4-bit weights B [N][n_blocks][block / 2], float scales and packed
/// zero points (initializers "B", "S", "Z"; the model must import the com.microsoft domain).
inline void matMulNBits4(ModelBuilder& b, int64_t K, int64_t N, int64_t block, const std::vector<uint8_t>& q,
                         const std::vector<float>& scales, const std::vector<uint8_t>& zp) {
  const int64_t nblk = (K + block - 1) / block;
  initRaw(b, "B", {N, nblk, block / 2}, 2, bytesOf(q));
  b.initF("S", {N * nblk}, scales);
  initRaw(b, "Z", {static_cast<int64_t>(zp.size())}, 2, bytesOf(zp));
  auto* n = b.node("MatMulNBits", {"x", "B", "S", "Z"}, {"y"});
  n->set_domain("com.microsoft");
  attrInt(n, "K", K);
  attrInt(n, "N", N);
  attrInt(n, "bits", 4);
  attrInt(n, "block_size", block);
}

inline void attrStr(onnx::NodeProto* n, const std::string& k, const std::string& v) {
  auto* a = n->add_attribute();
  a->set_name(k);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(v);
}

inline void attrInts(onnx::NodeProto* n, const std::string& k, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(k);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t e : v) a->add_ints(e);
}

}  // namespace
