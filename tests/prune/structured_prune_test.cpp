// structured_prune_test.cpp — FFN units are found (SwiGLU and GELU-with-bias), removing neurons whose
// weights are zero leaves outputs unchanged, shapes and parameter counts follow, bad options are errors;
// attention heads (GQA, fused q/k/v) likewise, and models whose heads cannot be followed say why.
#include "prune/structured_prune.h"

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "prune/attention_heads.h"
#include "prune/magnitude_prune.h"
#include "compress/eval.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "test_util.h"
#include "zoo_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>

#include "crt_run.h"

using namespace compress;
using namespace zooutil;
using Catch::Matchers::Contains;

TEST_CASE("FFN units are found in LLaMA (SwiGLU) and GPT-2 (GELU, biases) blocks, not elsewhere", "[structured]") {
  Graph l = importTorchScript(testutil::fixture("llama_block.pt"));
  auto fl = findFfnGroups(l, selectWeights(l, {"Linear"}, {}));
  REQUIRE(fl.size() == 1);
  CHECK(fl[0].down == "w2.weight");
  CHECK(std::set<std::string>(fl[0].up.begin(), fl[0].up.end()) == std::set<std::string>{"w1.weight", "w3.weight"});
  CHECK(fl[0].neurons == 48);
  Graph g = importTorchScript(testutil::fixture("gpt2_block.pt"));
  auto fg = findFfnGroups(g, selectWeights(g, {"Linear"}, {}));
  REQUIRE(fg.size() == 1);
  CHECK(fg[0].down == "fc2.weight");
  CHECK(fg[0].up == std::vector<std::string>{"fc.weight"});
  CHECK(fg[0].biases == std::vector<std::string>{"fc.bias"});
  // The MLP fixture's hidden values are also read outside its "down" layer: no unit there.
  ImportOptions io;
  io.inputs = {{"x", DType::Float32, {Dim::sym("batch"), Dim::fixed(12)}}};
  Graph m = importTorchScript(testutil::fixture("mlp.pt"), io);
  CHECK(findFfnGroups(m, selectWeights(m, {"Linear"}, {})).empty());
}

namespace {
// Zeroes neurons `dead` of the FFN (up rows, biases, down columns) so they contribute nothing.
void killNeurons(Graph& g, const FfnGroup& f, const std::vector<int64_t>& dead) {
  at::Tensor idx = at::tensor(dead, at::kLong);
  for (const auto& u : f.up) g.initializers.at(u).index_fill_(0, idx, 0.0);
  for (const auto& b : f.biases) g.initializers.at(b).index_fill_(0, idx, 0.0);
  g.initializers.at(f.down).index_fill_(1, idx, 0.0);
}

// What dead units leave behind: on every recorded case of `z` the pruned `g` gives `want` (its outputs
// before the pruning, within 1e-5), and its ONNX export runs the same in crun and ONNX Runtime (1e-4).
void checkUnchangedAndExported(const Graph& g, const ZooModel& z, const std::vector<at::Tensor>& want, const std::string& name,
                               bool have_ort) {
  const std::string path = testutil::tempDir("structured") + "/" + name + ".onnx";
  exportOnnx(g, path, {});
  Executor ex(g);
  for (size_t k = 0; k < z.cases.size(); ++k) {
    const at::Tensor got = ex.run(z.cases[k].inputs)[0];
    CHECK(relDiff(got, want[k]) <= 1e-5);
    CHECK(relDiff(testutil::runCrt(path, z.cases[k].inputs)[0], got) <= 1e-4);
    if (have_ort) CHECK(relDiff(ortRun(path, z.cases[k].inputs, "disabled").begin()->second, got) <= 1e-4);
  }
}
}  // namespace

TEST_CASE("removing neurons whose weights are zero leaves the outputs unchanged, shapes and counts follow", "[structured]") {
  for (const char* fixture : {"llama_block.pt", "gpt2_block.pt"}) {
    INFO(fixture);
    Graph g = importTorchScript(testutil::fixture(fixture));
    for (auto& [n, t] : g.initializers) t = t.clone();
    FfnGroup f = findFfnGroups(g, selectWeights(g, {"Linear"}, {}))[0];
    const int64_t H = f.neurons, d = g.initializers.at(f.down).size(0);
    std::vector<int64_t> dead;
    for (int64_t j = 1; j < H; j += 4) dead.push_back(j);  // H/4 neurons
    killNeurons(g, f, dead);
    at::Tensor tokens = at::randint(0, 64, {3, 10}, at::kLong);
    at::Tensor before = Executor(g).run1(tokens);
    int64_t params = g.parameterCount();
    StructuredPruneOptions o;
    o.ffn_ratio = 0.25;
    auto s = structuredPrune(g, tokens, o, at::kCPU);
    verify(g);
    CHECK(s["neurons_removed"] == static_cast<int64_t>(dead.size()));
    int64_t kept = H - static_cast<int64_t>(dead.size());
    CHECK(g.initializers.at(f.down).sizes() == at::IntArrayRef{d, kept});
    for (const auto& u : f.up) CHECK(g.initializers.at(u).size(0) == kept);
    for (const auto& b : f.biases) CHECK(g.initializers.at(b).size(0) == kept);
    int64_t per_neuron = d * static_cast<int64_t>(f.up.size() + 1) + static_cast<int64_t>(f.biases.size());
    CHECK(g.parameterCount() == params - per_neuron * static_cast<int64_t>(dead.size()));
    CHECK(s["params_after"] == g.parameterCount());
    at::Tensor after = Executor(g).run1(tokens);
    CHECK(at::allclose(after, before, 1e-5, 1e-5));
    // Value shapes were re-inferred: the hidden activations now have `kept` channels.
    bool found = false;
    for (const auto& [name, vi] : g.values)
      if (vi.shape && !vi.shape->empty() && vi.shape->back() == Dim::fixed(kept)) found = true;
    CHECK(found);
  }
}

TEST_CASE("structured pruning: global ranking, parameter targets, multiple_of, masks, errors", "[structured]") {
  at::Tensor tokens = at::randint(0, 64, {4, 8}, at::kLong);
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  magnitudePrune(g, {0.5, "matrix", {"Linear"}, {"output"}, {}});
  StructuredPruneOptions o;
  o.ffn_ratio = 0.3;
  o.multiple_of = 8;
  structuredPrune(g, tokens, o, at::kCPU);
  verify(g);  // the masks were sliced with their weights
  CHECK(g.initializers.at("w1.weight").size(0) == 40);  // 48 - round(14.4) = 34, rounded up to 40
  CHECK(g.sparsity.at("w2.weight").mask.size(1) == 40);

  Graph t = importTorchScript(testutil::fixture("llama_block.pt"));
  int64_t target = t.parameterCount() - 10 * 3 * 32;
  StructuredPruneOptions ot;
  ot.target_params = target;
  ot.score = "magnitude";
  auto s = structuredPrune(t, at::Tensor(), ot, at::kCPU);
  CHECK(t.parameterCount() <= target);
  CHECK(t.initializers.at("w1.weight").size(0) == 38);
  CHECK(s["scope"] == "global");

  Graph e = importTorchScript(testutil::fixture("llama_block.pt"));
  StructuredPruneOptions bad;
  bad.target_params = 1000;
  bad.score = "magnitude";
  CHECK_THROWS_WITH(structuredPrune(e, at::Tensor(), bad, at::kCPU), Contains("cannot be reached"));
  StructuredPruneOptions none;
  none.targets = {"wq"};
  CHECK_THROWS_WITH(structuredPrune(e, tokens, none, at::kCPU), Contains("no feed-forward unit"));
  StructuredPruneOptions nodata;
  CHECK_THROWS_WITH(structuredPrune(e, at::Tensor(), nodata, at::kCPU), Contains("calibration data"));
}

TEST_CASE("attention heads: a GQA unit is found and removing a dead key/value group leaves outputs unchanged", "[structured][heads]") {
  Graph g = importTorchScript(testutil::fixture("llama_block.pt"));
  for (auto& [n, t] : g.initializers) t = t.clone();
  std::vector<std::string> why;
  auto units = findAttentionUnits(g, selectWeights(g, {"Linear"}, {}), &why);
  for (const auto& w : why) INFO(w);
  std::string all_why;
  for (const auto& w : why) all_why += w + "; ";
  INFO(all_why);
  REQUIRE(units.size() == 1);
  const AttentionUnit& u = units[0];
  CHECK(u.o == "wo.weight");
  CHECK(u.groups == 2);  // the fixture: 4 query heads, 2 key/value heads, head dim 8
  CHECK(u.heads == 4);
  CHECK(std::set<std::string>(u.projections.begin(), u.projections.end()) ==
        std::set<std::string>{"wq.weight", "wk.weight", "wv.weight"});
  // Kill key/value group 0: query heads 0-1 (q rows 0-15), k/v rows 0-7, o columns 0-15.
  g.initializers.at("wq.weight").narrow(0, 0, 16).zero_();
  g.initializers.at("wk.weight").narrow(0, 0, 8).zero_();
  g.initializers.at("wv.weight").narrow(0, 0, 8).zero_();
  g.initializers.at("wo.weight").narrow(1, 0, 16).zero_();
  at::Tensor tokens = at::randint(0, 64, {2, 9}, at::kLong);
  at::Tensor before = Executor(g).run1(tokens);
  int64_t params = g.parameterCount();
  StructuredPruneOptions o;
  o.ffn_ratio = 0;
  o.head_ratio = 0.5;
  auto s = structuredPrune(g, tokens, o, at::kCPU);
  verify(g);
  CHECK(s["heads_removed"] == 2);
  CHECK(g.initializers.at("wq.weight").sizes() == at::IntArrayRef{16, 32});
  CHECK(g.initializers.at("wk.weight").sizes() == at::IntArrayRef{8, 32});
  CHECK(g.initializers.at("wo.weight").sizes() == at::IntArrayRef{32, 16});
  CHECK(g.parameterCount() == params - (16 + 8 + 8) * 32 - 32 * 16);
  at::Tensor after = Executor(g).run1(tokens);
  CHECK(at::allclose(after, before, 1e-5, 1e-5));
  // Other sequence lengths still run (the rewritten shape constants only fix the head count).
  CHECK(Executor(g).run1(at::randint(0, 64, {1, 5}, at::kLong)).size(1) == 5);
}

TEST_CASE("heads and FFN neurons together on the stories model: smaller, still a good model", "[structured][heads][shared]") {
  if (!testutil::haveShared()) return;
  Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"));
  at::Tensor calib = consecutiveSequences(readTokenStream(testutil::shared("data/tinystories/train_head.tok512.npy")), 16, 256);
  StructuredPruneOptions o;
  o.ffn_ratio = 0.25;
  o.head_ratio = 0.25;
  auto s = structuredPrune(g, calib, o, at::kCPU);
  CHECK(s["heads_removed"] == 10);      // 5 layers x 1 of 4 key/value groups x 2 query heads
  CHECK(s["neurons_removed"] == 215);   // 5 layers x round(0.25 x 172)
  CHECK(g.initializers.at("layers.2.wq.weight").sizes() == at::IntArrayRef{48, 64});
  CHECK(g.initializers.at("layers.2.wk.weight").sizes() == at::IntArrayRef{24, 64});
  CHECK(g.initializers.at("layers.2.w2.weight").sizes() == at::IntArrayRef{64, 129});
  CHECK(s["params_after"].get<int64_t>() == 260032 - 5 * (3072 + 43 * 192));
  LmWindows val = makeWindows(readTokenStream(testutil::shared("data/tinystories/val.tok512.npy")), 512, 8192);
  Executor ex(g);
  double ppl = perplexity(ex, val, 4, false).value;
  INFO("perplexity " << ppl);
  CHECK(ppl < 15.0);  // 4.08 dense; ~9 after 25% of FFN neurons alone
}

TEST_CASE("GPT-2's MLP (HF Conv1D: view(*size_out) between c_fc and the GELU) is an FFN unit - dead neurons go exactly", "[structured][zoo][ort]") {
  std::string ort_why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&ort_why), "ONNX Runtime (" + ort_why + ")");
  ZooModel z = zooModel("gpt2");
  Graph g = importZoo(z).clone();
  auto units = findFfnGroups(g, selectWeights(g, {"Linear"}, {}));
  REQUIRE(units.size() == 2);
  for (const auto& f : units) {
    CHECK(f.up.size() == 1);
    CHECK(f.neurons == 128);
    CHECK(f.resizes.size() == 1);  // the constant 128 of view(*size_out)
  }
  std::vector<int64_t> dead;
  for (int64_t j = 3; j < 128; j += 4) dead.push_back(j);  // a quarter
  for (const auto& f : units) killNeurons(g, f, dead);
  const std::vector<at::Tensor> want = outputsOf(g, z);
  StructuredPruneOptions o;
  o.ffn_ratio = 0.25;
  auto s = structuredPrune(g, at::randint(0, 64, {8, 12}, at::kLong), o, at::kCPU);
  CHECK(s["neurons_removed"] == 64);
  CHECK(g.initializers.at("h.0.c_fc.weight").sizes() == at::IntArrayRef{96, 32});
  checkUnchangedAndExported(g, z, want, "gpt2_ffn", have_ort);
}

TEST_CASE("heads of a fused q/k/v projection (GPT-2's c_attn, split afterwards) are removed exactly", "[structured][heads][zoo][ort]") {
  std::string ort_why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&ort_why), "ONNX Runtime (" + ort_why + ")");
  ZooModel z = zooModel("gpt2");
  Graph g = importZoo(z).clone();
  std::vector<std::string> why;
  auto units = findAttentionUnits(g, selectWeights(g, {"Linear"}, {}), &why);
  REQUIRE(units.size() == 2);
  for (size_t l = 0; l < 2; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    CHECK(units[l].projections == std::vector<std::string>{h + "c_attn.weight"});
    CHECK(units[l].o == h + "c_proj.weight");
    CHECK(units[l].parts == 3);  // q, k, v
    CHECK(units[l].groups == 4);
  }
  // Kill head 1 of layer 0 and head 2 of layer 1: its value rows (in the v part of c_attn, and its bias)
  // and its columns of c_proj. Head width 8, model width 32: the v part starts at row 64.
  const std::map<int, int64_t> dead = {{0, 1}, {1, 2}};
  std::map<std::string, at::Tensor> before;
  for (const auto& [l, head] : dead) {
    const std::string h = "h." + std::to_string(l) + ".";
    g.initializers.at(h + "c_attn.weight").narrow(0, 64 + 8 * head, 8).zero_();
    g.initializers.at(h + "c_attn.bias").narrow(0, 64 + 8 * head, 8).zero_();
    g.initializers.at(h + "c_proj.weight").narrow(1, 8 * head, 8).zero_();
    for (const char* w : {"c_attn.weight", "c_attn.bias", "c_proj.weight"}) before[h + w] = g.initializers.at(h + w).clone();
  }
  const std::vector<at::Tensor> want = outputsOf(g, z);
  StructuredPruneOptions o;
  o.ffn_ratio = 0;
  o.head_ratio = 0.25;
  auto s = structuredPrune(g, at::randint(0, 64, {8, 12}, at::kLong), o, at::kCPU);
  CHECK(s["heads_removed"] == 2);
  for (const auto& [l, head] : dead) {
    const std::string h = "h." + std::to_string(l) + ".";
    std::vector<int64_t> rows, cols;  // what must remain: every part without the dead head
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t r = 0; r < 32; ++r)
        if (r / 8 != head) rows.push_back(part * 32 + r);
    for (int64_t c = 0; c < 32; ++c)
      if (c / 8 != head) cols.push_back(c);
    const at::Tensor R = at::tensor(rows, at::kLong), C = at::tensor(cols, at::kLong);
    CHECK(at::equal(g.initializers.at(h + "c_attn.weight"), before.at(h + "c_attn.weight").index_select(0, R)));
    CHECK(at::equal(g.initializers.at(h + "c_attn.bias"), before.at(h + "c_attn.bias").index_select(0, R)));
    CHECK(at::equal(g.initializers.at(h + "c_proj.weight"), before.at(h + "c_proj.weight").index_select(1, C)));
  }
  checkUnchangedAndExported(g, z, want, "gpt2_heads", have_ort);  // the dead heads contributed nothing
}

// BERT; DistilBERT (an expand_as mask, a reshape back to the input's width); OPT (heads merged with the
// batch axis, view(b·h, t, d)); ViT and nn.TransformerEncoder (nn.MultiheadAttention: a fused in_proj split
// into q/k/v, heads merged with the batch axis); llama2c (RoPE gathers pairs), HF LLaMA and Mistral (GQA:
// a group is a key/value head with its query heads); GPT-NeoX (a fused projection laid out per head, partial
// rotary, and baddbmm's scores added to torch.zeros(b·h, t, t): an expansion whose shape holds the head count).
TEST_CASE("heads of BERT, DistilBERT, OPT, ViT, nn.MultiheadAttention, GPT-NeoX and the LLaMA family are removed exactly", "[structured][heads][zoo][ort]") {
  std::string ort_why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&ort_why), "ONNX Runtime (" + ort_why + ")");
  for (const char* family : {"bert", "distilbert", "opt", "vit", "torch_encoder", "llama2c", "hf_llama", "mistral", "gpt_neox"}) {
    INFO(family);
    ZooModel z = zooModel(family);
    Graph g = importZoo(z).clone();
    std::vector<std::string> why;
    auto units = findAttentionUnits(g, selectWeights(g, {"Linear"}, {}), &why);
    REQUIRE(units.size() == 2);
    // Kill key/value group 1 of every unit: its q/k/v rows (in every part of a fused projection) and
    // biases, and its o columns.
    const auto transposed = linearLayouts(g);
    auto killGroup = [](at::Tensor& t, int64_t dim, int64_t groups, int64_t parts) {
      const int64_t part = t.size(dim) / parts, width = part / groups;
      for (int64_t p = 0; p < parts; ++p) t.narrow(dim, p * part + width, width).zero_();
    };
    int64_t one_group_each = 0;  // query heads in one key/value group of every unit
    for (const auto& u : units) {
      REQUIRE(u.groups >= 2);
      one_group_each += u.heads / u.groups;
      for (const auto& p : u.projections) killGroup(g.initializers.at(p), transposed.at(p) ? 0 : 1, u.groups, u.parts);
      for (const auto& sl : u.slices)
        killGroup(g.initializers.at(g.nodes[static_cast<size_t>(sl.node)].inputs[static_cast<size_t>(sl.input)]), sl.dim, u.groups, sl.parts);
      at::Tensor& o = g.initializers.at(u.o);
      const int64_t dim = transposed.at(u.o) ? 1 : 0;
      o.narrow(dim, o.size(dim) / u.groups, o.size(dim) / u.groups).zero_();
    }
    const std::vector<at::Tensor> want = outputsOf(g, z);
    StructuredPruneOptions o;
    o.ffn_ratio = 0;
    o.head_ratio = 0.25;
    const bool image = z.specs[0].dtype == DType::Float32;
    auto s = structuredPrune(g, image ? smoothImages(8, 32) : at::randint(0, 64, {8, 12}, at::kLong), o, at::kCPU);
    CHECK(s["heads_removed"] == one_group_each);  // 25% of 4 groups, or of 2 (rounded to 1)
    checkUnchangedAndExported(g, z, want, std::string(family) + "_heads", have_ort);
  }
}

TEST_CASE("head pruning reports why a model's attention cannot be followed", "[structured][heads][zoo]") {
  // GPT-NeoX (its heads are followed: the test above) with its attention softmax taken across the heads: the one
  // reason per output projection names the node and what it does.
  Graph g = importZoo(zooModel("gpt_neox")).clone();
  int softmaxes = 0;
  for (Node& n : g.nodes)
    if (n.op == "Softmax") n.attrs["axis"] = int64_t{1}, ++softmaxes;  // [batch, heads, seq, seq]: across the heads
  REQUIRE(softmaxes == 2);
  StructuredPruneOptions o;
  o.ffn_ratio = 0;
  o.head_ratio = 0.25;
  o.score = "magnitude";
  CHECK_THROWS_WITH(structuredPrune(g, at::Tensor(), o, at::kCPU),
                    Contains("no attention unit") && Contains("attention.dense.weight: Softmax node") && Contains("normalizes across heads"));
}
