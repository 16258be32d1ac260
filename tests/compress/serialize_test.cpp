// serialize_test.cpp — model.cir round trip (tensors, quantized forms, masks) and corruption detection.
#include "compress/serialize.h"

#include <catch2/catch.hpp>
#include <fstream>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "prune/magnitude_prune.h"
#include "quant/rtn.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

TEST_CASE("a pruned and quantized graph round-trips through model.cir exactly", "[serialize]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}});
  RtnOptions ro;
  ro.format = QuantFormat{4, 16, false};
  rtnQuantize(g, ro);
  g.pruneUnused();
  verify(g);
  std::string p = testutil::tempDir("") + "/m.cir";
  saveGraph(g, p);
  Graph h = loadGraph(p);
  CHECK(dumpGraph(h) == dumpGraph(g));
  CHECK(h.quant.size() == g.quant.size());
  CHECK(h.sparsity.size() == g.sparsity.size());
  at::Tensor x = at::randint(0, 64, {2, 5}, at::kLong);
  CHECK(at::equal(Executor(g).run1(x), Executor(h).run1(x)));

  // Corrupt two bytes of tensor data: the checksum catches it; restore: it loads again.
  std::string bytes;
  {
    std::ifstream f(p, std::ios::binary);
    bytes.assign((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  std::string bad = bytes;
  bad[bad.size() - 10] ^= 0x5a;
  bad[bad.size() - 11] ^= 0x5a;
  std::ofstream(p, std::ios::binary) << bad;
  CHECK_THROWS_WITH(loadGraph(p), Contains("checksum mismatch"));
  std::ofstream(p, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  CHECK_THROWS_WITH(loadGraph(p), Contains("not a valid compressed model"));
  std::ofstream(p, std::ios::binary) << bytes;
  CHECK_NOTHROW(loadGraph(p));
}
