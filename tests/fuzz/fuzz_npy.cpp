// fuzz_npy.cpp — the .npy reader (compress/npy.cpp) on arbitrary bytes, then the token-stream conversion.
#include <cstdint>
#include <cstring>

#include "compress/npy.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expectCleanErrors([&] {
    compress::NpyArray a = compress::parseNpy(bytes, "fuzz.npy");
    if (static_cast<int64_t>(a.data.size()) != a.numel() * static_cast<int64_t>(a.itemSize())) fuzz::bug("data size differs from the header");
    int64_t sum = 0;  // touch every byte: the sanitizers see any read past the data
    for (char c : a.data) sum += c;
    (void)sum;
  });
  return 0;
}
