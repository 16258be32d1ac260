// layer_kinds_test.cpp — the calibration passes on every kind of layer the fixture zoo has: convs (im2col
// Hessians), HF Conv1D ([in, out] weights, stored as nn.Linear's at import), models with several inputs,
// and calibration blocks found from the graph's residual structure.
#include <chrono>
#include <cmath>
#include <functional>

#include "compress/calibration.h"
#include "compress/error.h"
#include "compress/executor.h"
#include "prune/channel_prune.h"
#include "prune/magnitude_prune.h"
#include "prune/sparsegpt.h"
#include "prune/structured_prune.h"
#include "prune/wanda.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/rtn.h"
#include "test_util.h"
#include "zoo_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>

using namespace compress;
using namespace zooutil;

namespace {

at::Tensor tokensFor(const ZooModel& z, int64_t n, int64_t seq) {
  const at::Tensor& ids = z.cases[0].inputs.at(z.specs[0].name);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  return at::randint(0, ids.max().item<int64_t>() + 1, {n, seq}, gen, at::TensorOptions().dtype(at::kLong));
}

}  // namespace

TEST_CASE("convColumns times the conv's weight matrix is the convolution (pads, strides, dilations, 1-D)", "[layers]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor x = at::randn({2, 3, 9, 7}, gen), w = at::randn({4, 3, 3, 2}, gen);
  Node n;
  n.op = "Conv";
  n.name = "conv";
  n.attrs["pads"] = std::vector<int64_t>{1, 0, 2, 1};  // begins (h, w), ends (h, w)
  n.attrs["strides"] = std::vector<int64_t>{2, 1};
  n.attrs["dilations"] = std::vector<int64_t>{1, 2};
  at::Tensor want = at::conv2d(at::constant_pad_nd(x, {0, 1, 1, 2}), w, at::Tensor(), at::IntArrayRef{2, 1}, at::IntArrayRef{0, 0}, at::IntArrayRef{1, 2});
  at::Tensor cols = convColumns(n, x, w);
  at::Tensor got = cols.matmul(weightMatrix(w).t()).reshape({2, want.size(2), want.size(3), 4}).permute({0, 3, 1, 2});
  CHECK(at::allclose(got, want, 1e-4, 1e-5));
  // 1-D: Conv1d's [B, C, L] input and [out, in, k] kernel
  Node n1;
  n1.op = "Conv";
  n1.name = "conv1d";
  n1.attrs["pads"] = std::vector<int64_t>{2, 2};
  at::Tensor x1 = at::randn({2, 3, 11}, gen), w1 = at::randn({5, 3, 4}, gen);
  at::Tensor want1 = at::conv1d(x1, w1, at::Tensor(), at::IntArrayRef{1}, at::IntArrayRef{2});
  at::Tensor got1 = convColumns(n1, x1, w1).matmul(weightMatrix(w1).t()).reshape({2, want1.size(2), 5}).permute({0, 2, 1});
  CHECK(at::allclose(got1, want1, 1e-4, 1e-5));
}

TEST_CASE("GPTQ int4 beats RTN int4 on every conv of a ResNet with correlated inputs - depthwise convs are skipped with a reason", "[layers][zoo]") {
  for (const char* family : {"resnet", "mobilenet_v2"}) {
    INFO(family);
    ZooModel z = zooModel(family);
    Graph g = importZoo(z);
    std::set<std::string> conv_weights;
    for (const auto& c : findConvs(g)) conv_weights.insert(c.weight);
    GptqOptions o;
    o.format = QuantFormat{4, -1, false};
    auto s = gptqQuantizeModel(g, smoothImages(8, 32), o, at::kCPU, false);
    int convs = 0;
    for (const auto& l : s["layers"]) {
      if (!conv_weights.count(l["weight"].get<std::string>())) continue;
      INFO(l["weight"].get<std::string>());
      CHECK(l["output_error"].get<double>() < l["output_error_rtn"].get<double>());
      ++convs;
    }
    CHECK(convs >= 3);
    if (std::string(family) == "mobilenet_v2") {
      REQUIRE(s["layers_skipped"].size() >= 1);
      CHECK_THAT(s["layers_skipped"][0]["reason"].get<std::string>(), Catch::Contains("depthwise"));
    }
    verify(g);
    at::Tensor y = Executor(g).run(z.cases[0].inputs)[0];
    CHECK(at::isfinite(y).all().item<bool>());
    CHECK(relDiff(y, z.cases[0].output) < 0.5);  // int4 per channel: close to the float model, not equal
  }
}

TEST_CASE("GPT-2's Conv1D weights read as nn.Linear's - GPTQ int4 beats RTN on each", "[layers][zoo]") {
  ZooModel z = zooModel("gpt2");
  Graph g = importZoo(z);
  std::vector<LinearRef> lins = findLinears(g);
  REQUIRE(lins.size() >= 8);
  for (const auto& l : lins) CHECK(l.transposed);  // [out, in] + Transpose, like nn.Linear
  const at::Tensor& c_attn = g.initializers.at("h.0.c_attn.weight");
  CHECK(c_attn.size(0) == 3 * c_attn.size(1));  // Conv1D stored [in, 3·in]: now [3·in, in]
  Graph before = g.clone();
  GptqOptions o;
  o.format = QuantFormat{4, 16, false};
  auto s = gptqQuantizeModel(g, tokensFor(z, 8, 16), o, at::kCPU, false);
  for (const auto& l : s["layers"]) {
    INFO(l["weight"].get<std::string>());
    CHECK(l["output_error"].get<double>() < l["output_error_rtn"].get<double>());
  }
  CHECK(relDiff(Executor(before).run(z.cases[0].inputs)[0], z.cases[0].output) <= 1e-4);  // the re-layout is exact
}

TEST_CASE("Wanda and SparseGPT prune convs and models with several inputs - SparseGPT beats magnitude on each layer", "[layers][zoo]") {
  for (const char* family : {"resnet", "bert"}) {
    INFO(family);
    ZooModel z = zooModel(family);
    const at::Tensor calib = std::string(family) == "bert" ? tokensFor(z, 8, 12) : smoothImages(8, 32);
    Graph g = importZoo(z);
    auto s = sparseGptPrune(g, calib, SparseGptOptions{}, at::kCPU, false);
    CHECK(s["sparsity"].get<double>() == Approx(0.5).margin(0.01));
    for (const auto& l : s["layers"]) {
      INFO(l["weight"].get<std::string>());
      CHECK(l["output_error"].get<double>() <= l["output_error_magnitude"].get<double>());
    }
    Graph w = importZoo(z);
    auto sw = wandaPrune(w, calib, WandaOptions{}, at::kCPU, false);
    CHECK(sw["sparsity"].get<double>() == Approx(0.5).margin(0.01));
    CHECK(at::isfinite(Executor(w).run(z.cases[0].inputs)[0]).all().item<bool>());
  }
}

TEST_CASE("calibration blocks follow the residual structure: a ResNet block, a transformer layer", "[layers][zoo]") {
  {
    Graph g = importZoo(zooModel("resnet"));
    auto ws = selectWeights(g, kLayerTargets, {});
    auto blocks = groupIntoBlocks(g, ws);
    // The identity shortcut (layer1: x + f(x)) ends the first block, the projection shortcut (layer2:
    // downsample(x) + f(x)) the second; the classifier is the third.
    REQUIRE(blocks.size() == 3);
    CHECK(blocks[0].weights == std::vector<std::string>{"conv1.weight", "layer1.conv1.weight", "layer1.conv2.weight"});
    CHECK(blocks[1].weights == std::vector<std::string>{"layer2.conv1.weight", "layer2.conv2.weight", "layer2.downsample.0.weight"});
    CHECK(blocks[2].weights == std::vector<std::string>{"fc.weight"});
    size_t total = 0;
    for (const auto& b : blocks) total += b.weights.size();
    CHECK(total == ws.size());
    for (size_t i = 1; i < blocks.size(); ++i) CHECK(blocks[i].start > blocks[i - 1].start);
  }
  {
    ZooModel z = zooModel("hf_llama");
    Graph g = importZoo(z);
    auto blocks = groupIntoBlocks(g, selectWeights(g, {"Linear"}, {}));
    REQUIRE(blocks.size() == 3);  // two layers (numbered: attention and MLP halves together), then lm_head
    CHECK(blocks[0].name == "layers.0");
    CHECK(blocks[0].weights.size() == 7);
  }
}

TEST_CASE("a model's further inputs get their defaults for evaluation and calibration - others are refused by name", "[layers][zoo]") {
  ZooModel z = zooModel("bert");
  Graph g = importZoo(z);
  at::Tensor ids = tokensFor(z, 2, 7);
  auto feeds = companionInputs(g, ids);
  REQUIRE(feeds.size() == 3);
  for (const auto& [name, t] : feeds) {
    INFO(name);
    CHECK(t.sizes() == ids.sizes());
    if (name.find("mask") != std::string::npos) CHECK(t.eq(1).all().item<bool>());
    else if (name != g.inputs[0]) CHECK(t.eq(0).all().item<bool>());
  }
  CHECK(at::equal(Executor(g).run1(ids), Executor(g).run(feeds)[0]));
  Graph cnn = importZoo(zooModel("resnet"));
  cnn.inputs.push_back("extra");
  cnn.values["extra"] = ValueInfo{DType::Float32, Shape{Dim::sym("batch")}};
  CHECK_THROWS_WITH(companionInputs(cnn, smoothImages(1, 32)), Catch::Contains("model input 'extra' has no default"));
}

namespace {

/// Calibration inputs for a zoo family, drawn like its recorded cases: token ids for text models, normal
/// noise images otherwise.
at::Tensor calibrationFor(const ZooModel& z) {
  const at::Tensor& first = z.cases[0].inputs.at(z.specs[0].name);
  if (!at::isFloatingType(first.scalar_type())) return tokensFor(z, 64, 16);  // 1024 tokens: Hessians of full rank
  std::vector<int64_t> shape = first.sizes().vec();
  shape[0] = 8;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  return at::randn(shape, gen);
}

/// ‖y - y_float‖ / ‖y_float‖ over the family's cases.
double outputError(const Graph& g, const ZooModel& z) {
  double num = 0, den = 0;
  Executor ex(g);
  for (const auto& c : z.cases) {
    at::Tensor y = ex.run(c.inputs)[0].to(at::kFloat);
    num += (y - c.output).pow(2).sum().item<double>();
    den += c.output.pow(2).sum().item<double>();
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

// The table bench/algorithms.sh prints (COMPRESS_ZOO_ALGORITHMS=<file> writes it as JSON): every
// calibration algorithm on every family, with seconds and the output error next to its baseline's (RTN
// for quantizers, magnitude for pruners). Here: each runs, gives a finite model, and the Hessian methods
// are no worse than their baseline on the model output by more than a margin (random-weight fixtures).
TEST_CASE("every algorithm runs on every family of the zoo", "[layers][zoo][algorithms]") {
  using Run = std::function<nlohmann::json(Graph&, const at::Tensor&)>;
  const QuantFormat int4{4, 32, false};
  const std::vector<std::pair<std::string, Run>> algorithms = {
      {"rtn", [&](Graph& g, const at::Tensor&) { RtnOptions o; o.format = int4; return rtnQuantize(g, o); }},
      {"gptq", [&](Graph& g, const at::Tensor& x) { GptqOptions o; o.format = int4; return gptqQuantizeModel(g, x, o, at::kCPU, false); }},
      {"awq", [&](Graph& g, const at::Tensor& x) { AwqOptions o; o.format = int4; return awqQuantizeModel(g, x, o, at::kCPU, false); }},
      {"magnitude", [&](Graph& g, const at::Tensor&) { MagnitudePruneOptions o; o.scope = "row"; return magnitudePrune(g, o); }},
      {"wanda", [&](Graph& g, const at::Tensor& x) { return wandaPrune(g, x, WandaOptions{}, at::kCPU, false); }},
      {"sparsegpt", [&](Graph& g, const at::Tensor& x) { return sparseGptPrune(g, x, SparseGptOptions{}, at::kCPU, false); }},
      {"structured", [&](Graph& g, const at::Tensor& x) { return structuredPrune(g, x, StructuredPruneOptions{}, at::kCPU); }},
      {"heads", [&](Graph& g, const at::Tensor& x) {
         StructuredPruneOptions o;
         o.ffn_ratio = 0;
         o.head_ratio = 0.25;
         return structuredPrune(g, x, o, at::kCPU);
       }},
      {"channel", [&](Graph& g, const at::Tensor& x) { ChannelPruneOptions o; o.ratio = 0.25; return channelPrune(g, x, o, at::kCPU); }},
  };
  nlohmann::json table = nlohmann::json::object();
  for (const auto& z : zoo()) {
    const at::Tensor calib = calibrationFor(z);
    const Graph base = importZoo(z);
    for (const auto& [name, run] : algorithms) {
      INFO(z.name << " " << name);
      Graph g = base.clone();
      nlohmann::json row;
      auto t0 = std::chrono::steady_clock::now();
      try {
        nlohmann::json stats = run(g, calib);
        row["layers"] = stats.contains("layers_quantized") ? stats["layers_quantized"].get<int64_t>()
                        : stats.contains("layers") && stats["layers"].is_array() ? static_cast<int64_t>(stats["layers"].size()) : -1;
        if (stats.contains("macs_before") && stats["macs_before"].get<int64_t>() > 0)
          row["macs_kept"] = stats["macs_after"].get<double>() / stats["macs_before"].get<double>();
        g.pruneUnused();
        verify(g);
        row["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        row["output_error"] = outputError(g, z);
        row["runs"] = true;
        CHECK(std::isfinite(row["output_error"].get<double>()));
      } catch (const Error& e) {
        row["runs"] = false;
        row["why"] = e.what();  // a clear refusal (no layer of the kind it needs), never a crash
        CHECK(e.category() != ErrorCategory::Internal);
      }
      table[z.name][name] = row;
    }
    for (const auto& [method, baseline] : {std::pair<std::string, std::string>{"gptq", "rtn"}, {"sparsegpt", "magnitude"}}) {
      const auto& m = table[z.name][method];
      const auto& b = table[z.name][baseline];
      if (!m["runs"].get<bool>() || !b["runs"].get<bool>()) continue;
      INFO(z.name << ": " << method << " " << m["output_error"] << " vs " << baseline << " " << b["output_error"]);
      CHECK(m["output_error"].get<double>() <= 1.25 * b["output_error"].get<double>() + 1e-6);
    }
  }
  if (const char* p = std::getenv("COMPRESS_ZOO_ALGORITHMS")) std::ofstream(p) << table.dump(1);
}

namespace {
/// AWQ with its scales searched against int4 and folded but the weights left in float (an exact rewrite):
/// the pass's stats, after checking the float outputs did not change (1e-5).
nlohmann::json awqFoldOnly(Graph& g, const ZooModel& z, const at::Tensor& calibration) {
  const Graph before = g.clone();
  AwqOptions o;
  o.quantize = false;
  o.clip = false;
  auto s = awqQuantizeModel(g, calibration, o, at::kCPU, false);
  INFO(s["groups"].dump());
  double worst = 0;
  for (const auto& c : z.cases) worst = std::max(worst, relDiff(Executor(g).run(c.inputs)[0], Executor(before).run(c.inputs)[0]));
  CHECK(worst <= 1e-5);
  return s;
}
}  // namespace

TEST_CASE("AWQ's scale folding leaves the float model unchanged on GPT-2-, OPT- and BERT-style blocks - tied and post-LN inputs are not folded", "[layers][zoo][awq]") {
  for (const char* family : {"gpt2", "bert", "opt"}) {
    INFO(family);
    ZooModel z = zooModel(family);
    Graph g = importZoo(z);
    const Graph before = g.clone();
    auto s = awqFoldOnly(g, z, tokensFor(z, 16, 16));
    bool scaled = false;  // something was folded (LayerNorm with bias, or a previous linear's rows)
    for (const auto& [name, t] : g.initializers)
      if (before.initializers.count(name) && t.sizes() == before.initializers.at(name).sizes() && !at::equal(t, before.initializers.at(name))) scaled = true;
    // GPT-2 and OPT are pre-LN: q/k/v and the MLP's up projection read a LayerNorm (with bias) only. BERT is
    // post-LN: its LayerNorm output is also the residual stream, so no fold is exact and none is made.
    CHECK(scaled == (std::string(family) != "bert"));
    if (std::string(family) == "opt") {  // its ReLU MLP: fc2's scale goes through the ReLU into fc1's rows and bias
      bool relu_fold = false;
      for (const auto& gr : s["groups"]) relu_fold = relu_fold || (gr["weights"][0] == "layers.0.fc2.weight" && gr["fold"] == "layers.0.fc1.weight");
      CHECK(relu_fold);
    }
  }
}

TEST_CASE("AWQ folds conv scales into BatchNorm through ReLU and pooling - the float CNN is unchanged - others say why", "[layers][zoo][awq]") {
  for (const char* family : {"resnet", "mobilenet_v2"}) {
    INFO(family);
    ZooModel z = zooModel(family);
    Graph g = importZoo(z);
    auto s = awqFoldOnly(g, z, smoothImages(8, 32));
    INFO(s["groups"].dump());
    std::map<std::string, std::string> folds;  // first weight of the group -> fold target
    for (const auto& gr : s["groups"]) {
      folds[gr["weights"][0].get<std::string>()] = gr["fold"].get<std::string>();
      if (gr["fold"] == "none") CHECK_FALSE(gr["why"].get<std::string>().empty());
    }
    if (std::string(family) == "resnet") {
      // Each block's second conv reads ReLU(BatchNorm(.)) alone; the first convs read the residual stream.
      CHECK(folds.at("layer1.conv2.weight") == "layer1.bn1.weight");
      CHECK(folds.at("layer2.conv2.weight") == "layer2.bn1.weight");
      CHECK(folds.at("layer1.conv1.weight") == "none");
      CHECK(folds.at("conv1.weight") == "none");  // the image
    } else {
      // ReLU6 clips, so it does not commute with a scale, and most 1x1 convs read a residual sum; the last
      // conv reads the last block's BatchNorm (a linear bottleneck) alone. Depthwise convs are quantized unscaled.
      CHECK(folds.at("features.18.0.weight") == "features.17.conv.3.weight");
      CHECK(folds.at("features.2.conv.2.weight") == "none");  // ReLU6
      CHECK(s["layers_skipped"].size() == 17);  // the depthwise convs
    }
  }
}
