// sparsegpt_test.cpp — SparseGPT: H = I reduces to magnitude pruning, the OBS update beats magnitude on
// correlated inputs, N:M, joint quantization on the grid with pruned weights at the zero point,
// prior masks respected, and the recipe numbers on the stories model.
#include "prune/sparsegpt.h"

#include <catch2/catch.hpp>

#include "compress/error.h"
#include "compress/eval.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "prune/magnitude_prune.h"
#include "prune/wanda.h"
#include "quant/rtn.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;

namespace {
double outErr(const at::Tensor& w, const at::Tensor& q, const at::Tensor& x) {
  return (x.matmul((w - q).t())).pow(2).sum().item<double>();
}
SparseGptOptions opts(double sparsity, const std::string& pattern, int64_t block) {
  SparseGptOptions o;
  o.sparsity = sparsity;
  o.pattern = parsePattern(pattern);
  o.block_size = block;
  return o;
}
}  // namespace

TEST_CASE("SparseGPT with H = I equals magnitude pruning (per matrix for one block, N:M per row)", "[sparsegpt]") {
  at::manual_seed(6);
  at::Tensor w = at::randn({12, 64});
  SparseGptResult r = sparseGpt(w, at::eye(64), opts(0.5, "unstructured", 64));
  at::Tensor mag = keepLowestPruned(w.abs(), 12 * 32);
  CHECK(at::equal(r.mask, mag));
  CHECK(at::allclose(r.weight, w * mag, 0, 1e-6));  // no compensation: the kept weights are untouched
  // Several blocks: magnitude per block of columns.
  SparseGptResult rb = sparseGpt(w, at::eye(64), opts(0.5, "unstructured", 16));
  for (int64_t b = 0; b < 4; ++b)
    CHECK(at::equal(rb.mask.narrow(1, 16 * b, 16), keepLowestPruned(w.narrow(1, 16 * b, 16).abs(), 12 * 8)));
  SparseGptResult nm = sparseGpt(w, at::eye(64), opts(0, "2:4", 128));
  CHECK(at::equal(nm.mask, keepNofM(w.abs(), 2, 4)));
  CHECK(at::allclose(nm.weight, w * nm.mask, 0, 1e-6));
}

TEST_CASE("SparseGPT beats magnitude and Wanda masks on correlated inputs", "[sparsegpt]") {
  at::manual_seed(7);
  int64_t in = 96, out = 40, n = 2048;
  at::Tensor x = at::randn({n, in}).matmul(at::eye(in) + 0.3 * at::randn({in, in}));
  at::Tensor w = at::randn({out, in});
  at::Tensor h = 2.0 * x.t().matmul(x) / n;
  at::Tensor norms = x.pow(2).sum(0).sqrt();
  for (const char* pattern : {"unstructured", "2:4", "4:8"}) {
    INFO(pattern);
    PatternSpec p = parsePattern(pattern);
    SparseGptResult r = sparseGpt(w, h, opts(0.5, pattern, 32));
    CHECK(r.mask.logical_not().sum().item<int64_t>() == out * in / 2);
    at::Tensor mag = p.nm() ? keepNofM(w.abs(), p.n, p.m) : keepLowestPruned(w.abs(), out * in / 2);
    at::Tensor wanda = wandaMask(w, norms, 0.5, "row", p);
    double e = outErr(w, r.weight, x);
    CHECK(e < 0.8 * outErr(w, w * mag, x));
    CHECK(e < outErr(w, w * wanda, x));
    CHECK(r.weight.masked_select(r.mask.logical_not()).abs().max().item<float>() == 0.0f);
    if (p.nm()) CHECK(((r.mask.logical_not()).reshape({out, -1, p.m}).sum(2) == p.n).all().item<bool>());
  }
}

TEST_CASE("SparseGPT with joint quantization: kept weights on the grid, pruned at the zero point", "[sparsegpt]") {
  at::manual_seed(8);
  at::Tensor x = at::randn({1024, 64}).matmul(at::eye(64) + 0.3 * at::randn({64, 64}));
  at::Tensor w = at::randn({16, 64});
  at::Tensor h = 2.0 * x.t().matmul(x) / 1024;
  for (QuantFormat f : {QuantFormat{4, 32, false}, QuantFormat{4, -1, true}, QuantFormat{8, 16, true}}) {
    INFO(f.name());
    SparseGptOptions o = opts(0.5, "unstructured", 32);
    o.quant = f;
    SparseGptResult r = sparseGpt(w, h, o);
    REQUIRE(r.quantized);
    at::Tensor deq = dequantize(*r.quantized);
    CHECK(at::allclose(deq, r.weight, 0, 1e-5));
    CHECK(deq.masked_select(r.mask.logical_not()).abs().max().item<float>() == 0.0f);
    // Joint beats pruning first and rounding the result to nearest afterwards.
    SparseGptResult pruned = sparseGpt(w, h, opts(0.5, "unstructured", 32));
    at::Tensor then_rtn = dequantize(quantizeRtn(pruned.weight, f)) * pruned.mask;
    CHECK(outErr(w, deq, x) < outErr(w, then_rtn, x));
  }
}

TEST_CASE("SparseGPT keeps an earlier mask and checks the Hessian's shape", "[sparsegpt]") {
  at::manual_seed(9);
  at::Tensor x = at::randn({512, 32});
  at::Tensor h = 2.0 * x.t().matmul(x) / 512;
  at::Tensor w = at::randn({8, 32});
  at::Tensor prior = at::rand({8, 32}) > 0.3;  // ~30% already pruned
  SparseGptResult r = sparseGpt(w * prior, h, opts(0.5, "unstructured", 32), prior);
  CHECK((r.mask & prior.logical_not()).sum().item<int64_t>() == 0);
  CHECK(r.mask.logical_not().sum().item<int64_t>() == std::max<int64_t>(128, prior.logical_not().sum().item<int64_t>()));
  CHECK_THROWS_WITH(sparseGpt(w, at::eye(31), opts(0.5, "unstructured", 32)), Contains("does not fit"));
}

TEST_CASE("SparseGPT on a model: masks and joint quantized weights installed, deterministic", "[sparsegpt]") {
  at::manual_seed(10);
  at::Tensor calib = at::randint(0, 64, {8, 12}, at::kLong);
  auto run = [&](bool quant) {
    Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
    SparseGptOptions o = opts(0.5, "2:4", 128);
    o.ignore = {"output"};
    if (quant) o.quant = QuantFormat{4, 16, false};
    auto s = sparseGptPrune(g, calib, o, at::kCPU, false);
    g.pruneUnused();
    verify(g);
    CHECK(s["layers"].size() == 7);
    for (const auto& l : s["layers"]) CHECK(l["output_error"].get<double>() <= l["output_error_magnitude"].get<double>());
    return g;
  };
  Graph a = run(false), b = run(false);
  CHECK(at::equal(a.initializers.at("wk.weight"), b.initializers.at("wk.weight")));
  CHECK(a.sparsity.at("wk.weight").pattern == SparsityPattern::NofM);
  Graph q = run(true);
  CHECK(q.quant.at("w2.weight").method == "sparsegpt");
  at::Tensor deq = dequantize(quantizedOf(q, "w2.weight"));
  CHECK(((deq == 0).reshape({deq.size(0), -1, 4}).sum(2) >= 2).all().item<bool>());
}

TEST_CASE("SparseGPT reproduces the reference perplexity on the stories model within 2%", "[sparsegpt][shared]") {
  if (!testutil::haveShared()) return;
  Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  at::Tensor calib = consecutiveSequences(readTokenStream(testutil::shared("data/tinystories/train_head.tok512.npy")), 64, 256);
  SparseGptOptions o = opts(0.5, "unstructured", 128);
  o.ignore = {"output"};
  sparseGptPrune(g, calib, o, at::kCPU, false);  // wall time (target <= 10 s) is measured in bench/prune_table.sh
  LmWindows val = makeWindows(readTokenStream(testutil::shared("data/tinystories/val.tok512.npy")), 512, 32768);
  Executor ex(g);
  double ppl = perplexity(ex, val, 8, false).value;
  INFO("SparseGPT 50% perplexity " << ppl);
  CHECK(ppl < 19.74 * 1.02);  // the paper's code on this model and data: 19.74
  CHECK(ppl > 15.0);          // and not suspiciously good for a 50%-pruned 260K model
}
