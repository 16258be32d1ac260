// onnx_mutator.h — structure-aware mutations of .onnx bytes for fuzz_onnx (onnx_mutator.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fuzz {

/// The kinds of edit mutateOnnx makes: op type, node input, attribute, initializer, graph input dim, node order.
constexpr int kOnnxMutations = 6;

/// Mutates the model in data[0, size) in place (at most max_size bytes) and returns its new size: one structural edit
/// of the parsed ModelProto, or libFuzzer's byte mutations for a quarter of the calls and for bytes that do not parse.
size_t mutateOnnx(uint8_t* data, size_t size, size_t max_size, unsigned int seed);

/// Which kind the last mutateOnnx call made (0 .. kOnnxMutations - 1), or -1 for byte mutations.
extern int lastOnnxMutation;

}  // namespace fuzz
