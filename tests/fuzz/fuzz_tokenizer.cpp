// fuzz_tokenizer.cpp — the llama2.c tokenizer reader (compress/tokenizer.cpp) on arbitrary bytes; a
// tokenizer that loads must encode text and decode every id without error.
#include <cstdint>

#include "compress/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expectCleanErrors([&] {
    compress::Tokenizer t = compress::Tokenizer::parse(bytes, "fuzz.bin");
    const std::vector<int64_t> ids = t.encode("Once upon a time, a caf\xc3\xa9 \xf0\x9f\x98\x80 had 3 cats.\n");
    for (int64_t id : ids)
      if (id < 0 || id >= t.vocabSize()) fuzz::bug("encode gave an id outside the vocabulary");
    for (int64_t id = 0; id < t.vocabSize(); ++id) t.decode(1, id);
  });
  return 0;
}
