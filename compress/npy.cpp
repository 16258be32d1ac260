// npy.cpp — the .npy format: magic "\x93NUMPY", version, header length, a Python-dict header, raw data.
#include "compress/npy.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "compress/error.h"

namespace compress {

size_t NpyArray::itemSize() const {
  if (descr.size() < 3) return 0;
  return static_cast<size_t>(std::stoul(descr.substr(2)));
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

NpyArray readNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorCategory::Io, "cannot open '" + path + "': check the path");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto bad = [&](const std::string& why) {
    fail(ErrorCategory::Data, "'" + path + "' is not a valid .npy file: " + why +
                                  ". Write it with numpy.save(path, array).");
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) bad("missing the \\x93NUMPY magic");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t hlen, off;
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
  if (bytes.size() < off + hlen) bad("truncated header");
  std::string header = bytes.substr(off, hlen);
  NpyArray a;
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr'\\s*:\\s*'([^']+)'"))) bad("header has no 'descr'");
  a.descr = m[1];
  if (!std::regex_search(header, m, std::regex("'fortran_order'\\s*:\\s*(True|False)"))) bad("header has no 'fortran_order'");
  if (m[1] == "True") bad("Fortran-ordered arrays are not supported (use numpy.ascontiguousarray)");
  if (!std::regex_search(header, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)"))) bad("header has no 'shape'");
  std::string dims = m[1];
  std::regex num("(\\d+)");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it)
    a.shape.push_back(std::stoll((*it)[1]));
  if (a.descr[0] == '>') bad("big-endian dtype " + a.descr + " is not supported");
  if (a.itemSize() == 0) bad("unsupported dtype " + a.descr);
  size_t need = static_cast<size_t>(a.numel()) * a.itemSize();
  size_t have = bytes.size() - off - hlen;
  if (have < need)
    fail(ErrorCategory::Data, "'" + path + "' is truncated: its header promises " + std::to_string(need) +
                                  " bytes of data but the file holds " + std::to_string(have) +
                                  ". Re-create or re-copy the file.");
  a.data.assign(bytes.begin() + static_cast<long>(off + hlen), bytes.begin() + static_cast<long>(off + hlen + need));
  return a;
}

void writeFileAtomic(const std::string& path, const std::string& bytes) {
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

void writeNpy(const std::string& path, const NpyArray& a) {
  std::ostringstream h;
  h << "{'descr': '" << a.descr << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < a.shape.size(); ++i) h << a.shape[i] << (a.shape.size() == 1 || i + 1 < a.shape.size() ? "," : "");
  h << "), }";
  std::string header = h.str();
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
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
