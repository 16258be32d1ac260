// fuzz_cir.cpp — the model.cir container checks (compress/cir_format.cpp) on arbitrary bytes: every tensor
// entry that passes must lie inside the data section with the size its dtype and shape say.
#include <cstdint>

#include "compress/cir_format.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expectCleanErrors([&] {
    compress::CirFile f = compress::parseCir(bytes, "fuzz.cir");
    for (const compress::CirTensor& t : f.tensors) {
      if (t.offset + t.nbytes > f.data_size) fuzz::bug("tensor outside the data");
      int64_t sum = 0;
      for (size_t i = 0; i < t.nbytes; ++i) sum += f.data[t.offset + i];
      (void)sum;
    }
  });
  return 0;
}
