// channel_prune_test.cpp — channel pruning with dependency groups on the zoo's CNNs: the groups follow
// residual adds, depthwise convs and BatchNorm; removing channels whose every tensor is zero removes
// exactly those and leaves outputs unchanged; 30% of ResNet and MobileNetV2 gives >= 25% fewer MACs, and
// the smaller model exports and runs in ONNX Runtime and crun as the executor does; targets and bad input.
#include "prune/channel_prune.h"

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/npy.h"
#include "compress/pipeline.h"
#include "compress/progress.h"
#include "compress/options.h"
#include "compress/pass.h"
#include "compress/pass_context.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "quant/rtn.h"
#include "test_util.h"
#include "zoo_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>
#include <fstream>
#include <yaml-cpp/yaml.h>

#include "crt_run.h"

using namespace compress;
using namespace zooutil;
using Catch::Matchers::Contains;

namespace {

std::set<std::set<std::string>> producerSets(const ChannelAnalysis& a) {
  std::set<std::set<std::string>> out;
  for (const auto& grp : a.groups) out.insert(std::set<std::string>(grp.producers.begin(), grp.producers.end()));
  return out;
}

/// Every tensor `a` slices, with the channel ids along its axis: the "member" view of a channel.
std::set<std::string> slicedTensors(const ChannelAnalysis& a, int channel) {
  std::set<std::string> out;
  for (const auto& s : a.slices)
    if (std::find(s.cls.begin(), s.cls.end(), channel) != s.cls.end()) out.insert(s.tensor + "[" + std::to_string(s.axis) + "]");
  return out;
}

ChannelPruneOptions magnitude(double ratio) {
  ChannelPruneOptions o;
  o.ratio = ratio;
  o.score = "magnitude";
  return o;
}

/// A graph with one image input x [batch, 3, height, width], to which `weight` adds seeded weights.
struct ImageGraph {
  Graph g;
  at::Generator gen;
  explicit ImageGraph(uint64_t seed) : gen(at::make_generator<at::CPUGeneratorImpl>(seed)) {
    g.inputs = {"x"};
    g.values["x"] = ValueInfo{DType::Float32, Shape{Dim::sym("batch"), Dim::fixed(3), Dim::sym("height"), Dim::sym("width")}};
  }
  void weight(const std::string& name, const std::vector<int64_t>& shape) {
    g.initializers[name] = at::randn(shape, gen);
    g.parameters.insert(name);
    Shape s;
    for (int64_t d : shape) s.push_back(Dim::fixed(d));
    g.values[name] = ValueInfo{DType::Float32, s};
  }
  /// Output y, value shapes inferred.
  Graph done() {
    g.outputs = {"y"};
    inferShapes(g, {{"x", {DType::Float32, g.values.at("x").shape.value()}}});
    verify(g);
    return g;
  }
};

}  // namespace

TEST_CASE("channel groups follow residual adds, BatchNorm and the layers reading them (ResNet)", "[channel]") {
  Graph g = importZoo(zooModel("resnet"));
  ChannelAnalysis a = findChannelGroups(g, kLayerTargets, {});
  // The stem and the first block's second conv are added together; so are layer2's conv2 and its
  // projection shortcut. The classifier's outputs are the model's output.
  CHECK(producerSets(a) == std::set<std::set<std::string>>{{"conv1.weight", "layer1.conv2.weight"},
                                                            {"layer1.conv1.weight"},
                                                            {"layer2.conv1.weight"},
                                                            {"layer2.conv2.weight", "layer2.downsample.0.weight"}});
  REQUIRE(a.frozen.size() == 1);
  CHECK_THAT(a.frozen[0], Contains("fc.weight") && Contains("graph output"));
  // One channel of the stem group: everything that holds it.
  for (const auto& grp : a.groups) {
    if (grp.producers.size() != 2 || grp.producers[0] != "conv1.weight") continue;
    CHECK(grp.channels.size() == 8);
    CHECK(slicedTensors(a, grp.channels[3]) ==
          std::set<std::string>{"conv1.weight[0]", "bn1.weight[0]", "bn1.bias[0]", "bn1.running_mean[0]", "bn1.running_var[0]",
                                "layer1.conv1.weight[1]", "layer1.conv2.weight[0]", "layer1.bn2.weight[0]", "layer1.bn2.bias[0]",
                                "layer1.bn2.running_mean[0]", "layer1.bn2.running_var[0]", "layer2.conv1.weight[1]",
                                "layer2.downsample.0.weight[1]"});
  }
  // The classifier reads the last group's channels as its input columns.
  for (const auto& grp : a.groups)
    if (grp.producers.size() == 2 && grp.producers[0] == "layer2.conv2.weight") CHECK(slicedTensors(a, grp.channels[0]).count("fc.weight[1]"));
}

TEST_CASE("depthwise convs and squeeze-excitation tie channels - frozen groups say why (MobileNetV2/V3, UNet)", "[channel]") {
  for (const char* name : {"mobilenet_v2", "mobilenet_v3", "efficientnet"}) {
    INFO(name);
    Graph g = importZoo(zooModel(name));
    ChannelAnalysis a = findChannelGroups(g, kLayerTargets, {});
    std::string frozen;
    for (const auto& f : a.frozen) frozen += f + "\n";
    INFO(frozen);
    int64_t dw = 0;
    for (const auto& c : findConvs(g)) dw += c.groups > 1;
    CHECK(dw > 0);
    CHECK(static_cast<int64_t>(a.depthwise.size()) == dw);  // every depthwise conv follows its input's channels
    bool residual = false;
    for (const auto& grp : a.groups) residual = residual || grp.producers.size() >= 2;
    CHECK(residual);
    CHECK(a.groups.size() >= 8);
  }
  Graph u = importZoo(zooModel("unet"));
  ChannelAnalysis a = findChannelGroups(u, kLayerTargets, {});
  std::string all;
  for (const auto& f : a.frozen) all += f + "\n";
  INFO(all);
  CHECK_THAT(all, Contains("e2.weight") && Contains("sliced along its channels"));  // b[:, :8]
  CHECK_THAT(all, Contains("out.weight") && Contains("graph output"));
}

TEST_CASE("removing channels whose every tensor is zero removes exactly those and leaves outputs unchanged", "[channel]") {
  for (const char* name : {"resnet", "mobilenet_v2", "gpt2"}) {
    INFO(name);
    ZooModel z = zooModel(name);
    Graph g = importZoo(z).clone();
    ChannelAnalysis a = findChannelGroups(g, kLayerTargets, {});
    // A quarter of every group's channels, spread over it, zeroed in every tensor that holds them.
    std::set<int> dead;
    for (const auto& grp : a.groups) {
      const int64_t n = std::llround(0.25 * static_cast<double>(grp.channels.size()));
      for (int64_t k = 0; k < n; ++k) dead.insert(grp.channels[static_cast<size_t>(k * 4 + 1) % grp.channels.size()]);
    }
    for (const auto& s : a.slices)
      for (size_t k = 0; k < s.cls.size(); ++k)
        if (dead.count(s.cls[k])) g.initializers.at(s.tensor).select(s.axis, static_cast<int64_t>(k)).zero_();
    std::map<std::string, at::Tensor> before;
    for (const auto& s : a.slices) before[s.tensor] = g.initializers.at(s.tensor).clone();
    const std::vector<at::Tensor> want = outputsOf(g, z);

    nlohmann::json r = channelPrune(g, at::Tensor(), magnitude(0.25), at::kCPU);
    CHECK(r["channels_removed"].get<size_t>() == dead.size());
    // Every sliced tensor is the old one without exactly the dead channels' entries.
    std::map<std::string, std::vector<std::pair<int64_t, std::vector<int64_t>>>> kept;
    for (const auto& s : a.slices) {
      std::vector<int64_t> keep;
      for (size_t k = 0; k < s.cls.size(); ++k)
        if (!dead.count(s.cls[k])) keep.push_back(static_cast<int64_t>(k));
      kept[s.tensor].emplace_back(s.axis, keep);
    }
    for (const auto& [t, axes] : kept) {
      at::Tensor expect = before.at(t);
      for (const auto& [axis, keep] : axes) expect = expect.index_select(axis, at::tensor(keep, at::kLong));
      INFO(t);
      CHECK(at::equal(g.initializers.at(t), expect));
    }
    Executor ex1(g);
    for (size_t k = 0; k < z.cases.size(); ++k) CHECK(relDiff(ex1.run(z.cases[k].inputs)[0], want[k]) <= 1e-5);
    if (std::string(name) == "gpt2") CHECK(!a.shape_consts.empty());  // the MLP's view(*size_out) constants
  }
}

TEST_CASE("30% of the channels of a ResNet and a MobileNetV2: >= 25% fewer MACs, exports, ONNX Runtime and crun match", "[channel][ort]") {
  std::string why;
  const bool have_ort = testutil::requiredOrSkip(ortAvailable(&why), "ONNX Runtime (" + why + ")");
  // GPT-2 too: its MLP's hidden channels pass HF Conv1D's view(*size_out), whose constant is rewritten.
  for (const char* name : {"resnet", "mobilenet_v2", "gpt2"}) {
    INFO(name);
    ZooModel z = zooModel(name);
    Graph g = importZoo(z).clone();
    const bool cnn = z.specs[0].dtype == DType::Float32;
    const at::Tensor calib = cnn ? smoothImages(16, 32) : at::randint(0, 64, {8, 12}, at::kLong);
    ChannelPruneOptions o;  // activation score
    o.ratio = 0.3;
    nlohmann::json r = channelPrune(g, calib, o, at::kCPU);
    INFO(r.dump());
    const double macs_before = r["macs_before"].get<double>(), macs_after = r["macs_after"].get<double>();
    if (cnn) CHECK(macs_after <= 0.75 * macs_before);
    else CHECK(macs_after < macs_before);
    CHECK(r["params_after"].get<int64_t>() < r["params_before"].get<int64_t>());
    CHECK(macsPerSample(g, calib.narrow(0, 0, 1)) == r["macs_after"].get<int64_t>());
    const std::string path = testutil::tempDir("channel") + "/" + name + ".onnx";
    exportOnnx(g, path, {});
    Executor ex(g);
    for (const auto& c : z.cases) {
      at::Tensor want = ex.run(c.inputs)[0];
      CHECK(relDiff(testutil::runCrt(path, c.inputs)[0], want) <= 1e-4);
      if (have_ort) {
        auto ort = ortRun(path, c.inputs, "disabled");
        REQUIRE(ort.size() == 1);
        CHECK(relDiff(ort.begin()->second, want) <= 1e-4);
      }
    }
  }
}

TEST_CASE("target_macs and target_params find the smallest uniform ratio that meets them", "[channel]") {
  ZooModel z = zooModel("resnet");
  const at::Tensor calib = smoothImages(4, 32);
  Graph base = importZoo(z);
  const int64_t macs = macsPerSample(base, calib.narrow(0, 0, 1));
  {
    Graph g = base.clone();
    ChannelPruneOptions o = magnitude(0);
    o.target_macs = 0.6;
    nlohmann::json r = channelPrune(g, calib, o, at::kCPU);
    CHECK(r["macs_before"].get<int64_t>() == macs);
    CHECK(r["macs_after"].get<double>() <= 0.6 * static_cast<double>(macs));
    // A little less pruning would miss the target.
    Graph h = base.clone();
    ChannelPruneOptions less = magnitude(r["ratio"].get<double>() - 0.02);
    nlohmann::json r2 = channelPrune(h, calib, less, at::kCPU);
    CHECK(r2["macs_after"].get<double>() > 0.6 * static_cast<double>(macs));
  }
  {
    Graph g = base.clone();
    ChannelPruneOptions o = magnitude(0);
    o.target_params = 0.5 * static_cast<double>(base.parameterCount());
    nlohmann::json r = channelPrune(g, at::Tensor(), o, at::kCPU);
    CHECK(g.parameterCount() <= base.parameterCount() / 2);
    CHECK(r["macs_after"].get<int64_t>() == -1);  // no data to count MACs on
  }
}

TEST_CASE("channel-prune refuses what it cannot do, with what to change", "[channel]") {
  ZooModel z = zooModel("resnet");
  Graph g = importZoo(z).clone();
  ChannelPruneOptions act;
  CHECK_THROWS_WITH(channelPrune(g, at::Tensor(), act, at::kCPU), Contains("needs data.calibration"));
  ChannelPruneOptions tiny = magnitude(0);
  tiny.target_macs = 10;
  CHECK_THROWS_WITH(channelPrune(g, smoothImages(1, 32), tiny, at::kCPU), Contains("cannot be reached"));
  ChannelPruneOptions only_fc = magnitude(0.3);
  only_fc.targets = {"fc"};
  CHECK_THROWS_WITH(channelPrune(g, at::Tensor(), only_fc, at::kCPU), Contains("no prunable channel group") && Contains("graph output"));
  Graph q = g.clone();
  RtnOptions r;
  r.format = QuantFormat{8, -1, true};
  rtnQuantize(q, r);
  CHECK_THROWS_WITH(channelPrune(q, at::Tensor(), magnitude(0.3), at::kCPU), Contains("channel-prune"));
  // Through the pass interface: a recipe's options, a one-line summary with MACs.
  auto pass = createPass("channel-prune");
  REQUIRE(pass);
  Diagnostics d("recipe.yaml");
  OptionReader rd(YAML::Load("{ratio: 20%, score: magnitude}"), &d, "passes[0].channel-prune");
  pass->configure(rd);
  rd.finish();
  REQUIRE(d.empty());
  CHECK_FALSE(pass->needsCalibration());
  PassContext ctx;
  ctx.calibration = smoothImages(2, 32);
  PassResult res = pass->run(g, ctx);
  CHECK_THAT(res.summary, Contains("MACs per sample") && Contains("ratio 0.200"));
}

TEST_CASE("a recipe prunes a CNN's channels from .npy calibration images and reports the MACs", "[channel][pipeline]") {
  Progress::setEnabled(false);
  const std::string dir = testutil::tempDir("");
  at::Tensor x = smoothImages(24, 32).contiguous();
  NpyArray xa;
  xa.descr = "<f4";
  xa.shape = {24, 3, 32, 32};
  xa.data.assign(static_cast<char*>(x.data_ptr()), static_cast<char*>(x.data_ptr()) + x.nbytes());
  writeNpy(dir + "/x.npy", xa);
  std::ofstream(dir + "/r.yaml") << "model: " << zooDir() << "/resnet.pt\n"
                                 << "inputs: {x: {dtype: float32, shape: [batch, 3, height, width]}}\ntask: classifier\n"
                                 << "data: {calibration: {inputs: x.npy, samples: 16}, eval: {inputs: x.npy, batch: 8}}\n"
                                 << "passes: [{channel-prune: {ratio: 30%}}]\naccuracy: {max_degradation: 100%}\noutput: out\n";
  RunSummary s = runRecipe(loadRecipe(dir + "/r.yaml"));
  const auto& p = s.report["passes"][0];
  INFO(p.dump());
  CHECK(p["name"] == "channel-prune");
  CHECK(p["stats"]["macs_after"].get<double>() <= 0.75 * p["stats"]["macs_before"].get<double>());
  CHECK(s.report["accuracy"]["metric"] == "agreement");
}

TEST_CASE("channels concatenated along the channel axis keep their groups - the reader's columns follow both", "[channel]") {
  // x -> conv a (4) -> relu --.
  //                          concat -> conv c (5) -> global pool (the output)
  // x -> conv b (4) -> relu --'
  ImageGraph b(9);
  b.weight("a.weight", {4, 3, 3, 3});
  b.weight("b.weight", {4, 3, 1, 1});
  b.weight("c.weight", {5, 8, 1, 1});
  b.g.nodes = {Node{"Conv", "", "conv_a", {"x", "a.weight"}, {"ya"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}, ""},
               Node{"Relu", "", "relu_a", {"ya"}, {"ra"}, {}, ""},
               Node{"Conv", "", "conv_b", {"x", "b.weight"}, {"yb"}, {}, ""},
               Node{"Relu", "", "relu_b", {"yb"}, {"rb"}, {}, ""},
               Node{"Concat", "", "cat", {"ra", "rb"}, {"cat"}, {{"axis", int64_t{1}}}, ""},
               Node{"Conv", "", "conv_c", {"cat", "c.weight"}, {"yc"}, {}, ""},
               Node{"GlobalAveragePool", "", "pool", {"yc"}, {"y"}, {}, ""}};
  Graph g = b.done();
  auto& gen = b.gen;

  ChannelAnalysis a = findChannelGroups(g, kLayerTargets, {});
  CHECK(producerSets(a) == std::set<std::set<std::string>>{{"a.weight"}, {"b.weight"}});
  REQUIRE(a.frozen.size() == 1);
  CHECK_THAT(a.frozen[0], Contains("c.weight") && Contains("graph output"));
  // Kill channel 1 of a and channel 2 of b: their filters and c's columns 1 and 4 + 2.
  g.initializers.at("a.weight")[1].zero_();
  g.initializers.at("b.weight")[2].zero_();
  g.initializers.at("c.weight").select(1, 1).zero_();
  g.initializers.at("c.weight").select(1, 6).zero_();
  const at::Tensor c0 = g.initializers.at("c.weight").clone();
  const at::Tensor x = at::randn({2, 3, 9, 7}, gen);
  const at::Tensor want = Executor(g).run1(x);
  nlohmann::json r = channelPrune(g, at::Tensor(), magnitude(0.25), at::kCPU);
  CHECK(r["channels_removed"] == 2);
  CHECK(g.initializers.at("a.weight").size(0) == 3);
  CHECK(g.initializers.at("b.weight").size(0) == 3);
  CHECK(at::equal(g.initializers.at("c.weight"), c0.index_select(1, at::tensor(std::vector<int64_t>{0, 2, 3, 4, 5, 7}, at::kLong))));
  const at::Tensor got = Executor(g).run1(x);
  CHECK(relDiff(got, want) <= 1e-5);
  const std::string path = testutil::tempDir("channel") + "/concat.onnx";
  exportOnnx(g, path, {});
  CHECK(relDiff(testutil::runCrt(path, {{"x", x}})[0], got) <= 1e-4);
}

TEST_CASE("a grouped conv keeps its groups equal: input l and output m of every group go together", "[channel]") {
  // x -> conv a (8) -> relu -> grouped conv g (8 -> 8, 2 groups) -> relu -> conv c (5) -> global pool (the output)
  ImageGraph b(10);
  b.weight("a.weight", {8, 3, 1, 1});
  b.weight("g.weight", {8, 4, 3, 3});
  b.weight("g.bias", {8});
  b.weight("c.weight", {5, 8, 1, 1});
  b.g.nodes = {Node{"Conv", "", "conv_a", {"x", "a.weight"}, {"ya"}, {}, ""},
               Node{"Relu", "", "relu_a", {"ya"}, {"ra"}, {}, ""},
               Node{"Conv", "", "conv_g", {"ra", "g.weight", "g.bias"}, {"yg"}, {{"group", int64_t{2}}, {"pads", std::vector<int64_t>{1, 1, 1, 1}}}, ""},
               Node{"Relu", "", "relu_g", {"yg"}, {"rg"}, {}, ""},
               Node{"Conv", "", "conv_c", {"rg", "c.weight"}, {"yc"}, {}, ""},
               Node{"GlobalAveragePool", "", "pool", {"yc"}, {"y"}, {}, ""}};
  Graph g = b.done();
  auto& gen = b.gen;
  ChannelAnalysis an = findChannelGroups(g, kLayerTargets, {});
  REQUIRE(an.groups.size() == 2);
  for (const auto& grp : an.groups) CHECK(grp.channels.size() == 4);  // 8 channels in pairs, one of each group
  // Kill input 1 of both groups (a's channels 1 and 5, g's input column 1) and output 2 of both groups
  // (g's rows 2 and 6, their biases, c's columns 2 and 6).
  for (int64_t c : {1, 5}) g.initializers.at("a.weight")[c].zero_();
  g.initializers.at("g.weight").select(1, 1).zero_();
  for (int64_t c : {2, 6}) {
    g.initializers.at("g.weight")[c].zero_();
    g.initializers.at("g.bias")[c].zero_();
    g.initializers.at("c.weight").select(1, c).zero_();
  }
  const at::Tensor x = at::randn({2, 3, 6, 5}, gen);
  const at::Tensor want = Executor(g).run1(x);
  nlohmann::json r = channelPrune(g, at::Tensor(), magnitude(0.25), at::kCPU);
  CHECK(r["channels_removed"] == 2);
  CHECK(g.initializers.at("a.weight").size(0) == 6);
  CHECK(g.initializers.at("g.weight").sizes() == at::IntArrayRef{6, 3, 3, 3});  // still 2 groups of 3 inputs, 3 outputs
  CHECK(g.nodes[2].attrInt("group", 0) == 2);
  CHECK(relDiff(Executor(g).run1(x), want) <= 1e-5);
  const std::string path = testutil::tempDir("channel") + "/grouped.onnx";
  exportOnnx(g, path, {});
  CHECK(relDiff(testutil::runCrt(path, {{"x", x}})[0], want) <= 1e-4);
}
