// npy.h — NumPy .npy read/write (format versions 1.0-3.0, little-endian, C order), no LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace compress {

struct NpyArray {
  std::string descr;            // numpy dtype string: "<i4", "<i8", "<f4", "<f2", "|u1", "|b1", ...
  std::vector<int64_t> shape;
  std::vector<char> data;       // raw little-endian element bytes, C order
  size_t itemSize() const;
  int64_t numel() const;
};

/// Reads a .npy file. Error(Io) when unreadable; Error(Data) for a bad magic, a malformed header,
/// Fortran order, a big-endian dtype or a file shorter than its header promises (with both byte counts).
NpyArray readNpy(const std::string& path);
/// Writes a .npy file atomically (temp file + rename).
void writeNpy(const std::string& path, const NpyArray& a);

/// A 1-D (or flattened N-D) int32/int64 token stream as int64. Error(Data) for other dtypes and for
/// negative ids.
std::vector<int64_t> readTokenStream(const std::string& path);

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
void writeFileAtomic(const std::string& path, const std::string& bytes);

}  // namespace compress
