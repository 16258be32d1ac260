// tokenizer_test.cpp — llama2.c encoder: reproduces the shared pre-tokenized stream exactly.
#include "compress/tokenizer.h"

#include <catch2/catch.hpp>
#include <fstream>

#include "compress/data.h"
#include "compress/error.h"
#include "compress/npy.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

TEST_CASE("tokenizing val.txt by paragraphs reproduces val.tok512.npy exactly", "[tokenizer][shared]") {
  if (!testutil::haveShared()) return;
  Tokenizer tok = Tokenizer::load(testutil::shared("models/stories260K/tok512.bin"));
  CHECK(tok.vocabSize() == 512);
  auto ids = tokenizeParagraphs(tok, readFile(testutil::shared("data/tinystories/val.txt")));
  auto ref = readTokenStream(testutil::shared("data/tinystories/val.tok512.npy"));
  REQUIRE(ids.size() == ref.size());
  size_t first_diff = ids.size();
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] != ref[i]) {
      first_diff = i;
      break;
    }
  CHECK(first_diff == ids.size());
  CHECK(ref.size() == 384962);
}

TEST_CASE("encode and decode round trip, byte fallback for unknown characters", "[tokenizer][shared]") {
  if (!testutil::haveShared()) return;
  Tokenizer tok = Tokenizer::load(testutil::shared("models/stories260K/tok512.bin"));
  std::string text = "Once upon a time, there was a little girl named Lily. \xE2\x98\x83";
  auto ids = tok.encode(text);
  std::string back;
  int64_t prev = Tokenizer::kBos;
  for (auto id : ids) back += tok.decode(prev, id), prev = id;
  CHECK(back == text);
  CHECK(ids.size() < text.size());  // merges happened
}

TEST_CASE("malformed tokenizer files are data errors", "[tokenizer][errors]") {
  std::string dir = testutil::tempDir("");
  std::ofstream(dir + "/short.bin", std::ios::binary) << "ab";
  CHECK_THROWS_WITH(Tokenizer::load(dir + "/short.bin"), Contains("file is too short"));
  {
    std::ofstream f(dir + "/bad.bin", std::ios::binary);
    int32_t max_len = 8;
    float score = 0;
    int32_t len = 100;  // longer than max_token_length
    f.write(reinterpret_cast<char*>(&max_len), 4);
    f.write(reinterpret_cast<char*>(&score), 4);
    f.write(reinterpret_cast<char*>(&len), 4);
  }
  CHECK_THROWS_WITH(Tokenizer::load(dir + "/bad.bin"), Contains("token 0 has invalid length 100"));
  CHECK_THROWS_AS(Tokenizer::load(dir + "/missing.bin"), Error);
}
