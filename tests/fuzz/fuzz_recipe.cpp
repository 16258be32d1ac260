// fuzz_recipe.cpp — the recipe parser (compress/recipe.cpp, options.cpp) on arbitrary YAML: every problem
// must be a config (or i/o) error with its place, never another exception.
#include <cstdint>

#include "compress/recipe.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expectCleanErrors([&] { compress::parseRecipe(text, "/tmp/compress-fuzz/recipe.yaml"); });
  return 0;
}
