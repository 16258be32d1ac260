// onnx_mutator_test.cpp — fuzz_onnx's structure-aware mutator on the committed seeds, without libFuzzer (its byte
// mutator is a stand-in that flips one byte): every kind of edit happens, each edit gives bytes that parse as a
// ModelProto and differ from the input, and about a quarter of the calls are byte mutations.
// Usage: onnx_mutator_test SEEDS_DIR
#include <onnx/onnx_pb.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/onnx_mutator.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t) {
  if (size > 0) data[size / 2] ^= 0x55;
  return size;
}

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: onnx_mutator_test SEEDS_DIR\n"), 2;
  std::array<int, fuzz::kOnnxMutations> made{};
  int calls = 0, bytewise = 0, failures = 0;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream f(entry.path(), std::ios::binary);
    const std::string seed((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (unsigned int i = 0; i < 400; ++i) {
      std::vector<uint8_t> buf(seed.size() + 4096);
      std::memcpy(buf.data(), seed.data(), seed.size());
      const size_t n = fuzz::mutateOnnx(buf.data(), seed.size(), buf.size(), i);
      ++calls;
      const int k = fuzz::lastOnnxMutation;
      if (k < 0) {
        ++bytewise;
        continue;
      }
      ++made[static_cast<size_t>(k)];
      onnx::ModelProto m;
      const std::string out(reinterpret_cast<const char*>(buf.data()), n);
      if (!m.ParseFromString(out) || out == seed) {
        std::fprintf(stderr, "%s, seed %u: edit kind %d gave bytes that %s\n", entry.path().filename().c_str(), i, k,
                     out == seed ? "equal the input" : "do not parse");
        ++failures;
      }
    }
  }
  for (int k = 0; k < fuzz::kOnnxMutations; ++k) {
    std::printf("edit kind %d: %d\n", k, made[static_cast<size_t>(k)]);
    if (made[static_cast<size_t>(k)] == 0) std::fprintf(stderr, "edit kind %d never happened\n", k), ++failures;
  }
  std::printf("%d calls, %d byte mutations\n", calls, bytewise);
  if (calls == 0 || bytewise < calls / 8 || bytewise > calls / 2)
    std::fprintf(stderr, "byte mutations: %d of %d calls (expected about a quarter)\n", bytewise, calls), ++failures;
  return failures == 0 ? 0 : 1;
}
