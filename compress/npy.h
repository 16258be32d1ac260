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
  size_t itemSize() const;  // 0 for a dtype the reader does not accept
  int64_t numel() const;     // -1 when the shape is negative or overflows
};

/// Reads a .npy file. Error(Io) when unreadable or not a regular file; Error(Data) for a bad magic, a
/// header that is not exactly numpy's dict (unknown or repeated keys, a negative or huge dim), Fortran
/// order, a big-endian or unknown dtype, or data shorter or longer than the header says (both byte counts).
NpyArray readNpy(const std::string& path);
/// The same checks on bytes already in memory (`path` names them in errors).
NpyArray parseNpy(const std::string& bytes, const std::string& path);

/// The bytes of a regular file; Error(Io) naming `what` the caller expects when `path` is missing, a
/// folder, a device, pipe or socket, or unreadable.
std::string readRegularFile(const std::string& path, const std::string& what);
/// The same checks without reading; returns the file's size.
int64_t checkRegularFile(const std::string& path, const std::string& what);
/// Error(Io) when `path` exists and is not a regular file (a folder, symlink, device): outputs never
/// replace those.
void refuseNonRegular(const std::string& path);
/// Magic, version 1.0, length and `dict` padded to 64 bytes: everything of a .npy file before its data.
std::string npyPreamble(const std::string& dict);
/// Writes a .npy file atomically (temp file + rename).
void writeNpy(const std::string& path, const NpyArray& a);

/// A 1-D (or flattened N-D) int32/int64 token stream as int64. Error(Data) for other dtypes and for
/// negative ids.
std::vector<int64_t> readTokenStream(const std::string& path);

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
void writeFileAtomic(const std::string& path, const std::string& bytes);

}  // namespace compress
