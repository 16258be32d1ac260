// op_table.h — the one op table (rows in op_table.def), read by the importer's emitter, the executor,
// the runtime's loader and kernel table, the fp16 pass and the pruning analyses. No LibTorch.
#pragma once

#include <cstdint>
#include <string_view>

namespace crt {

/// What the rest of the code may assume about an op (see op_table.def for each trait's meaning).
namespace op_trait {
constexpr uint32_t Unary = 1u << 0, Bcast = 1u << 1, ShapeOnly = 1u << 2, Fp16 = 1u << 3, Prune = 1u << 4,
                   View = 1u << 5, Logic = 1u << 6, PerChannel = 1u << 7,
                   Homogeneous = 1u << 8, OwnType = 1u << 9, BoolOut = 1u << 10;
}  // namespace op_trait

struct OpInfo {
  std::string_view domain;  // "" = ai.onnx
  std::string_view name;
  int min_inputs, max_inputs;
  int outputs;  // -1: any number (Split)
  uint32_t traits;
  bool has(uint32_t t) const { return (traits & t) == t; }
};

namespace detail_table {
using namespace op_trait;
inline constexpr OpInfo kOpTable[] = {
#define OP(name, lo, hi, outs, traits) {"", #name, lo, hi, outs, traits},
#define OPD(domain, name, lo, hi, outs, traits) {#domain, #name, lo, hi, outs, traits},
#include "runtime/op_table.def"
#undef OP
#undef OPD
};
}  // namespace detail_table

/// Every op, in table order.
constexpr const OpInfo* opTableBegin() { return detail_table::kOpTable; }
constexpr const OpInfo* opTableEnd() { return detail_table::kOpTable + sizeof(detail_table::kOpTable) / sizeof(OpInfo); }

/// The row of `domain`.`name` ("" or "ai.onnx" for the default domain), or nullptr.
inline const OpInfo* findOpInfo(std::string_view domain, std::string_view name) {
  if (domain == "ai.onnx") domain = "";
  for (const OpInfo* p = opTableBegin(); p != opTableEnd(); ++p)
    if (p->name == name && p->domain == domain) return p;
  return nullptr;
}

/// True when the default-domain op `name` is in the table and has every trait in `traits`.
inline bool opHas(std::string_view name, uint32_t traits) {
  const OpInfo* p = findOpInfo("", name);
  return p && p->has(traits);
}

}  // namespace crt
