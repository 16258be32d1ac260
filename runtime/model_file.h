// model_file.h — an ONNX file's weights located without copying them twice.
//
// Protobuf copies every initializer's raw_data into a string of its own while it parses, and the loader then
// copied each into the runtime's aligned memory: two passes over the weights into new pages, most of a large
// model's load (538 MB of fp32 weights: parse 0.8 s, copy 0.6 s on a 2-core Zen 3 VM). stripWeights reads the
// file's protobuf wire format instead: it copies everything but the main graph's initializers' raw_data (the
// graph's structure, kilobytes to a few MB) for protobuf to parse, and records where each raw_data lies in the
// file, so the loader reads each weight once, straight into its own memory (readWeightBytes).
//
// The scan trusts nothing: every tag, varint and length is checked against the bytes that remain, and anything
// it does not expect (groups, a truncated field, a varint over 10 bytes) makes it give up, so the caller parses
// the file whole as before and reports protobuf's error. Protobuf's semantics are kept: a graph field written
// twice is merged by protobuf from the two stripped copies (initializers in file order, which is also the order
// of the recorded spans), and a tensor with two raw_data fields takes the last.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace crt::detail {

/// Where one initializer's raw_data lies in the file (offset -1: the tensor has none).
struct RawSpan {
  int64_t offset = -1;
  int64_t size = 0;
};

/// The model file less the main graph's initializers' raw_data, and where each was (spans[i]: initializer i of
/// the parsed graph).
struct StrippedModel {
  std::string proto;
  std::vector<RawSpan> spans;
};

/// Scans the ONNX file open as fd (`size` bytes). False when the bytes are not the protobuf shape it expects: the
/// caller then parses the file whole (and protobuf reports what is wrong).
bool stripWeights(int fd, int64_t size, StrippedModel& out);

/// Reads `span` of the file open as fd into dst; false on a short read (the file changed since the scan).
bool readWeightBytes(int fd, const RawSpan& span, void* dst);

}  // namespace crt::detail
