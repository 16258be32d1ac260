// hostile_inputs_test.cpp — the LibTorch-free readers against corrupt and crafted inputs (docs/security.md):
// .npy, model.cir containers, tokenizers, and outputs that must not replace special files. Each case expects
// its exact error category; none is an internal error (exit 70). Each was accepted, crashed or was an
// internal error before the hardening issue. Built into util_tests, which the sanitizer job also runs.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>

#include "compress/cir_format.h"
#include "compress/error.h"
#include "compress/npy.h"
#include "compress/tokenizer.h"
#include "tests/error_util.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;
using testutil::categoryOf;

namespace {

std::string npyBytes(const std::string& header, const std::string& data) { return npyPreamble(header) + data; }

}  // namespace

TEST_CASE("strict .npy: negative or huge dims, trailing bytes, unknown dtypes, repeated or unknown keys", "[hostile][npy]") {
  const std::string i8(16, '\1');
  // the reference: numpy's own header for int64 (2,)
  CHECK(parseNpy(npyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", i8), "ok.npy").numel() == 2);
  struct Case {
    const char* what;
    std::string bytes;
    const char* message;
  };
  const Case cases[] = {
      {"negative dim", npyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (-2,), }", i8), "negative dim"},
      {"huge dim", npyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999999999999,), }", i8), "15 digits"},
      {"dims that overflow", npyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", ""), "2^48"},
      {"an <i4 header on <i8 data", npyBytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", i8), "does not match"},
      {"an unknown dtype", npyBytes("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", i8), "unsupported dtype '<c8'"},
      {"an odd descr", npyBytes("{'descr': 'x', 'fortran_order': False, 'shape': (2,), }", i8), "unsupported dtype 'x'"},
      {"a repeated key", npyBytes("{'descr': '<i8', 'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", i8), "repeats"},
      {"an unknown key", npyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), 'x': 1}", i8), "unknown header key"},
      {"no shape", npyBytes("{'descr': '<i8', 'fortran_order': False, }", i8), "no 'shape'"},
      {"a header length past the end", std::string("\x93NUMPY\x01\x00\xff\xff{", 11), "truncated header"},
      {"big-endian", npyBytes("{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }", i8), "big-endian"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::string msg;
    CHECK(categoryOf([&] { parseNpy(c.bytes, "x.npy"); }, &msg) == ErrorCategory::Data);
    CHECK_THAT(msg, Contains(c.message));
  }
  std::string msg;
  CHECK(categoryOf([&] { readNpy("/dev/zero"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("not a regular file"));
  CHECK(categoryOf([&] { readNpy("/tmp"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("is a folder"));
}

TEST_CASE("outputs never replace a folder, link or device file", "[hostile][npy]") {
  std::string msg;
  CHECK(categoryOf([&] { writeFileAtomic("/dev/null", "x"); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("refusing to replace"));
  struct stat st{};
  REQUIRE(::stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  const std::string dir = testutil::tempDir("");
  CHECK(categoryOf([&] { writeFileAtomic(dir, "x"); }) == ErrorCategory::Io);
}

TEST_CASE("model.cir: crafted tensor entries are model errors before any allocation", "[hostile][cir]") {
  auto cir = [](const std::string& tensor_json, const std::string& data) {
    const std::string h = R"({"data_bytes": )" + std::to_string(data.size()) + R"(, "data_fnv1a64": )" +
                          std::to_string(fnv1a64(data.data(), data.size())) + R"(, "tensors": [)" + tensor_json + "]}";
    std::string out(kCirMagic, 8);
    const uint64_t hl = h.size();
    out.append(reinterpret_cast<const char*>(&hl), 8);
    return out + h + data;
  };
  const std::string data(16, '\0');
  CHECK(parseCir(cir(R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [4], "offset": 0, "nbytes": 16})", data), "m.cir")
            .tensors.size() == 1);
  struct Case {
    const char* what;
    std::string tensor, message;
  };
  const Case cases[] = {
      {"huge shape", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [4294967296, 4294967296], "offset": 0, "nbytes": 0})", "too large"},
      {"negative dim", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [-4], "offset": 0, "nbytes": 16})", "negative"},
      {"bad dtype", R"({"name": "w", "kind": "initializer", "dtype": 99, "shape": [4], "offset": 0, "nbytes": 16})", "dtype code 99"},
      {"outside the data", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [4], "offset": 8, "nbytes": 16})", "outside"},
      {"offset that wraps", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [4], "offset": 18446744073709551615, "nbytes": 16})", "outside"},
      {"size mismatch", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": [2], "offset": 0, "nbytes": 16})", "inconsistent"},
      {"a string dim", R"({"name": "w", "kind": "initializer", "dtype": 1, "shape": ["x"], "offset": 0, "nbytes": 16})", "malformed"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::string msg;
    CHECK(categoryOf([&] { parseCir(cir(c.tensor, data), "m.cir"); }, &msg) == ErrorCategory::Model);
    CHECK_THAT(msg, Contains(c.message));
  }
}

TEST_CASE("tokenizers: a token outside the vocabulary and a device are clear errors", "[hostile][tokenizer]") {
  std::string bytes(4, '\0');
  const int32_t max_len = 8;
  std::memcpy(bytes.data(), &max_len, 4);
  for (int i = 0; i < 259; ++i) {
    const float score = 0;
    const int32_t len = 1;
    bytes.append(reinterpret_cast<const char*>(&score), 4);
    bytes.append(reinterpret_cast<const char*>(&len), 4);
    bytes.push_back(static_cast<char>('a' + i % 26));
  }
  Tokenizer t = Tokenizer::parse(bytes, "tok.bin");
  CHECK(t.vocabSize() == 259);
  std::string msg;
  CHECK(categoryOf([&] { t.decode(1, 300); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains("outside the tokenizer's 259 tokens"));
  CHECK(categoryOf([&] { Tokenizer::parse(bytes.substr(0, bytes.size() - 1), "tok.bin"); }) == ErrorCategory::Data);
  CHECK(categoryOf([&] { Tokenizer::load("/dev/zero"); }) == ErrorCategory::Io);
}

