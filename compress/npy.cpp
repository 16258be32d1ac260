// npy.cpp — the .npy format: magic "\x93NUMPY", version, header length, a Python-dict header, raw data.
#include "compress/npy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "compress/error.h"
#include "runtime/size_check.h"

namespace compress {

namespace {

/// The element types a .npy file may hold here, with their sizes (little-endian or byte-sized only).
struct NpyType {
  const char* descr;
  size_t size;
};
constexpr NpyType kNpyTypes[] = {{"<f2", 2}, {"<f4", 4}, {"<f8", 8}, {"|i1", 1}, {"|u1", 1}, {"|b1", 1},
                                 {"<i2", 2}, {"<i4", 4}, {"<i8", 8}, {"<u2", 2}, {"<u4", 4}, {"<u8", 8}};

/// A strict reader of the header dict numpy writes: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(const std::string& h, const std::function<void(const std::string&)>& bad) : h_(h), bad_(bad) {}

  void parse(NpyArray& a) {
    bool fortran = false;
    std::set<std::string> seen;
    expect('{');
    while (true) {
      skipSpace();
      if (peek() == '}') break;
      const std::string key = quoted();
      if (!seen.insert(key).second) bad_("the header repeats the key '" + key + "'");
      expect(':');
      skipSpace();
      if (key == "descr") a.descr = quoted();
      else if (key == "fortran_order") fortran = boolean();
      else if (key == "shape") a.shape = tuple();
      else bad_("unknown header key '" + key + "'");
      skipSpace();
      if (peek() == ',') ++i_;
      else if (peek() != '}') bad_("expected ',' or '}' in the header at offset " + std::to_string(i_));
    }
    ++i_;
    for (; i_ < h_.size(); ++i_)
      if (h_[i_] != ' ' && h_[i_] != '\n' && h_[i_] != '\0') bad_("unexpected bytes after the header dict");
    for (const char* k : {"descr", "fortran_order", "shape"})
      if (!seen.count(k)) bad_(std::string("header has no '") + k + "'");
    if (fortran) bad_("Fortran-ordered arrays are not supported (use numpy.ascontiguousarray)");
  }

 private:
  char peek() const { return i_ < h_.size() ? h_[i_] : '\0'; }
  void skipSpace() {
    while (i_ < h_.size() && (h_[i_] == ' ' || h_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    skipSpace();
    if (peek() != c) bad_(std::string("expected '") + c + "' in the header at offset " + std::to_string(i_));
    ++i_;
  }
  std::string quoted() {
    skipSpace();
    const char q = peek();
    if (q != '\'' && q != '"') bad_("expected a quoted string in the header at offset " + std::to_string(i_));
    const size_t end = h_.find(q, i_ + 1);
    if (end == std::string::npos || end - i_ > 64) bad_("unterminated string in the header");
    std::string s = h_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return s;
  }
  bool boolean() {
    if (h_.compare(i_, 4, "True") == 0) return i_ += 4, true;
    if (h_.compare(i_, 5, "False") == 0) return i_ += 5, false;
    bad_("fortran_order must be True or False");
    return false;
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skipSpace();
      if (peek() == ')') break;
      if (peek() == '-') bad_("the shape has a negative dim");
      size_t start = i_;
      while (i_ < h_.size() && std::isdigit(static_cast<unsigned char>(h_[i_]))) ++i_;
      if (i_ == start) bad_("the shape must be a tuple of integers");
      if (i_ - start > 15) bad_("the shape has a dim of more than 15 digits");
      dims.push_back(std::stoll(h_.substr(start, i_ - start)));
      if (dims.size() > 32) bad_("the shape has more than 32 dims");
      skipSpace();
      if (peek() == ',') ++i_;
      else if (peek() != ')') bad_("the shape must be a tuple of integers");
    }
    ++i_;
    return dims;
  }

  const std::string& h_;
  const std::function<void(const std::string&)>& bad_;
  size_t i_ = 0;
};

}  // namespace

size_t NpyArray::itemSize() const {
  for (const NpyType& t : kNpyTypes)
    if (descr == t.descr) return t.size;
  return 0;
}

int64_t NpyArray::numel() const {
  int64_t n = 0;
  return crt::checkedNumel(shape.data(), shape.size(), &n) ? n : -1;
}

NpyArray parseNpy(const std::string& bytes, const std::string& path) {
  const std::function<void(const std::string&)> bad = [&](const std::string& why) {
    fail(ErrorCategory::Data, "'" + path + "' is not a valid .npy file: " + why + ". Write it with numpy.save(path, array).");
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) bad("missing the \\x93NUMPY magic");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t hlen = 0, off = 0;
  if (major == 1) {
    hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    off = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad("truncated header");
    uint32_t h;
    std::memcpy(&h, bytes.data() + 8, 4);
    hlen = h;
    off = 12;
  } else {
    bad("unknown format version " + std::to_string(major));
  }
  if (hlen > bytes.size() - off) bad("truncated header");
  NpyArray a;
  HeaderParser(bytes.substr(off, hlen), bad).parse(a);
  if (!a.descr.empty() && a.descr[0] == '>') bad("big-endian dtype " + a.descr + " is not supported (use array.astype('<" + a.descr.substr(1) + "'))");
  if (a.itemSize() == 0) {
    std::string known;
    for (const NpyType& t : kNpyTypes) known += std::string(known.empty() ? "" : ", ") + t.descr;
    bad("unsupported dtype '" + a.descr + "' (supported: " + known + ")");
  }
  int64_t need = 0;
  if (a.numel() < 0 || !crt::checkedBytes(a.numel(), static_cast<int64_t>(a.itemSize()), &need))
    bad("the shape has more than 2^48 elements");
  const size_t have = bytes.size() - off - hlen;
  if (have < static_cast<size_t>(need))
    fail(ErrorCategory::Data, "'" + path + "' is truncated: its header promises " + std::to_string(need) +
                                  " bytes of data but the file holds " + std::to_string(have) +
                                  ". Re-create or re-copy the file.");
  if (have > static_cast<size_t>(need))
    bad("it holds " + std::to_string(have) + " bytes of data but its header (" + a.descr + ", " + std::to_string(a.numel()) +
        " values) describes " + std::to_string(need) + ": the header does not match the data");
  a.data.assign(bytes.begin() + static_cast<long>(off + hlen), bytes.end());
  return a;
}

NpyArray readNpy(const std::string& path) {
  return parseNpy(readRegularFile(path, "a .npy file"), path);
}

int64_t checkRegularFile(const std::string& path, const std::string& what) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) fail(ErrorCategory::Io, "cannot open '" + path + "': " + std::strerror(errno) + " (check the path)");
  if (S_ISDIR(st.st_mode)) fail(ErrorCategory::Io, "'" + path + "' is a folder; give " + what);
  if (!S_ISREG(st.st_mode)) fail(ErrorCategory::Io, "'" + path + "' is not a regular file (a device, pipe or socket); give " + what);
  return static_cast<int64_t>(st.st_size);
}

std::string readRegularFile(const std::string& path, const std::string& what) {
  const int64_t size = checkRegularFile(path, what);
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorCategory::Io, "cannot read '" + path + "': check its permissions");
  std::string bytes(static_cast<size_t>(size), '\0');
  f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (static_cast<size_t>(f.gcount()) != bytes.size()) fail(ErrorCategory::Io, "cannot read all of '" + path + "'");
  return bytes;
}

void refuseNonRegular(const std::string& path) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) return;  // nothing there yet
  if (S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode) ? "a folder" : S_ISLNK(st.st_mode) ? "a symbolic link" : "a device, pipe or socket";
  fail(ErrorCategory::Io, "'" + path + "' is " + kind + ", not a regular file: refusing to replace it (give a file path)");
}

void writeFileAtomic(const std::string& path, const std::string& bytes) {
  refuseNonRegular(path);
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) fail(ErrorCategory::Io, "cannot write '" + tmp + "': " + std::strerror(errno));
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = std::fflush(f) == 0 && ok;
    ok = ::fsync(fileno(f)) == 0 && ok;
    ok = std::fclose(f) == 0 && ok;
    if (!ok) {
      std::remove(tmp.c_str());
      fail(ErrorCategory::Io, "writing '" + path + "' failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(ErrorCategory::Io, "cannot move the new file into place at '" + path + "': " + std::strerror(errno));
  }
}

std::string npyPreamble(const std::string& dict) {
  std::string header = dict;
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header;
}

void writeNpy(const std::string& path, const NpyArray& a) {
  std::ostringstream h;
  h << "{'descr': '" << a.descr << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < a.shape.size(); ++i) h << a.shape[i] << (a.shape.size() == 1 || i + 1 < a.shape.size() ? "," : "");
  h << "), }";
  std::string out = npyPreamble(h.str());
  out.append(a.data.begin(), a.data.end());
  writeFileAtomic(path, out);
}

std::vector<int64_t> readTokenStream(const std::string& path) {
  NpyArray a = readNpy(path);
  std::vector<int64_t> out(static_cast<size_t>(a.numel()));
  if (a.descr == "<i4") {
    for (size_t i = 0; i < out.size(); ++i) {
      int32_t v;
      std::memcpy(&v, a.data.data() + 4 * i, 4);
      out[i] = v;
    }
  } else if (a.descr == "<i8") {
    std::memcpy(out.data(), a.data.data(), 8 * out.size());
  } else {
    fail(ErrorCategory::Data, "'" + path + "' holds " + a.descr + " values; a token stream must be int32 or int64");
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] < 0)
      fail(ErrorCategory::Data, "'" + path + "' has a negative token id " + std::to_string(out[i]) + " at position " + std::to_string(i));
  return out;
}

}  // namespace compress
