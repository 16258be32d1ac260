// onnx_mutator.cpp — fuzz_onnx's structure-aware mutations (libFuzzer's LLVMFuzzerCustomMutator). Blind byte
// mutations of an .onnx file mostly break its protobuf framing, so the inputs stop at the parser; these edit a parsed
// ModelProto instead — an op type, a node input, an attribute, a dim, an element type, the raw bytes of a weight, the
// order or number of nodes — and serialize it again, so each input reaches validation, folding, packing and the
// runs with one plausible thing wrong. A quarter of the calls (and every input that does not parse) still get
// libFuzzer's byte mutations.
#include "tests/fuzz/onnx_mutator.h"

#include <onnx/onnx_pb.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "runtime/internal.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace fuzz {
namespace {

using Rng = std::mt19937;

int64_t pick(Rng& r, int64_t n) { return n <= 0 ? 0 : static_cast<int64_t>(r() % static_cast<uint32_t>(n)); }

/// Integers that find edge cases: zero, one, negatives, the int32 and int64 limits, powers of two near them.
int64_t interestingInt(Rng& r) {
  static const std::array<int64_t, 16> v = {0, 1, -1, 2, 3, -2, 4, 7, 8, 32, 64, 255, int64_t{1} << 31,
                                            std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                                            int64_t{1} << 40};
  return v[static_cast<size_t>(pick(r, v.size()))];
}

/// Names a node may read: graph inputs, initializers and node outputs.
std::vector<std::string> valueNames(const onnx::GraphProto& g) {
  std::vector<std::string> names;
  for (const auto& i : g.input()) names.push_back(i.name());
  for (const auto& t : g.initializer()) names.push_back(t.name());
  for (const auto& n : g.node())
    for (const auto& o : n.output()) names.push_back(o);
  return names;
}

bool opType(onnx::GraphProto& g, Rng& r) {
  if (g.node_size() == 0) return false;
  static const std::vector<std::string> ops = crt::detail::supportedOps();
  onnx::NodeProto* n = g.mutable_node(static_cast<int>(pick(r, g.node_size())));
  const std::string& op = ops[static_cast<size_t>(pick(r, static_cast<int64_t>(ops.size())))];
  const size_t dot = op.rfind('.');
  n->set_domain(dot == std::string::npos ? "" : op.substr(0, dot));
  n->set_op_type(dot == std::string::npos ? op : op.substr(dot + 1));
  return true;
}

bool nodeInput(onnx::GraphProto& g, Rng& r) {
  if (g.node_size() == 0) return false;
  onnx::NodeProto* n = g.mutable_node(static_cast<int>(pick(r, g.node_size())));
  const std::vector<std::string> names = valueNames(g);
  const std::string name = pick(r, 8) == 0 || names.empty() ? "" : names[static_cast<size_t>(pick(r, static_cast<int64_t>(names.size())))];
  const int64_t what = pick(r, 3);
  if (what == 0 || n->input_size() == 0) n->add_input(name);  // one input more
  else if (what == 1) n->mutable_input()->RemoveLast();      // one fewer
  else n->set_input(static_cast<int>(pick(r, n->input_size())), name);
  return true;
}

bool attribute(onnx::GraphProto& g, Rng& r) {
  if (g.node_size() == 0) return false;
  static const std::array<const char*, 16> names = {"axis", "axes", "perm", "to", "keepdims", "transA", "transB",
                                                     "block_size", "bits", "K", "N", "accuracy_level", "strides",
                                                     "pads", "group", "epsilon"};
  onnx::NodeProto* n = g.mutable_node(static_cast<int>(pick(r, g.node_size())));
  onnx::AttributeProto* a = nullptr;
  if (n->attribute_size() > 0 && pick(r, 3) != 0) {
    a = n->mutable_attribute(static_cast<int>(pick(r, n->attribute_size())));
  } else {
    a = n->add_attribute();
    a->set_name(names[static_cast<size_t>(pick(r, names.size()))]);
    a->set_type(pick(r, 2) == 0 ? onnx::AttributeProto::INT : onnx::AttributeProto::INTS);
  }
  switch (pick(r, 4)) {
    case 0:
      a->set_i(interestingInt(r));
      if (a->type() != onnx::AttributeProto::INTS) a->set_type(onnx::AttributeProto::INT);
      break;
    case 1:
      if (a->ints_size() > 0 && pick(r, 2) == 0) a->set_ints(static_cast<int>(pick(r, a->ints_size())), interestingInt(r));
      else a->add_ints(interestingInt(r));
      break;
    case 2:
      a->set_f(pick(r, 2) == 0 ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(interestingInt(r)));
      break;
    default:  // a type that does not match the value
      a->set_type(static_cast<onnx::AttributeProto::AttributeType>(pick(r, 15)));
  }
  return true;
}

bool initializer(onnx::GraphProto& g, Rng& r) {
  if (g.initializer_size() == 0) return false;
  onnx::TensorProto* t = g.mutable_initializer(static_cast<int>(pick(r, g.initializer_size())));
  switch (pick(r, 4)) {
    case 0:
      if (t->dims_size() > 0) t->set_dims(static_cast<int>(pick(r, t->dims_size())), interestingInt(r));
      else t->add_dims(interestingInt(r));
      break;
    case 1:
      t->set_data_type(static_cast<int32_t>(pick(r, 24)));
      break;
    case 2:  // the raw bytes shortened or lengthened by a few, or one byte changed
      if (!t->has_raw_data()) return false;
      if (const int64_t k = pick(r, 3); k == 0 && !t->raw_data().empty()) t->mutable_raw_data()->resize(t->raw_data().size() - 1 - pick(r, std::min<int64_t>(8, static_cast<int64_t>(t->raw_data().size()))));
      else if (k == 1) t->mutable_raw_data()->append(static_cast<size_t>(1 + pick(r, 8)), '\x7f');
      else if (!t->raw_data().empty()) (*t->mutable_raw_data())[static_cast<size_t>(pick(r, static_cast<int64_t>(t->raw_data().size())))] ^= static_cast<char>(1 << pick(r, 8));
      break;
    default:  // a dim more or fewer
      if (t->dims_size() > 0 && pick(r, 2) == 0) t->mutable_dims()->RemoveLast();
      else t->add_dims(1 + pick(r, 3));
  }
  return true;
}

bool graphInputDim(onnx::GraphProto& g, Rng& r) {
  if (g.input_size() == 0) return false;
  onnx::TensorShapeProto* s = g.mutable_input(static_cast<int>(pick(r, g.input_size())))->mutable_type()->mutable_tensor_type()->mutable_shape();
  if (s->dim_size() == 0 || pick(r, 4) == 0) {
    s->add_dim()->set_dim_value(1 + pick(r, 4));
    return true;
  }
  onnx::TensorShapeProto::Dimension* d = s->mutable_dim(static_cast<int>(pick(r, s->dim_size())));
  if (pick(r, 2) == 0) d->set_dim_param("n" + std::to_string(pick(r, 3)));
  else d->set_dim_value(interestingInt(r));
  return true;
}

bool nodeOrder(onnx::GraphProto& g, Rng& r) {
  const int n = g.node_size();
  if (n < 2) return false;
  const int64_t what = pick(r, 3);
  const int i = static_cast<int>(pick(r, n)), j = static_cast<int>(pick(r, n));
  if (what == 0) g.mutable_node()->SwapElements(i, j);                       // out of order
  else if (what == 1) g.mutable_node()->DeleteSubrange(i, 1);               // a value nothing defines
  else *g.add_node() = g.node(i);                                            // a name defined twice
  return true;
}

}  // namespace

int lastOnnxMutation = -1;

size_t mutateOnnx(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  Rng r(seed);
  lastOnnxMutation = -1;
  onnx::ModelProto m;
  // (FUZZ_ONNX_MUTATOR=bytes: libFuzzer's byte mutations only, for comparing coverage with and without these edits)
  static const bool bytesOnly = std::getenv("FUZZ_ONNX_MUTATOR") && std::string(std::getenv("FUZZ_ONNX_MUTATOR")) == "bytes";
  if (bytesOnly || pick(r, 4) == 0 || !m.ParseFromArray(data, static_cast<int>(size))) return LLVMFuzzerMutate(data, size, max_size);
  onnx::GraphProto& g = *m.mutable_graph();
  using Mutation = bool (*)(onnx::GraphProto&, Rng&);
  static const std::array<Mutation, kOnnxMutations> mutations = {opType, nodeInput, attribute, initializer, graphInputDim, nodeOrder};
  const int k = static_cast<int>(pick(r, kOnnxMutations));
  std::string out;
  if (!mutations[static_cast<size_t>(k)](g, r) || !m.SerializeToString(&out) || out.size() > max_size ||
      (out.size() == size && std::memcmp(out.data(), data, size) == 0))  // (an edit that changed nothing)
    return LLVMFuzzerMutate(data, size, max_size);
  lastOnnxMutation = k;
  std::memcpy(data, out.data(), out.size());
  return out.size();
}

}  // namespace fuzz
