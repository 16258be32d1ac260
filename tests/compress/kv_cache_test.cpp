// kv_cache_test.cpp — generation with a KV cache, end to end: the kv_cache rewrite of every decoder fixture
// (llama2.c, HF-LLaMA with GQA, Mistral's sliding window, GPT-2's learned positions) in every weight format,
// crun's in-session cache (prefill + one-token steps against the full-sequence logits, no allocation per
// step, fp16 storage), ONNX Runtime on the cached export against crun, the Generator, and the errors.
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <onnx/onnx_pb.h>

#include "compress/error.h"
#include "compress/executor.h"
#include "compress/importer.h"
#include "compress/kv_cache.h"
#include "compress/onnx_import.h"
#include "export/onnx_export.h"
#include "export/ort_check.h"
#include "prune/magnitude_prune.h"
#include "prune/sparsity.h"
#include "quant/fp16.h"
#include "quant/rtn.h"
#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/generator.h"
#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "test_util.h"

// after the LibTorch headers: glog (pulled in by some of them) defines its own CHECK
#include <catch2/catch.hpp>
#include "crt_run.h"

using namespace compress;

namespace {

const std::vector<std::string> kDecoders = {"llama2c", "hf_llama", "mistral", "gpt2", "opt", "gpt_neox"};
const std::vector<std::string> kFormats = {"fp32", "fp16", "int8", "int4-g32", "prune50"};

Graph importDecoder(const std::string& name) {
  std::ifstream f(testutil::fixture("zoo") + "/zoo.json");
  REQUIRE(f.good());
  for (const auto& e : nlohmann::json::parse(f))
    if (e["name"] == name) {
      ImportOptions io;
      for (const auto& i : e["inputs"]) {
        InputSpec sp{i["name"], i["dtype"] == "int64" ? DType::Int64 : DType::Float32, {}};
        for (const auto& d : i["shape"]) sp.shape.push_back(d.is_string() ? Dim::sym(d.get<std::string>()) : Dim::fixed(d.get<int64_t>()));
        io.inputs.push_back(sp);
      }
      return importTorchScript(testutil::fixture("zoo") + "/" + name + ".pt", io);
    }
  FAIL("no fixture " << name);
  return {};
}

void compressAs(Graph& g, const std::string& fmt) {
  RtnOptions r;
  if (fmt == "fp16") convertToFp16(g);
  if (fmt == "int8") r.format = QuantFormat{8, -1, true}, rtnQuantize(g, r);
  if (fmt == "int4-g32") r.format = QuantFormat{4, 32, false}, rtnQuantize(g, r);
  if (fmt == "prune50") magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, {}});
  if (fmt == "prune50-int8") {
    magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, {}});
    r.format = QuantFormat{8, -1, true}, rtnQuantize(g, r);
  }
  if (fmt == "prune50-int4-g32") {
    magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, {}});
    r.format = QuantFormat{4, 32, false}, rtnQuantize(g, r);
  }
  if (fmt == "2:4") magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, parsePattern("2:4")});
  if (fmt == "2:4-int8") {
    magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, parsePattern("2:4")});
    r.format = QuantFormat{8, -1, true}, rtnQuantize(g, r);
  }
  if (fmt == "2:4-int4-g32") {
    magnitudePrune(g, {0.5, "matrix", {"Linear"}, {}, parsePattern("2:4")});
    r.format = QuantFormat{4, 32, false}, rtnQuantize(g, r);
  }
  g.pruneUnused();
  verify(g);
}

std::vector<int64_t> someTokens(int64_t n) {
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = (i * 29 + 5) % 64;
  return t;
}

/// A plain export's inputs for the whole sequence (attention masks: all ones).
std::map<std::string, at::Tensor> fullInputs(const Graph& g, const std::vector<int64_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::map<std::string, at::Tensor> in = {{g.inputs[0], at::tensor(ids, at::kLong).reshape({1, T})}};
  for (size_t i = 1; i < g.inputs.size(); ++i) in[g.inputs[i]] = at::ones({1, T}, at::kLong);
  return in;
}

/// Full-sequence logits [T, vocab] of a plain export in crun.
at::Tensor fullLogits(const std::string& onnx, const Graph& g, const std::vector<int64_t>& ids) {
  return testutil::runCrt(onnx, fullInputs(g, ids))[0][0];
}

crt::Session cachedSession(const std::string& onnx, int64_t capacity, crt::DType dt, crt::Device device = crt::Device::Cpu,
                           bool fuse = true) {
  crt::SessionOptions so;
  so.threads = 2;
  so.fuse = fuse;
  so.kv_capacity = capacity;
  so.kv_dtype = dt;
  so.device = device;
  auto s = crt::Session::create(onnx, so);
  INFO(s.status().message);
  REQUIRE(s.ok());
  return std::move(s.value());
}

/// Logits of each position: a prefill of `prefill` tokens, then one-token steps. Checks that the steps
/// after the first allocate nothing.
at::Tensor stepLogits(crt::Session& s, const std::vector<int64_t>& ids, int64_t prefill) {
  std::vector<at::Tensor> rows;
  std::vector<crt::TensorView> outs;
  const std::string input = s.inputs()[0].name;
  const std::vector<int64_t> ones(ids.size(), 1);
  int64_t before = 0;
  for (int64_t at = 0; at < static_cast<int64_t>(ids.size());) {
    const int64_t n = at == 0 ? prefill : 1;
    if (at == prefill + 1) before = crt::detail::allocationCount();
    std::vector<std::pair<std::string, crt::TensorView>> feeds = {{input, crt::TensorView::of(ids.data() + at, {1, n})}};
    for (size_t i = 1; i < s.inputs().size(); ++i) feeds.push_back({s.inputs()[i].name, crt::TensorView::of(ones.data(), {1, at + n})});
    crt::Status st = s.run(feeds, outs);
    INFO(st.message);
    REQUIRE(st.ok());
    REQUIRE(outs.size() == 1);
    REQUIRE(outs[0].shape == std::vector<int64_t>{1, n, outs[0].shape[2]});
    at::Tensor l = at::empty({n, outs[0].shape[2]}, outs[0].dtype == crt::DType::F16 ? at::kHalf : at::kFloat);
    std::memcpy(l.data_ptr(), outs[0].data, l.nbytes());
    rows.push_back(l.to(at::kFloat));
    at += n;
  }
  CHECK(crt::detail::allocationCount() == before);  // one-token steps replay one plan
  CHECK(s.kvLength() == static_cast<int64_t>(ids.size()));
  return at::cat(rows, 0);
}

double relDiff(const at::Tensor& a, const at::Tensor& ref) {
  REQUIRE(a.sizes() == ref.sizes());
  return (a - ref).abs().max().item<double>() / std::max(ref.abs().max().item<double>(), 1e-30);
}

}  // namespace

TEST_CASE("kv cache: every decoder and format, prefill + one-token steps equal the full-sequence logits - on the emulated device bit for bit, on a GPU within 1e-4", "[kv][device]") {
  const std::string dir = testutil::tempDir("kv");
  const std::vector<int64_t> ids = someTokens(14);
  std::string why;
  const bool gpu = crt::detail::cudaDeviceCount(&why) > 0;
  static bool said = false;  // (the body runs once per section)
  if (!gpu && !said) {
    said = true;
    WARN("CUDA legs skipped: " << why);
  }
  for (const auto& family : kDecoders)
    for (const auto& fmt : kFormats) {
      SECTION(family + " " + fmt) {
        Graph g = importDecoder(family);
        compressAs(g, fmt);
        const std::string plain = dir + "/" + family + "_" + fmt + ".onnx", cached = dir + "/" + family + "_" + fmt + "_kv.onnx";
        exportOnnx(g, plain);
        Graph c = g;
        const KvCacheInfo info = addKvCache(c);
        CHECK(info.layers == 2);
        CHECK(info.kv_heads == (family == "hf_llama" || family == "mistral" ? 2 : 4));  // GQA cached before the repeat
        CHECK(info.context == (family == "llama2c" || family == "gpt2" ? 32 : family == "opt" ? 32 : 0));  // position tables bound it
        ExportOptions eo;
        addKvMetadata(info, eo.metadata);
        exportOnnx(c, cached, eo);
        const at::Tensor want = fullLogits(plain, g, ids);
        // fp16 weights: both sides compute in fp16 at different shapes, so they agree to fp16 precision
        const double tol = fmt == "fp16" ? 2e-3 : 1e-4;
        for (crt::DType dt : {crt::DType::F32, crt::DType::F16, crt::DType::I8}) {
          crt::Session s = cachedSession(cached, 32, dt);
          CHECK(s.inputs().size() == g.inputs.size());  // tokens (and an attention mask over past + new)
          CHECK(s.outputs().size() == 1);
          const double d = relDiff(stepLogits(s, ids, 5), want);
          INFO(family << " " << fmt << (dt == crt::DType::F16 ? " fp16 cache" : dt == crt::DType::I8 ? " int8 cache" : " fp32 cache")
                      << ": rel. diff " << d);
          // an fp16 cache rounds keys and values to 11 bits, an int8 one to 1/254 of each row's largest value
          const double cacheTol = dt == crt::DType::F16 ? std::max(tol, 2e-3) : dt == crt::DType::I8 ? std::max(tol, 5e-3) : tol;
          CHECK(d <= cacheTol);
          // a second sequence in the same session starts from an empty cache
          REQUIRE(s.kvTruncate(0).ok());
          const at::Tensor steps = stepLogits(s, ids, 3);
          CHECK(relDiff(steps, want) <= cacheTol);
          // the fused attention (KvScores -> masked softmax -> KvValues as one crt.KvAttention, where the family's
          // export has the fused softmax) has the unfused chain's bits
          crt::Session unfused = cachedSession(cached, 32, dt, crt::Device::Cpu, false);
          CHECK(at::equal(stepLogits(unfused, ids, 3), steps));
          if (fmt != "fp16" && (family == "llama2c" || family == "hf_llama")) {  // (their masks are added: the fused softmax)
            crt::SessionOptions po;
            po.kv_capacity = 32;
            po.kv_dtype = dt;
            po.profile = true;
            auto ps = crt::Session::create(cached, po);
            REQUIRE(ps.ok());
            stepLogits(ps.value(), ids, 3);
            std::map<std::string, int64_t> calls;
            for (const auto& op : ps->profile()) calls[op.op] = op.calls;
            CHECK(calls["crt.KvAttention"] == info.layers * 13);  // a prefill, the steps' recording at full capacity, 11 steps
            CHECK(calls.count("crt.KvScores") == 0);
          }
          // the device path: placement, copies and device plans; the same bits emulated, 1e-4 on a GPU
          crt::Session emu = cachedSession(cached, 32, dt, crt::Device::Emulated);
          {  // (fp16 exports too: their activations are float16 on the device, the KV cache's products included)
            CHECK(emu.info().device_nodes > 0);
            // the attention, cache included, and the MLP live on the device: nothing of them crosses per token
            // (what stays is the embedding and the position arithmetic, GPT-NeoX's rotary tables included)
            INFO("on the host: " << emu.info().host_ops);
            for (const char* op : {"crt.Kv", "Softmax", "MatMul", "Erf", "LayerNormalization", "Where", "Split", "Cos", "Sin", "Max"})
              CHECK(emu.info().host_ops.find(op) == std::string::npos);
            // nothing computed on the device comes back to the host but the logits (the rotary tables stay: NeoX's,
            // LLaMA's and Mistral's Cos and Sin, llama2.c's pair Gathers; OPT's clamp of the scores and padding mask)
            const std::string& copied = emu.info().copied_values;
            INFO("copied each run: " << copied);
            int down = 0;
            for (size_t at = copied.find(" to host"); at != std::string::npos; at = copied.find(" to host", at + 1)) ++down;
            CHECK(down == 1);
            // (the embedding row in, the logits out, the positions and mask rows the host computes: one per step, since
            // the layers' copies of that arithmetic are merged)
            CHECK(emu.info().device_copies <= (family == "llama2c" ? 2 : family == "opt" ? 5 : family == "gpt2" ? 6 : 4));
          }
          CHECK(at::equal(stepLogits(emu, ids, 3), steps));
          if (gpu) {
            crt::Session cuda = cachedSession(cached, 32, dt, crt::Device::Cuda);
            INFO(cuda.info().device << ": " << cuda.info().device_nodes << " nodes");
            CHECK(relDiff(stepLogits(cuda, ids, 3), steps) <= (fmt == "fp16" ? 1e-2 : 1e-4));
          }
        }
        crt::SessionOptions so;
        so.threads = 2;
        so.device = crt::Device::Emulated;
        CHECK(at::equal(testutil::runCrtWith(plain, fullInputs(g, ids), so)[0][0], want));
        if (gpu) {
          so.device = crt::Device::Cuda;
          CHECK(relDiff(testutil::runCrtWith(plain, fullInputs(g, ids), so)[0][0], want) <= 1e-4);
        }
      }
    }
}

TEST_CASE("kv cache: ONNX Runtime runs the cached export and equals crun (past of 4 positions, 3 new tokens)", "[kv]") {
  std::string why;
  REQUIRE(ortAvailable(&why));
  const std::string dir = testutil::tempDir("kv_ort");
  for (const auto& family : kDecoders)
    for (const std::string fmt : {"fp32", "int4-g32"}) {
      Graph g = importDecoder(family);
      compressAs(g, fmt);
      const KvCacheInfo info = addKvCache(g);
      const std::string path = dir + "/" + family + ".onnx";
      exportOnnx(g, path);
      std::map<std::string, at::Tensor> in;
      in[g.inputs[0]] = at::tensor(someTokens(3), at::kLong).reshape({1, 3});
      for (size_t i = 1; i < g.inputs.size() && g.inputs[i].rfind("past", 0) != 0; ++i) in[g.inputs[i]] = at::ones({1, 7}, at::kLong);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
      for (int l = 0; l < info.layers; ++l)
        for (int kv = 0; kv < 2; ++kv) in[pastName(l, kv == 1)] = at::randn({1, info.kv_heads, 4, info.head_dim}, gen);
      auto ours = testutil::runCrt(path, in);
      auto theirs = ortRun(path, in);
      REQUIRE(ours.size() == g.outputs.size());
      for (size_t k = 0; k < g.outputs.size(); ++k) {
        INFO(family << " " << fmt << " output " << g.outputs[k]);
        REQUIRE(theirs.count(g.outputs[k]));
        CHECK(ours[k].sizes() == theirs[g.outputs[k]].sizes());
        CHECK(relDiff(ours[k], theirs[g.outputs[k]].to(at::kFloat)) <= 1e-4);
      }
      CHECK(ours[1].size(2) == 7);  // present = past + new
    }
}

TEST_CASE("kv cache: a cached export of a 32-token-context model imports back, its cache dims named past and past+seq", "[kv]") {
  const std::string dir = testutil::tempDir("kv_import");
  for (const std::string family : {"llama2c", "gpt2"}) {  // position tables of 32 rows bound the context
    Graph g = importDecoder(family);
    Graph c = g;
    const KvCacheInfo info = addKvCache(c);
    ExportOptions eo;
    addKvMetadata(info, eo.metadata);
    const std::string cached = dir + "/" + family + "_kv.onnx";
    exportOnnx(c, cached, eo);
    // the import probes the graph with lengths for each symbolic dim; a cache input's "past" was once taken for an
    // image's height (40 positions) and overran the 32-row position table
    const Graph back = importOnnx(cached);
    REQUIRE(back.inputs.size() == c.inputs.size());
    for (size_t i = 1; i < back.inputs.size(); ++i) {
      const Shape& s = *back.values.at(back.inputs[i]).shape;
      INFO(family << " input " << back.inputs[i] << ": " << shapeStr(s));
      CHECK(std::find(s.begin(), s.end(), Dim::sym(back.inputs[i].rfind("past", 0) == 0 ? "past" : "past+seq")) != s.end());
    }
    // the names other exporters give these dims (Optimum's) mean the same
    onnx::ModelProto m;
    {
      std::ifstream f(cached, std::ios::binary);
      REQUIRE(m.ParseFromIstream(&f));
    }
    for (auto& in : *m.mutable_graph()->mutable_input())
      for (auto& d : *in.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim())
        if (d.dim_param() == "past") d.set_dim_param("past_sequence_length");
        else if (d.dim_param() == "past+seq") d.set_dim_param("past_sequence_length + sequence_length");
    const std::string renamed = dir + "/" + family + "_kv_optimum_names.onnx";
    {
      std::ofstream f(renamed, std::ios::binary);
      REQUIRE(m.SerializeToOstream(&f));
    }
    const Graph again = importOnnx(renamed);
    for (size_t i = 1; i < again.inputs.size(); ++i) CHECK(shapeStr(*again.values.at(again.inputs[i]).shape) == shapeStr(*back.values.at(back.inputs[i]).shape));
  }
}

namespace {

/// Elements of every value a one-token step of the cached graph `c` computes after `past` cached positions.
std::map<std::string, int64_t> stepSizes(const Graph& c, const KvCacheInfo& info, int64_t past) {
  std::map<std::string, int64_t> numel;
  std::map<std::string, at::Tensor> in = {{c.inputs[0], at::full({1, 1}, 5, at::kLong)}};
  for (size_t i = 1; i < c.inputs.size(); ++i) {
    const std::string& name = c.inputs[i];
    in[name] = name.rfind("past.", 0) == 0 ? at::zeros({1, info.kv_heads, past, info.head_dim})
                                           : at::ones({1, past + 1}, at::kLong);  // an attention mask over past + new
  }
  ExecOptions eo;
  eo.fold_constants = false;
  Executor ex(c, eo);
  ex.addHook([&](int, const Node& n, const std::vector<at::Tensor>&, const std::vector<at::Tensor>& outs) {
    for (size_t k = 0; k < outs.size() && k < n.outputs.size(); ++k) numel[n.outputs[k]] = outs[k].numel();
  });
  ex.run(in);
  return numel;
}

}  // namespace

TEST_CASE("kv cache: a decode step's work grows linearly with the cached length - no [T, T] mask is built and cut", "[kv]") {
  // A one-token step after P cached positions, for two P: every value the step computes (causal masks, rotary
  // tables, scores, the cache itself) may grow with T = P + 1, none with T^2. The masks NeoX, HF LLaMA and Mistral
  // build from positions were computed for all T rows and cut to the last one: O(T^2) per step.
  for (const auto& family : kDecoders) {
    INFO(family);
    Graph c = importDecoder(family);
    const KvCacheInfo info = addKvCache(c);
    const bool bounded = info.context > 0;  // position tables of 32 rows
    const int64_t pasts[2] = {bounded ? 6 : 60, bounded ? 24 : 240};
    const double growth = static_cast<double>(pasts[1] + 1) / static_cast<double>(pasts[0] + 1);  // 3.6-4x; T^2: 13-16x
    const auto n0s = stepSizes(c, info, pasts[0]), n1s = stepSizes(c, info, pasts[1]);
    int checked = 0;
    for (const auto& [v, n0] : n0s) {
      const int64_t n1 = n1s.at(v);
      INFO(v << ": " << n0 << " -> " << n1 << " elements");
      CHECK(static_cast<double>(n1) <= 1.1 * growth * static_cast<double>(n0) + 16);
      checked += n1 > n0;
      // what the rewrite recomputes for the whole length (its ".total" values) is a vector of positions, not a
      // table: rotary tables and masks are built for the new rows
      if (v.size() > 6 && v.compare(v.size() - 6, 6, ".total") == 0) CHECK(n1 <= pasts[1] + 1 + 16);
    }
    CHECK(checked >= 4 * info.layers);  // (the test sees the values that grow: the cache, scores, masks)
    // the fallback, plain cuts after the whole-length values, is checked as the export checks it (prefill and a step
    // against the full sequence), and it is the quadratic graph this test tells apart: some value grows with T^2
    Graph plain = importDecoder(family);
    const KvCacheInfo pi = addKvCache(plain, KvCuts::Plain);
    CHECK(pi.check_rel_diff <= 1e-4);
    const auto p0s = stepSizes(plain, pi, pasts[0]), p1s = stepSizes(plain, pi, pasts[1]);
    double worst = 0;
    for (const auto& [v, n0] : p0s) worst = std::max(worst, static_cast<double>(p1s.at(v)) / static_cast<double>(std::max<int64_t>(n0, 1)));
    CHECK(worst >= 0.9 * growth * growth);
  }
}

TEST_CASE("kv cache: the Generator on stories260K gives the same greedy text with and without the cache", "[kv]") {
  if (!testutil::requiredOrSkip(testutil::haveShared(), "../shared")) return;
  const std::string dir = testutil::tempDir("kv_gen");
  Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"), {});
  Graph c = g;
  const KvCacheInfo info = addKvCache(c);
  CHECK(info.context == 512);
  CHECK(info.kv_heads == 4);
  ExportOptions eo;
  addKvMetadata(info, eo.metadata);
  exportOnnx(c, dir + "/kv.onnx", eo);
  std::vector<std::vector<int64_t>> texts;
  for (bool cache : {true, false}) {
    crt::GeneratorOptions o;
    o.session.threads = 1;
    o.use_cache = cache;
    auto gen = crt::Generator::create(dir + "/kv.onnx", o);
    INFO(gen.status().message);
    REQUIRE(gen.ok());
    CHECK(gen->cached() == cache);
    CHECK(gen->context() == 512);
    REQUIRE(gen->start({1, 403, 407}).ok());
    std::vector<int64_t> out;
    int64_t before = 0;
    for (int i = 0; i < 100; ++i) {
      if (i == 2) before = crt::detail::allocationCount();
      auto t = gen->next();
      REQUIRE(t.ok());
      out.push_back(t.value());
    }
    // with the cache as long as the model's context, the steps replay one plan: a Slice that takes a whole table at
    // the recorded length aliases there and copies at shorter ones into the plan's spare space (it used to record the
    // graph twice per token)
    if (cache) CHECK(crt::detail::allocationCount() == before);
    texts.push_back(out);
  }
  CHECK(texts[0] == texts[1]);
}

TEST_CASE("kv cache: last_position_logits computes the classifier for the last row only, the same numbers", "[kv]") {
  const std::string dir = testutil::tempDir("kv_last");
  for (const std::string family : {"llama2c", "gpt2", "opt"}) {
    Graph g = importDecoder(family);
    exportOnnx(g, dir + "/" + family + ".onnx");
    const std::vector<int64_t> ids = someTokens(9);
    const at::Tensor want = fullLogits(dir + "/" + family + ".onnx", g, ids);
    crt::SessionOptions so;
    so.last_position_logits = true;
    auto s = crt::Session::create(dir + "/" + family + ".onnx", so);
    REQUIRE(s.ok());
    const std::vector<int64_t> ones(ids.size(), 1);
    std::vector<std::pair<std::string, crt::TensorView>> feeds = {{g.inputs[0], crt::TensorView::of(ids.data(), {1, 9})}};
    for (size_t i = 1; i < g.inputs.size(); ++i) feeds.push_back({g.inputs[i], crt::TensorView::of(ones.data(), {1, 9})});
    auto out = s->run(feeds);
    REQUIRE(out.ok());
    INFO(family);
    REQUIRE(out.value()[0].shape == std::vector<int64_t>{1, 1, want.size(1)});
    at::Tensor got = at::from_blob(const_cast<uint8_t*>(out.value()[0].bytes.data()), {want.size(1)}, at::kFloat);
    CHECK(relDiff(got, want[8]) <= 1e-6);
  }
}

TEST_CASE("kv cache: bad inputs are clear errors", "[kv]") {
  const std::string dir = testutil::tempDir("kv_bad");
  Graph g = importDecoder("llama2c");
  exportOnnx(g, dir + "/plain.onnx");
  Graph c = g;
  const KvCacheInfo info = addKvCache(c);
  ExportOptions eo;
  addKvMetadata(info, eo.metadata);
  exportOnnx(c, dir + "/kv.onnx", eo);

  SECTION("a past of the wrong shape") {
    auto s = crt::Session::create(dir + "/kv.onnx");
    REQUIRE(s.ok());
    std::vector<int64_t> tok = {1, 2};
    std::vector<float> past(1 * info.kv_heads * 3 * (info.head_dim + 1), 0.f);
    std::vector<std::pair<std::string, crt::TensorView>> feeds = {{c.inputs[0], crt::TensorView::of(tok.data(), {1, 2})}};
    for (int l = 0; l < info.layers; ++l)
      for (int kv = 0; kv < 2; ++kv)
        feeds.push_back({pastName(l, kv == 1), crt::TensorView::of(past.data(), {1, info.kv_heads, 3, info.head_dim + 1})});
    std::vector<crt::TensorView> out;
    crt::Status st = s->run(feeds, out);
    CHECK(st.code == crt::StatusCode::InvalidArgument);
    CHECK(st.message.find("past.0.key") != std::string::npos);
    CHECK(st.message.find("dim 3 must be " + std::to_string(info.head_dim)) != std::string::npos);
  }
  SECTION("a prompt longer than the context, a sequence past the cache, a batch of two") {
    crt::GeneratorOptions o;
    auto gen = crt::Generator::create(dir + "/kv.onnx", o);
    REQUIRE(gen.ok());
    CHECK(gen->context() == 32);
    crt::Status st = gen->start(std::vector<int64_t>(33, 1));
    CHECK(st.code == crt::StatusCode::InvalidArgument);
    CHECK(st.message.find("longer than the context of 32") != std::string::npos);
    o.context = 64;
    auto big = crt::Generator::create(dir + "/kv.onnx", o);
    CHECK(big.status().message.find("longer than the model's 32 positions") != std::string::npos);

    crt::Session s = cachedSession(dir + "/kv.onnx", 4, crt::DType::F32);
    std::vector<int64_t> tok = {1, 2, 3, 4, 5};
    std::vector<crt::TensorView> out;
    st = s.run({{c.inputs[0], crt::TensorView::of(tok.data(), {1, 5})}}, out);
    CHECK(st.code == crt::StatusCode::InvalidArgument);
    CHECK(st.message.find("exceed the KV cache's 4") != std::string::npos);
    st = s.run({{c.inputs[0], crt::TensorView::of(tok.data(), {2, 2})}}, out);
    CHECK(st.code == crt::StatusCode::InvalidArgument);
    CHECK(st.message.find("one sequence") != std::string::npos);
    CHECK(s.kvLength() == 0);  // failed runs cache nothing
  }
  SECTION("a model without a cache, and a model that is not a decoder") {
    crt::SessionOptions so;
    so.kv_capacity = 16;
    auto s = crt::Session::create(dir + "/plain.onnx", so);
    CHECK(s.status().code == crt::StatusCode::ModelError);
    CHECK(s.status().message.find("--kv-cache") != std::string::npos);
    Graph opt = importDecoder("bert");  // three inputs, no causal attention
    try {
      addKvCache(opt);
      FAIL("a CNN got a KV cache");
    } catch (const Error& e) {
      CHECK(e.category() == ErrorCategory::Model);
      CHECK(std::string(e.what()).find("kv_cache") != std::string::npos);
    }
  }
}

/// A zoo decoder of `family` compressed as `fmt` (compressAs) and exported to dir; the file's path.
std::string exportCompressed(const std::string& dir, const std::string& family, const std::string& fmt) {
  Graph g = importDecoder(family);
  compressAs(g, fmt);
  const std::string onnx = dir + "/" + family + "_" + fmt + ".onnx";
  exportOnnx(g, onnx);
  return onnx;
}

/// The first output of one run of s on `feeds`, as floats.
std::vector<float> runFirstOutput(crt::Session& s, const std::vector<std::pair<std::string, crt::TensorView>>& feeds) {
  auto out = s.run(feeds);
  INFO(out.status().message);
  REQUIRE(out.ok());
  const auto& o = out.value()[0];
  std::vector<float> v(o.bytes.size() / 4);
  std::memcpy(v.data(), o.bytes.data(), o.bytes.size());
  return v;
}

/// A plain export's feeds in crun for the tokens `ids` (attention masks from `ones`, at least as long: all ones).
std::vector<std::pair<std::string, crt::TensorView>> wholeFeeds(const crt::Session& s, const std::vector<int64_t>& ids,
                                                                const std::vector<int64_t>& ones) {
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<std::pair<std::string, crt::TensorView>> feeds = {{s.inputs()[0].name, crt::TensorView::of(ids.data(), {1, n})}};
  for (size_t i = 1; i < s.inputs().size(); ++i) feeds.push_back({s.inputs()[i].name, crt::TensorView::of(ones.data(), {1, n})});
  return feeds;
}

TEST_CASE("sparse weights: pruned models give the same logits in crun with the sparse form as dense", "[kv][sparse]") {
  const std::string dir = testutil::tempDir("kv_sparse");
  const std::vector<int64_t> ids = someTokens(9);
  for (const std::string family : {"llama2c", "gpt2", "opt"})
    for (const std::string fmt : {"prune50", "prune50-int8", "2:4", "2:4-int8", "2:4-int4-g32"}) {
      SECTION(family + " " + fmt) {
        const std::string onnx = exportCompressed(dir, family, fmt);
        std::vector<std::vector<float>> logits;
        for (crt::SparseMode mode : {crt::SparseMode::Off, crt::SparseMode::On}) {
          crt::SessionOptions so;
          so.threads = 2;
          so.sparse = mode;
          so.profile = true;
          auto s = crt::Session::create(onnx, so);
          INFO(s.status().message);
          REQUIRE(s.ok());
          if (mode == crt::SparseMode::Off) CHECK(s->info().sparse_matmuls == 0);
          else CHECK(s->info().sparse_matmuls == s->info().packed_matmuls);  // every linear is pruned
          // fp32, int8-per-channel and int4 2:4 weights take the pairs layout (no expansion): all of "2:4", "2:4-int8"
          // and "2:4-int4-g32" (with those RTN leaves in fp32, a classifier); unstructured ones the masks
          const int pairs = s->info().sparse_pairs;
          if (mode == crt::SparseMode::Off || fmt.rfind("prune50", 0) == 0) CHECK(pairs == 0);
          else CHECK(pairs == s->info().packed_matmuls);
          const std::vector<int64_t> ones(ids.size(), 1);
          logits.push_back(runFirstOutput(*s, wholeFeeds(*s, ids, ones)));
          // the profile names the form that ran: int8 / int4 2:4 as Q8 / Q4 pairs, dense as centered Q8P / Q4P panels
          std::map<std::string, int64_t> calls;
          for (const auto& op : s->profile()) calls[op.op] = op.calls;
          const bool on = mode == crt::SparseMode::On;
          if (fmt == "2:4-int8") CHECK(calls[on ? "MatMul (packed q8 panels 2:4 pairs)" : "MatMul (packed q8 panels)"] > 0);
          if (fmt == "2:4-int4-g32")
            CHECK(calls[on ? "com.microsoft.MatMulNBits (packed q4 panels 2:4 pairs)" : "com.microsoft.MatMulNBits (packed q4 panels)"] > 0);
        }
        REQUIRE(logits[0].size() == logits[1].size());
        // Equal values: the sparse kernels do the dense kernels' arithmetic (fp32 panels, and int8 / int4 2:4 pairs
        // against centered Q8P / Q4P panels). Except that the masks of int8 and int4 weights do the dense row kernels' arithmetic,
        // while dense int8 and int4 weights run as Q8P / Q4P panels (matmul.h, choosePanelForms), which sum in another
        // order: there within 1e-5 of the largest logit (the sparse kernels' bits against the row kernels:
        // tests/runtime/sparse_test.cpp).
        float top = 0;
        for (float v : logits[0]) top = std::max(top, std::abs(v));
        const float tol = fmt == "prune50" || fmt.rfind("2:4", 0) == 0 ? 0.f : 1e-5f * top;
        int64_t differ = 0;
        for (size_t i = 0; i < logits[0].size(); ++i) differ += !(std::abs(logits[0][i] - logits[1][i]) <= tol);
        CHECK(differ == 0);
      }
    }
}

TEST_CASE("sparse weights with int8 activations: the same logits as dense int8 activations", "[kv][sparse][int8]") {
  // int8 weights in the masks form and int4 ones in the int8-lanes form run the sparse int8 kernels where the CPU has
  // VBMI2 (else they stay exact: then the counts below differ and the test says so); either way their sums are the
  // dense int8 kernels' integers in the same order, so the logits are the same bits.
  const std::string dir = testutil::tempDir("kv_sparse_i8");
  const std::vector<int64_t> ids = someTokens(9);
  const crt::detail::Kernels* avx512 = crt::detail::avx512Kernels();
  const bool vbmi2 = avx512 && avx512->gemm_i8_sparse;
  for (const std::string family : {"llama2c", "gpt2"})
    for (const std::string fmt : {"prune50-int8", "prune50-int4-g32", "2:4-int4-g32"}) {
      SECTION(family + " " + fmt) {
        const std::string onnx = exportCompressed(dir, family, fmt);
        std::vector<std::vector<float>> logits;
        std::vector<int> int8;
        for (crt::SparseMode mode : {crt::SparseMode::Off, crt::SparseMode::On}) {
          crt::SessionOptions so;
          so.threads = 2;
          so.sparse = mode;
          so.int8_activations = crt::Int8Activations::On;
          auto s = crt::Session::create(onnx, so);
          INFO(s.status().message);
          REQUIRE(s.ok());
          const auto& info = s->info();
          CHECK(info.sparse_matmuls == (mode == crt::SparseMode::On ? info.packed_matmuls : 0));
          int8.push_back(info.int8_matmuls);
          const std::vector<int64_t> ones(ids.size(), 1);
          auto feeds = wholeFeeds(*s, ids, ones);
          for (int64_t n : {int64_t{1}, static_cast<int64_t>(ids.size())}) {  // decode (one token) and prefill
            for (auto& f : feeds) f.second.shape[1] = n;
            logits.push_back(runFirstOutput(*s, feeds));
          }
        }
        CHECK(int8[0] > 0);  // (the quantized linears; RTN leaves the classifier in fp32)
        if (!vbmi2) {
          CHECK(int8[1] == 0);
          WARN("no VBMI2: the sparse weights kept exact compute, so their logits are not compared with int8 activations'");
          continue;
        }
        CHECK(int8[1] == int8[0]);  // sparse or not, the same weights with int8 activations
        for (int i = 0; i < 2; ++i) {
          REQUIRE(logits[i].size() == logits[i + 2].size());
          CHECK(std::memcmp(logits[i].data(), logits[i + 2].data(), logits[i].size() * 4) == 0);
        }
      }
    }
}

TEST_CASE("compact sparse weights on disk: smaller files that ONNX Runtime and crun run with the dense file's logits", "[kv][sparse]") {
  std::string why;
  REQUIRE(ortAvailable(&why));
  const std::string dir = testutil::tempDir("kv_compact");
  const std::vector<int64_t> ids = someTokens(7);
  REQUIRE(testutil::haveShared());  // the zoo fixtures' weights are too small to be worth compacting
  for (const std::string family : {"stories260K"})
    for (const std::string fmt : {"prune50", "prune50-int8"}) {
      SECTION(family + " " + fmt) {
        Graph g = importTorchScript(testutil::shared("models/stories260K/stories260K.pt"), {});
        compressAs(g, fmt);
        const std::string dense = dir + "/" + family + "_" + fmt + ".onnx", compact = dir + "/" + family + "_" + fmt + "_c.onnx";
        ExportOptions eo;
        const nlohmann::json dj = exportOnnx(g, dense, eo);
        eo.compact_sparse = true;
        const nlohmann::json cj = exportOnnx(g, compact, eo);
        // every pruned linear is compacted, and its bytes shrink to about mask + half
        const nlohmann::json& sw = cj["sparse_weights"];
        INFO(sw.dump());
        CHECK(sw["weights"].get<int>() >= (fmt == "prune50" ? 35 : 15));  // int8: the 64 x 64 ones save too little
        const double ratio = sw["compact_bytes"].get<double>() / sw["dense_bytes"].get<double>();
        CHECK(ratio < (fmt == "prune50" ? 0.56 : 0.66));
        CHECK(ratio > (fmt == "prune50" ? 0.50 : 0.60));
        CHECK(cj["file_bytes"].get<int64_t>() < dj["file_bytes"].get<int64_t>());
        std::map<std::string, at::Tensor> in = {{g.inputs[0], at::tensor(ids, at::kLong).reshape({1, 7})}};
        for (size_t i = 1; i < g.inputs.size(); ++i) in[g.inputs[i]] = at::ones({1, 7}, at::kLong);
        const at::Tensor want = testutil::runCrt(dense, in)[0];
        CHECK(relDiff(testutil::runCrt(compact, in)[0], want) == 0.0);  // the same weights, rebuilt at load
        const at::Tensor ortDense = ortRun(dense, in).at(g.outputs[0]).to(at::kFloat);
        CHECK(relDiff(ortRun(compact, in).at(g.outputs[0]).to(at::kFloat), ortDense) == 0.0);
        CHECK(relDiff(ortDense, want) <= 1e-4);
        // crun packs the rebuilt int8 weights as int8, not as the fp32 they dequantize to
        auto s = crt::Session::create(compact);
        REQUIRE(s.ok());
        auto sd = crt::Session::create(dense);
        REQUIRE(sd.ok());
        CHECK(s->info().weight_bytes == sd->info().weight_bytes);
      }
    }
}

