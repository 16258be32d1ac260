// model_file.cpp — the protobuf wire-format scan of model_file.h.
#include "runtime/model_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

namespace crt::detail {
namespace {

// The fields the scan looks into (onnx.proto): ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
constexpr uint64_t kModelGraph = 7, kGraphInitializer = 5, kTensorRawData = 9;
constexpr int kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;
constexpr uint64_t kMaxFieldNumber = (uint64_t{1} << 29) - 1;

/// Reads n bytes at off of fd into dst, resuming after signals and short reads.
bool preadAll(int fd, void* dst, int64_t n, int64_t off) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, static_cast<size_t>(std::min<int64_t>(n, int64_t{1} << 30)), off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r, off += r, n -= r;
  }
  return true;
}

/// The file's bytes through pread, a window at a time (the scan reads tags and lengths, and skips the weights).
class FileReader {
 public:
  FileReader(int fd, int64_t size) : fd_(fd), size_(size), window_(static_cast<size_t>(kWindow)) {}

  bool byte(int64_t off, uint8_t& b) {
    if ((off < start_ || off >= start_ + len_) && !fill(off)) return false;
    b = window_[off - start_];
    return true;
  }
  /// Appends the file's bytes [begin, end) to out: through the window when they fit in it (a file of many small
  /// fields costs a read per window, not one per field), else read straight into out.
  bool append(int64_t begin, int64_t end, std::string& out) {
    const size_t at = out.size();
    out.resize(at + static_cast<size_t>(end - begin));
    if (begin == end) return true;
    if (end - begin > kWindow) return preadAll(fd_, &out[at], end - begin, begin);
    if ((begin < start_ || end > start_ + len_) && (!fill(begin) || end > start_ + len_)) return false;
    std::copy(window_.begin() + (begin - start_), window_.begin() + (end - start_), out.begin() + static_cast<std::ptrdiff_t>(at));
    return true;
  }

 private:
  /// The window from off: kWindow bytes, or up to the file's end.
  bool fill(int64_t off) {
    if (off < 0 || off >= size_) return false;
    len_ = std::min<int64_t>(kWindow, size_ - off);
    start_ = off;
    if (!preadAll(fd_, window_.data(), len_, off)) return start_ = len_ = 0, false;
    return true;
  }

  static constexpr int64_t kWindow = 64 << 10;
  int fd_;
  int64_t size_;
  int64_t start_ = 0, len_ = 0;
  std::vector<uint8_t> window_;
};

/// A varint at off (advanced past it), within end.
bool readVarint(FileReader& f, int64_t& off, int64_t end, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    uint8_t b = 0;
    if (off >= end || !f.byte(off++, b)) return false;
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;  // more than 10 bytes
}

void putVarint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>(v | 0x80));
  out.push_back(static_cast<char>(v));
}

/// One field of a message: its number and wire type, where it begins (its tag), where a length-delimited field's
/// payload begins, and where it ends.
struct Field {
  uint64_t number = 0;
  int type = 0;
  int64_t begin = 0, payload = 0, end = 0;
};

/// The field at off, which must end by `end`.
bool readField(FileReader& f, int64_t off, int64_t end, Field& out) {
  uint64_t tag = 0, value = 0;
  out.begin = off;
  if (!readVarint(f, off, end, tag)) return false;
  out.number = tag >> 3;
  out.type = static_cast<int>(tag & 7);
  if (out.number == 0 || out.number > kMaxFieldNumber) return false;
  out.payload = off;
  switch (out.type) {
    case kVarint:
      if (!readVarint(f, off, end, value)) return false;
      out.end = off;
      return true;
    case kFixed64:
    case kFixed32: {
      const int64_t n = out.type == kFixed64 ? 8 : 4;
      if (end - off < n) return false;
      out.end = off + n;
      return true;
    }
    case kLengthDelimited:
      if (!readVarint(f, off, end, value) || value > static_cast<uint64_t>(end - off)) return false;
      out.payload = off;
      out.end = off + static_cast<int64_t>(value);
      return true;
    default:
      return false;  // groups and reserved wire types: left to protobuf
  }
}

/// Appends a length-delimited field `number` holding `payload`.
void putMessage(std::string& out, uint64_t number, const std::string& payload) {
  putVarint(out, number << 3 | kLengthDelimited);
  putVarint(out, payload.size());
  out += payload;
}

/// The TensorProto [begin, end) less its raw_data, whose span goes to `raw` (the last one, as protobuf keeps).
bool stripTensor(FileReader& f, int64_t begin, int64_t end, std::string& out, RawSpan& raw) {
  for (int64_t off = begin; off < end;) {
    Field field;
    if (!readField(f, off, end, field)) return false;
    if (field.number == kTensorRawData && field.type == kLengthDelimited) raw = {field.payload, field.end - field.payload};
    else if (!f.append(field.begin, field.end, out)) return false;
    off = field.end;
  }
  return true;
}

/// The GraphProto [begin, end) with its initializers stripped, their spans appended to `spans` in order.
bool stripGraph(FileReader& f, int64_t begin, int64_t end, std::string& out, std::vector<RawSpan>& spans) {
  for (int64_t off = begin; off < end;) {
    Field field;
    if (!readField(f, off, end, field)) return false;
    if (field.number == kGraphInitializer && field.type == kLengthDelimited) {
      std::string tensor;
      RawSpan raw;
      if (!stripTensor(f, field.payload, field.end, tensor, raw)) return false;
      putMessage(out, kGraphInitializer, tensor);
      spans.push_back(raw);
    } else if (!f.append(field.begin, field.end, out)) {
      return false;
    }
    off = field.end;
  }
  return true;
}

}  // namespace

bool stripWeights(int fd, int64_t size, StrippedModel& out) {
  out = StrippedModel();
  FileReader f(fd, size);
  for (int64_t off = 0; off < size;) {
    Field field;
    if (!readField(f, off, size, field)) return false;
    if (field.number == kModelGraph && field.type == kLengthDelimited) {
      std::string graph;
      if (!stripGraph(f, field.payload, field.end, graph, out.spans)) return false;
      putMessage(out.proto, kModelGraph, graph);
    } else if (!f.append(field.begin, field.end, out.proto)) {
      return false;
    }
    off = field.end;
  }
  return true;
}

bool readWeightBytes(int fd, const RawSpan& span, void* dst) { return preadAll(fd, dst, span.size, span.offset); }

}  // namespace crt::detail
