// cir_format.cpp — model.cir container checks (see cir_format.h).
#include "compress/cir_format.h"

#include <cstring>

#include "compress/error.h"
#include "runtime/size_check.h"

namespace compress {

uint64_t fnv1a64(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 1099511628211ULL;
  return h;
}

size_t cirItemSize(int dtype) {
  switch (dtype) {
    case 1: case 6: return 4;          // float32, int32
    case 2: case 3: case 9: return 1;  // uint8, int8, bool
    case 7: case 11: return 8;         // int64, float64
    case 10: case 16: return 2;        // float16, bfloat16
  }
  return 0;
}

CirFile parseCir(const std::string& bytes, const std::string& path) {
  auto bad = [&](const std::string& why) {
    fail(ErrorCategory::Model, "'" + path + "' is not a valid compressed model (model.cir): " + why +
                                   ". Re-run the recipe that produced it.");
  };
  if (bytes.size() < 16 || bytes.compare(0, 8, kCirMagic) != 0) bad("wrong magic");
  uint64_t hl;
  std::memcpy(&hl, bytes.data() + 8, 8);
  if (hl > bytes.size() - 16) bad("truncated header");
  CirFile f;
  try {
    f.header = nlohmann::json::parse(bytes.begin() + 16, bytes.begin() + 16 + static_cast<long>(hl));
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("corrupt header (") + e.what() + ")");
  }
  f.data = bytes.data() + 16 + hl;
  f.data_size = bytes.size() - 16 - hl;
  try {
    const nlohmann::json& h = f.header;
    if (!h.is_object()) bad("the header is not a JSON object");
    if (h.at("data_bytes").get<uint64_t>() != f.data_size)
      bad("data is " + std::to_string(f.data_size) + " bytes, the header says " + std::to_string(h.at("data_bytes").get<uint64_t>()));
    for (const auto& jt : h.at("tensors")) {
      CirTensor t;
      t.name = jt.at("name").get<std::string>();
      t.kind = jt.at("kind").get<std::string>();
      if (t.kind != "initializer" && t.kind != "mask") bad("tensor '" + t.name + "' has an unknown kind '" + t.kind + "'");
      t.dtype = jt.at("dtype").get<int>();
      const size_t item = cirItemSize(t.dtype);
      if (item == 0) bad("tensor '" + t.name + "' has an unknown dtype code " + std::to_string(t.dtype));
      t.shape = jt.at("shape").get<std::vector<int64_t>>();
      int64_t numel = 0, nbytes = 0;
      if (t.shape.size() > 16 || !crt::checkedNumel(t.shape.data(), t.shape.size(), &numel) ||
          !crt::checkedBytes(numel, static_cast<int64_t>(item), &nbytes))
        bad("tensor '" + t.name + "' has a negative or too large shape");
      t.offset = jt.at("offset").get<uint64_t>();
      t.nbytes = jt.at("nbytes").get<uint64_t>();
      if (t.nbytes != static_cast<size_t>(nbytes)) bad("tensor '" + t.name + "' has an inconsistent size");
      if (t.offset > f.data_size || t.nbytes > f.data_size - t.offset) bad("tensor '" + t.name + "' lies outside the data");
      f.tensors.push_back(std::move(t));
    }
    // last: the structure checks above then run even on inputs whose hash a fuzzer cannot fix up
    if (h.at("data_fnv1a64").get<uint64_t>() != fnv1a64(f.data, f.data_size)) bad("data checksum mismatch (the file is corrupt)");
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("malformed header (") + e.what() + ")");
  }
  return f;
}

}  // namespace compress
