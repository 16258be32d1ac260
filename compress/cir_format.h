// cir_format.h — the model.cir container, without LibTorch: magic "CMPIR001", uint64 header length, JSON
// header, raw tensor data with an FNV-1a hash. parseCir() checks everything a file says about its tensors
// (types, dims, offsets, lengths, hash) before serialize.cpp allocates any tensor, so a crafted file gets
// a clear Error(Model), never an allocation sized by an unchecked field. Fuzzed by tests/fuzz/fuzz_cir.cpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace compress {

constexpr char kCirMagic[9] = "CMPIR001";

uint64_t fnv1a64(const char* p, size_t n);

/// Bytes per element of an IR dtype code (compress/graph.h DType), 0 for codes the format does not hold.
size_t cirItemSize(int dtype);

struct CirTensor {
  std::string name, kind;  // kind: "initializer" or "mask"
  int dtype = 0;
  std::vector<int64_t> shape;
  size_t offset = 0, nbytes = 0;  // inside the data section; nbytes == numel * item size
};

struct CirFile {
  nlohmann::json header;
  const char* data = nullptr;  // points into the bytes given to parseCir
  size_t data_size = 0;
  std::vector<CirTensor> tensors;
};

/// Parses and checks a model.cir held in `bytes` (which must outlive the result); `path` names it in errors.
CirFile parseCir(const std::string& bytes, const std::string& path);

}  // namespace compress
