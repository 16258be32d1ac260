// npy_test.cpp — .npy round trip and every malformed-file error.
#include "compress/npy.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>

#include "compress/error.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("npy round trip keeps dtype, shape and values", "[npy]") {
  std::string p = testutil::tempDir("") + "/a.npy";
  NpyArray a;
  a.descr = "<i4";
  a.shape = {5};
  int32_t v[5] = {1, 2, 300, 4, 70000};
  a.data.assign(reinterpret_cast<char*>(v), reinterpret_cast<char*>(v) + sizeof v);
  writeNpy(p, a);
  NpyArray b = readNpy(p);
  CHECK(b.descr == "<i4");
  CHECK(b.shape == std::vector<int64_t>{5});
  CHECK(readTokenStream(p) == std::vector<int64_t>{1, 2, 300, 4, 70000});
}

TEST_CASE("npy errors: truncated, bad magic, wrong dtype, negative ids, missing file", "[npy][errors]") {
  std::string dir = testutil::tempDir("");
  NpyArray a;
  a.descr = "<i8";
  a.shape = {4};
  int64_t v[4] = {1, 2, 3, 4};
  a.data.assign(reinterpret_cast<char*>(v), reinterpret_cast<char*>(v) + sizeof v);
  writeNpy(dir + "/ok.npy", a);
  std::string bytes = slurp(dir + "/ok.npy");

  std::ofstream(dir + "/trunc.npy", std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  CHECK_THROWS_WITH(readNpy(dir + "/trunc.npy"), Contains("is truncated: its header promises 32 bytes of data but the file holds 27"));

  std::string bad = bytes;
  bad[1] = 'X';
  bad[2] = 'X';
  std::ofstream(dir + "/magic.npy", std::ios::binary) << bad;
  CHECK_THROWS_WITH(readNpy(dir + "/magic.npy"), Contains("missing the \\x93NUMPY magic"));

  NpyArray f = a;
  f.descr = "<f8";
  writeNpy(dir + "/float.npy", f);
  CHECK_THROWS_WITH(readTokenStream(dir + "/float.npy"), Contains("a token stream must be int32 or int64"));

  NpyArray n = a;
  int64_t neg[4] = {1, -5, 3, 4};
  n.data.assign(reinterpret_cast<char*>(neg), reinterpret_cast<char*>(neg) + sizeof neg);
  writeNpy(dir + "/neg.npy", n);
  CHECK_THROWS_WITH(readTokenStream(dir + "/neg.npy"), Contains("negative token id -5 at position 1"));

  CHECK_THROWS_AS(readNpy(dir + "/missing.npy"), Error);
  CHECK(readTokenStream(dir + "/ok.npy") == std::vector<int64_t>{1, 2, 3, 4});  // restored file reads fine
}
