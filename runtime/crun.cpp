// crun — run, benchmark and sample from exported ONNX models with the Compress runtime (no LibTorch).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>

#include "compress/error.h"
#include "compress/npy.h"
#include "compress/tokenizer.h"
#include "runtime/crt.h"
#include "runtime/generator.h"
#include "runtime/size_check.h"

namespace {

const char* kUsage = R"(crun — the Compress runtime: runs exported ONNX models on CPU, no LibTorch.

Usage:
  crun run MODEL.onnx --input NAME=FILE.npy [...] [--output OUT.npy | --output-dir DIR] [--threads N]
        runs once; one output -> --output file, several -> DIR/<output name>.npy
  crun bench MODEL.onnx --shape NAME=1x128 [...] [--threads 2] [--runs 50] [--warmup 5] [--json]
        median / p90 latency, tokens/s, peak memory (random inputs: ints in [0, --max-id), by default the model's
        vocabulary (its logits' last dim) or 500; floats N(0,1));
        --profile adds the time per op type
  crun generate MODEL.onnx --tokenizer tok512.bin --prompt "Once upon a time" [-n 40] [--json]
        [--temperature 0] [--top-k 0] [--top-p 1] [--repetition-penalty 1] [--seed 0]
        [--ctx N] [--kv-dtype f32|f16|i8] [--no-cache] [--ignore-eos] [--prompt-len N]
        streams tokens until EOS or -n. Greedy unless --temperature > 0 (or --top-k / --top-p, which
        sample at temperature 1). A model exported with --kv-cache runs the prompt once, then one-token
        steps over an in-place KV cache of --ctx tokens (default: the model's context) stored as
        --kv-dtype (i8: int8 with a scale per cached row, a quarter of f32's bytes per step); without a cache every
        token recomputes the prefix (crun says so). --json prints one
        object: text, prompt_tokens, generated_tokens, prefill_ms, decode_tokens_per_s, ms_per_token_p50,
        ms_per_token_p90, peak_rss_mb. --prompt-len N: N random prompt ids instead of a tokenizer
        (benchmarks); --ignore-eos: always -n tokens; --warmup N: N untimed generations first.
  crun ppl MODEL.onnx --tokens val.tok512.npy [--seq-len 512] [--max-tokens 32768] [--batch 1] [--kv-dtype f32|f16|i8]
        perplexity exactly as `compress eval` defines it (non-overlapping windows, next-token NLL); a cached export
        scores each window one token per run through the in-session cache, stored as --kv-dtype (default f32)
  crun info MODEL.onnx      inputs, outputs, folded nodes, packed weights, kernel set; with --device, what runs where
                            (for a cached export also what crun generate's decode steps place)
  crun ops                  every op the runtime supports

Options common to all: --threads N (default: all cores), --no-simd (portable scalar kernels),
  --sparse auto|on|off: pruned weights in the sparse form (bitmask + nonzeros, or for fp32, per-channel int8 and
  int4 2:4 two values and two 2-bit indices per 4 weights: fewer bytes per token, bit-identical results) where this CPU's kernels are
  faster with it (auto, default), always, or never. `crun info` says how many weights took it.
  --device cpu|cuda|cuda:N|auto|emulated: where nodes run (default cpu). cuda: every node the CUDA backend has
  a kernel for (MatMul on fp32/int8/int4 weights, elementwise math, norms, Softmax, attention's products) on GPU 0
  (cuda:N: GPU N), the rest on the CPU with copies between; auto: cuda when this build has it and a GPU
  answers; emulated: the device path on host memory (for testing; bit-identical to cpu). `crun info` shows what
  was placed where.
  --no-fuse: run RMSNorm, SwiGLU, GELU, RoPE, per-token scale and attention-softmax chains node by node (by default each
  is one fused node: the same bits).
  --int8-activations model|on|off: int8/int4 weights multiply activations quantized to int8 per 32 values
  with integer dot products (VNNI / AVX2), faster and within a stated error bound of exact fp32: where the file
  asks (MatMulNBits accuracy_level 4, default), for every quantized weight, or never.
  --max-tensor-mib N / --max-memory-mib N: the most one tensor / the whole model (weights plus one run)
  may take (default: half of the machine's memory / all of it); a model asking for more is refused.
  --max-run-ms N: a run (one forward pass; generate and ppl make one per step) taking more than N ms stops
  before its next node with exit code 9, as does the load's constant folding (default 0: no limit; for
  untrusted models, with the memory limits above).
  --allow-nonfinite: write or print outputs that hold NaN/Inf instead of failing with exit code 5.

crun treats model files as untrusted: crafted files get an error, never a crash (docs/security.md).
Outputs are written atomically (temp file + rename) and never replace a folder, link or device file.

Exit codes: 0 ok, 2 usage/argument error, 3 model error (unreadable, malformed, unsupported ops),
4 data error (bad input file or values, over the memory limits), 5 numeric error (the model produced
NaN/Inf), 6 i/o error (missing or unwritable files), 9 stopped (over --max-run-ms), 70 internal error (a bug:
please report it).
)";

constexpr int kExitNumeric = 5;

int exitFor(crt::StatusCode c) { return static_cast<int>(c); }

[[noreturn]] void die(int code, const std::string& msg) {
  std::cerr << "crun: error: " << msg << "\n";
  std::exit(code);
}

crt::DType fromDescr(const std::string& d, const std::string& file) {
  if (d == "<f4") return crt::DType::F32;
  if (d == "<i8") return crt::DType::I64;
  if (d == "<i4") return crt::DType::I32;
  if (d == "<f2") return crt::DType::F16;
  if (d == "<f8") return crt::DType::F64;
  if (d == "|u1") return crt::DType::U8;
  if (d == "|i1") return crt::DType::I8;
  if (d == "|b1") return crt::DType::Bool;
  die(4, file + ": crun cannot feed .npy dtype " + d + " (it takes <f4, <f2, <f8, <i8, <i4, |u1, |i1, |b1)");
}

std::string toDescr(crt::DType t) {
  switch (t) {
    case crt::DType::F32: return "<f4";
    case crt::DType::I64: return "<i8";
    case crt::DType::I32: return "<i4";
    case crt::DType::F16: return "<f2";
    case crt::DType::F64: return "<f8";
    case crt::DType::U8: return "|u1";
    case crt::DType::I8: return "|i1";
    case crt::DType::Bool: return "|b1";
  }
  return "";
}

crt::SessionOptions sessionOptions(const cxxopts::ParseResult& r);

/// Time per op type over every run so far (--profile), to stderr.
void printProfile(const crt::Session& s) {
  double total = 0;
  for (const auto& p : s.profile()) total += p.ms;
  std::fprintf(stderr, "profile (all runs, warm-up included; %% of node time):\n");
  for (const auto& p : s.profile())
    std::fprintf(stderr, "  %-32s %8lld calls %10.3f ms %5.1f%%\n", p.op.c_str(), static_cast<long long>(p.calls), p.ms, 100 * p.ms / std::max(total, 1e-9));
}

/// A device session whose every node stayed on the CPU runs at CPU speed: say so (and why) once, on stderr.
void noteHostOnly(const std::string& path, const crt::SessionInfo& i) {
  if (i.device == "cpu" || i.device_nodes > 0) return;
  std::cerr << "crun: note: no node of " << path << " runs on the device (" << i.device
            << "): the device takes float32 and float16 math (MatMuls, attention, norms, elementwise ops) with more than "
               "light work between host nodes, and this model has none; `crun info --device ...` shows the placement\n";
}

crt::Session open(const std::string& path, const cxxopts::ParseResult& r) {
  auto s = crt::Session::create(path, sessionOptions(r));
  if (!s) die(exitFor(s.status().code), s.status().message);
  noteHostOnly(path, s->info());
  return std::move(s.value());
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

long peakRssKiB() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

/// Splits "NAME=VALUE".
std::pair<std::string, std::string> nameValue(const std::string& s, const char* flag) {
  auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0) die(2, std::string(flag) + " expects NAME=VALUE, got '" + s + "'");
  return {s.substr(0, eq), s.substr(eq + 1)};
}

/// Index of the first NaN/Inf in a float output, or -1.
int64_t firstNonFinite(const crt::TensorView& t) {
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    double v;
    if (t.dtype == crt::DType::F32) v = t.as<float>()[i];
    else if (t.dtype == crt::DType::F64) v = t.as<double>()[i];
    else if (t.dtype == crt::DType::F16) {
      const uint16_t h = t.as<uint16_t>()[i];
      v = (h & 0x7c00) == 0x7c00 ? NAN : 0.0;
    } else return -1;
    if (!std::isfinite(v)) return i;
  }
  return -1;
}

/// Exit 5 when an output holds NaN/Inf, unless --allow-nonfinite.
void checkFinite(const crt::TensorView& t, const std::string& name, const cxxopts::ParseResult& r) {
  if (r.count("allow-nonfinite")) return;
  const int64_t i = firstNonFinite(t);
  if (i >= 0)
    die(kExitNumeric, "output '" + name + "' holds NaN or Inf (first at flat index " + std::to_string(i) +
                          "): the model or its weights are broken; --allow-nonfinite writes it anyway");
}

std::string onlyInputName(const crt::Session& s) {
  if (s.inputs().size() != 1) die(2, "the model has several inputs; this command needs a single token input");
  return s.inputs()[0].name;
}

int cmdRun(const std::string& model, const cxxopts::ParseResult& r) {
  if (r.count("output")) compress::refuseNonRegular(r["output"].as<std::string>());
  crt::Session s = open(model, r);
  if (r.count("output-dir")) {
    const std::string dir = r["output-dir"].as<std::string>();
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) die(6, "cannot create the output folder '" + dir + "': " + ec.message());
    for (const auto& io : s.outputs()) {
      if (io.name.find('/') != std::string::npos || io.name == ".." || io.name.empty())
        die(3, "output name '" + io.name + "' cannot be a file name; use --output with a single-output model");
      compress::refuseNonRegular(dir + "/" + io.name + ".npy");
    }
  }
  std::vector<compress::NpyArray> arrays;
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  const auto specs = r["input"].as<std::vector<std::string>>();
  arrays.reserve(specs.size());
  for (const auto& spec : specs) {
    auto [name, file] = nameValue(spec, "--input");
    arrays.push_back(compress::readNpy(file));
    const auto& a = arrays.back();
    feeds.push_back({name, crt::TensorView{fromDescr(a.descr, file), a.shape, a.data.data()}});
  }
  std::vector<crt::TensorView> outs;
  crt::Status st = s.run(feeds, outs);
  if (!st.ok()) die(exitFor(st.code), st.message);
  for (size_t i = 0; i < outs.size(); ++i) checkFinite(outs[i], s.outputs()[i].name, r);
  for (size_t i = 0; i < outs.size(); ++i) {
    compress::NpyArray a;
    a.descr = toDescr(outs[i].dtype);
    a.shape = outs[i].shape;
    const char* p = static_cast<const char*>(outs[i].data);
    a.data.assign(p, p + outs[i].bytes());
    std::string path;
    if (r.count("output-dir")) path = r["output-dir"].as<std::string>() + "/" + s.outputs()[i].name + ".npy";
    else if (r.count("output") && outs.size() == 1) path = r["output"].as<std::string>();
    else if (r.count("output")) die(2, "the model has " + std::to_string(outs.size()) + " outputs: use --output-dir");
    if (path.empty()) {
      std::cout << s.outputs()[i].name << ": " << crt::dtypeName(outs[i].dtype) << " [";
      for (size_t d = 0; d < a.shape.size(); ++d) std::cout << (d ? "," : "") << a.shape[d];
      std::cout << "]\n";
      continue;
    }
    compress::writeNpy(path, a);
    std::cerr << "wrote " << path << "\n";
  }
  return 0;
}

/// Random token ids are drawn below this: --max-id, else the model's vocabulary (its first output's last dim, the
/// logits', where the file fixes it), else 500 (stories260K's 512 tokens, less a margin). A fixed 500 made every
/// model with a smaller vocabulary fail with "index out of range" in bench and generate --prompt-len.
/// The model's vocabulary: its first output's last dim where the file fixes it (logits [.., vocab]), else 0.
int64_t vocabOf(const crt::Session& s) {
  if (!s.outputs().empty() && s.outputs()[0].shape.size() >= 2 && s.outputs()[0].shape.back() > 0) return s.outputs()[0].shape.back();
  return 0;
}

int64_t maxIdFor(const cxxopts::ParseResult& r, const crt::Session& s) {
  if (r.count("max-id")) return r["max-id"].as<int64_t>();
  return vocabOf(s) > 0 ? vocabOf(s) : 500;
}

int cmdBench(const std::string& model, const cxxopts::ParseResult& r) {
  const double t0 = now();
  crt::Session s = open(model, r);
  const double loadS = now() - t0;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& spec : r["shape"].as<std::vector<std::string>>()) {
    auto [name, dims] = nameValue(spec, "--shape");
    std::vector<int64_t> v;
    std::stringstream ss(dims);
    std::string tok;
    while (std::getline(ss, tok, 'x')) {
      try {
        v.push_back(std::stoll(tok));
      } catch (...) {
        die(2, "--shape " + spec + ": dims are numbers separated by x, e.g. tokens=1x128");
      }
    }
    shapes[name] = v;
  }
  std::mt19937_64 rng(0);
  std::vector<std::vector<char>> data;
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  int64_t tokens = 1;
  for (const auto& io : s.inputs()) {
    std::vector<int64_t> shape;
    if (shapes.count(io.name)) {
      shape = shapes[io.name];
    } else {
      for (int64_t d : io.shape) {
        if (d < 0) die(2, "input '" + io.name + "' has symbolic dims: give --shape " + io.name + "=...");
        shape.push_back(d);
      }
    }
    int64_t n = 0;
    if (!crt::checkedNumel(shape.data(), shape.size(), &n) || n > (int64_t{1} << 34))
      die(2, "--shape for '" + io.name + "' must have dims >= 0 and at most 2^34 elements");
    if (io.dtype == crt::DType::I64 || io.dtype == crt::DType::I32) tokens = std::max(tokens, n);
    data.emplace_back(static_cast<size_t>(n) * crt::dtypeSize(io.dtype));
    char* p = data.back().data();
    const int64_t maxId = maxIdFor(r, s);
    if (maxId < 1) die(2, "--max-id must be >= 1");
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < n; ++i) {
      if (io.dtype == crt::DType::I64) reinterpret_cast<int64_t*>(p)[i] = static_cast<int64_t>(rng() % maxId);
      else if (io.dtype == crt::DType::I32) reinterpret_cast<int32_t*>(p)[i] = static_cast<int32_t>(rng() % maxId);
      else if (io.dtype == crt::DType::F32) reinterpret_cast<float*>(p)[i] = normal(rng);
      else die(2, "bench generates int32/int64/float32 inputs only");
    }
    feeds.push_back({io.name, crt::TensorView{io.dtype, shape, p}});
  }
  std::vector<crt::TensorView> outs;
  const int warmup = r["warmup"].as<int>(), runs = r["runs"].as<int>();
  if (runs < 1 || warmup < 0) die(2, "--runs must be >= 1 and --warmup >= 0");
  for (int i = 0; i < std::max(warmup, 1); ++i) {
    crt::Status st = s.run(feeds, outs);
    if (!st.ok()) die(exitFor(st.code), st.message);
  }
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const double a = now();
    crt::Status st = s.run(feeds, outs);
    ms.push_back((now() - a) * 1e3);
    if (!st.ok()) die(exitFor(st.code), st.message);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2], p90 = ms[std::min(ms.size() - 1, ms.size() * 9 / 10)];
  const auto& info = s.info();
  if (r.count("json")) {
    std::printf("{\"model\": \"%s\", \"median_ms\": %.4f, \"p90_ms\": %.4f, \"min_ms\": %.4f, \"tokens_per_s\": %.1f, "
                "\"peak_rss_mib\": %.1f, \"load_s\": %.3f, \"threads\": %d, \"isa\": \"%s\", \"weight_bytes\": %lld, "
                "\"sparse_matmuls\": %d, \"sparse_pairs\": %d, \"int8_matmuls\": %d, \"int8_isa\": \"%s\", \"panel_matmuls\": %d, \"device\": \"%s\", "
                "\"device_nodes\": %d, \"runs\": %d}\n",
                model.c_str(), med, p90, ms.front(), tokens / (med / 1e3), peakRssKiB() / 1024.0, loadS, info.threads,
                info.isa.c_str(), static_cast<long long>(info.weight_bytes), info.sparse_matmuls, info.sparse_pairs, info.int8_matmuls,
                info.int8_isa.c_str(), info.panel_matmuls, info.device.c_str(), info.device_nodes, runs);
  } else {
    std::printf("model %s  (%s kernels, %d threads%s, load %.2f s)\n", model.c_str(), info.isa.c_str(), info.threads,
                info.device_nodes ? (", " + std::to_string(info.device_nodes) + " nodes on " + info.device).c_str() : "", loadS);
    std::printf("median %.3f ms  p90 %.3f ms  min %.3f ms  over %d runs\n", med, p90, ms.front(), runs);
    std::printf("%.1f tokens/s  peak memory %.1f MiB  packed weights %.2f MiB\n", tokens / (med / 1e3),
                peakRssKiB() / 1024.0, info.weight_bytes / 1048576.0);
  }
  if (r.count("profile")) printProfile(s);
  return 0;
}

crt::SessionOptions sessionOptions(const cxxopts::ParseResult& r) {
  crt::SessionOptions o;
  o.threads = r["threads"].as<int>();
  o.use_simd = !r.count("no-simd");
  o.profile = r.count("profile") > 0;
  o.fuse = !r.count("no-fuse");
  const std::string sparse = r["sparse"].as<std::string>();
  if (sparse == "auto") o.sparse = crt::SparseMode::Auto;
  else if (sparse == "on") o.sparse = crt::SparseMode::On;
  else if (sparse == "off") o.sparse = crt::SparseMode::Off;
  else die(2, "--sparse takes auto, on or off, got '" + sparse + "'");
  const std::string i8 = r["int8-activations"].as<std::string>();
  if (i8 == "model") o.int8_activations = crt::Int8Activations::Model;
  else if (i8 == "on") o.int8_activations = crt::Int8Activations::On;
  else if (i8 == "off") o.int8_activations = crt::Int8Activations::Off;
  else die(2, "--int8-activations takes model, on or off, got '" + i8 + "'");
  const std::string dev = r["device"].as<std::string>();
  if (dev == "cpu") o.device = crt::Device::Cpu;
  else if (dev == "cuda") o.device = crt::Device::Cuda;
  else if (dev.rfind("cuda:", 0) == 0 && dev.size() > 5 && dev.size() < 9 && dev.find_first_not_of("0123456789", 5) == std::string::npos)
    o.device = crt::Device::Cuda, o.device_index = std::stoi(dev.substr(5));
  else if (dev == "auto") o.device = crt::Device::Auto;
  else if (dev == "emulated") o.device = crt::Device::Emulated;
  else die(2, "--device takes cpu, cuda, cuda:N, auto or emulated, got '" + dev + "'");
  const int64_t tensorMib = r["max-tensor-mib"].as<int64_t>(), memMib = r["max-memory-mib"].as<int64_t>();
  if (tensorMib < 0 || memMib < 0 || tensorMib > (int64_t{1} << 40) || memMib > (int64_t{1} << 40))
    die(2, "--max-tensor-mib and --max-memory-mib take a number of MiB (0 = default)");
  o.max_tensor_bytes = tensorMib << 20;
  o.max_total_bytes = memMib << 20;
  o.max_run_ms = r["max-run-ms"].as<int64_t>();
  if (o.max_run_ms < 0) die(2, "--max-run-ms takes a number of milliseconds (0 = no limit)");
  return o;
}

/// --kv-dtype: how an in-session KV cache stores keys and values.
crt::DType kvDtype(const cxxopts::ParseResult& r) {
  const std::string kv = r["kv-dtype"].as<std::string>();
  if (kv != "f32" && kv != "f16" && kv != "i8") die(2, "--kv-dtype is f32, f16 or i8");
  return kv == "f16" ? crt::DType::F16 : kv == "i8" ? crt::DType::I8 : crt::DType::F32;
}

/// generate's options: sampling, context and cache.
crt::GeneratorOptions generatorOptions(const cxxopts::ParseResult& r) {
  crt::GeneratorOptions g;
  g.session = sessionOptions(r);
  g.context = r["ctx"].as<int64_t>();
  g.kv_dtype = kvDtype(r);
  g.use_cache = !r.count("no-cache");
  crt::SamplingOptions& s = g.sampling;
  s.top_k = r["top-k"].as<int>();
  s.top_p = r["top-p"].as<float>();
  s.repetition_penalty = r["repetition-penalty"].as<float>();
  s.seed = r["seed"].as<uint64_t>();
  // sampling starts with --temperature, or with --top-k / --top-p at temperature 1; otherwise greedy
  s.temperature = r.count("temperature") ? r["temperature"].as<float>() : (s.top_k > 0 || s.top_p < 1.f) ? 1.f : 0.f;
  if (s.top_k < 0 || s.temperature < 0 || !(s.top_p > 0 && s.top_p <= 1) || !(s.repetition_penalty > 0) || g.context < 0)
    die(2, "--top-k >= 0, --temperature >= 0 (0 = greedy), 0 < --top-p <= 1, --repetition-penalty > 0 and --ctx >= 0");
  return g;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

std::string jsonString(const std::string& t) {
  std::string o = "\"";
  for (unsigned char ch : t) {
    if (ch == '"' || ch == '\\') o += '\\', o += static_cast<char>(ch);
    else if (ch == '\n') o += "\\n";
    else if (ch < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", ch);
      o += b;
    } else o += static_cast<char>(ch);
  }
  return o + "\"";
}

int cmdGenerate(const std::string& model, const cxxopts::ParseResult& r) {
  const int64_t promptLen = r["prompt-len"].as<int64_t>();
  const bool json = r.count("json") > 0, ignoreEos = r.count("ignore-eos") > 0;
  if (!r.count("tokenizer") && promptLen <= 0)
    die(2, "generate needs --tokenizer (llama2.c tokenizer.bin, e.g. ../shared/models/stories260K/tok512.bin), or --prompt-len N for random prompt ids");
  std::unique_ptr<compress::Tokenizer> tok;
  if (r.count("tokenizer")) tok = std::make_unique<compress::Tokenizer>(compress::Tokenizer::load(r["tokenizer"].as<std::string>()));
  const int n = r["n"].as<int>();
  if (n < 0) die(2, "-n must be >= 0");
  auto gen = crt::Generator::create(model, generatorOptions(r));
  if (!gen) die(exitFor(gen.status().code), gen.status().message);
  crt::Generator& g = gen.value();
  noteHostOnly(model, g.session().info());
  if (!g.cached())
    std::cerr << "crun: note: " << (r.count("no-cache") ? "--no-cache" : model + " has no KV cache (export it with compress export --kv-cache)")
              << ": every token recomputes the whole prefix\n";
  std::vector<int64_t> ids = {compress::Tokenizer::kBos};
  if (promptLen > 0) {
    std::mt19937_64 rng(r["seed"].as<uint64_t>() + 1);
    const int64_t maxId = maxIdFor(r, g.session());
    if (maxId < 4) die(2, "--max-id must be >= 4 (ids 0-2 are llama2.c's special tokens)");
    for (int64_t i = 1; i < promptLen; ++i) ids.push_back(3 + static_cast<int64_t>(rng() % static_cast<uint64_t>(maxId - 3)));
  } else {
    for (int64_t t : tok->encode(r["prompt"].as<std::string>())) ids.push_back(t);
  }
  std::string text = promptLen > 0 ? "" : r["prompt"].as<std::string>();
  for (int w = 0; w < r["warmup"].as<int>() && r.count("warmup"); ++w) {  // benchmarks: plans made, caches warm
    if (!g.start(ids).ok()) break;
    for (int i = 0; i < n && g.next(); ++i) {
    }
  }
  double t0 = now();
  crt::Status st = g.start(ids);
  if (!st.ok()) die(exitFor(st.code), st.message);
  if (!json) std::cout << text << std::flush;
  const double prefillMs = (now() - t0) * 1e3;
  if (tok && g.vocab() > tok->vocabSize())
    die(4, "the model's vocabulary has " + std::to_string(g.vocab()) + " tokens but the tokenizer only " +
               std::to_string(tok->vocabSize()) + ": give the tokenizer the model was trained with");
  std::vector<double> stepMs;
  int made = 0;
  int64_t prev = ids.back();
  const double d0 = now();
  for (int i = 0; i < n; ++i) {
    const double a = now();
    auto t = g.next();
    if (!t) {
      if (g.length() >= g.context()) {
        std::cerr << "\ncrun: stopped at the context length (" << g.context() << " tokens)\n";
        break;
      }
      die(t.status().code == crt::StatusCode::DataError ? kExitNumeric : exitFor(t.status().code), t.status().message);
    }
    if (i > 0) stepMs.push_back((now() - a) * 1e3);  // the first token comes from the prefill's logits
    const int64_t next = t.value();
    if (!ignoreEos && (next == compress::Tokenizer::kEos || next == compress::Tokenizer::kBos)) break;
    if (tok) {
      const std::string piece = tok->decode(prev, next);
      text += piece;
      if (!json) std::cout << piece << std::flush;
    }
    prev = next;
    ++made;
  }
  const double decodeS = now() - d0;
  const double p50 = percentile(stepMs, 0.5), p90 = percentile(stepMs, 0.9);
  double sum = 0;
  for (double m : stepMs) sum += m;
  const double tps = stepMs.empty() ? 0 : 1e3 * static_cast<double>(stepMs.size()) / sum;
  if (r.count("profile")) printProfile(g.session());
  if (json) {
    std::printf("{\"text\": %s, \"prompt_tokens\": %zu, \"generated_tokens\": %d, \"prefill_ms\": %.3f, \"decode_tokens_per_s\": %.2f, "
                "\"ms_per_token_p50\": %.4f, \"ms_per_token_p90\": %.4f, \"peak_rss_mb\": %.1f, \"kv_cache\": %s, \"kv_dtype\": \"%s\", "
                "\"context\": %lld, \"threads\": %d, \"isa\": \"%s\"}\n",
                jsonString(text).c_str(), ids.size(), made, prefillMs, tps, p50, p90, peakRssKiB() / 1024.0, g.cached() ? "true" : "false",
                r["kv-dtype"].as<std::string>().c_str(), static_cast<long long>(g.context()), g.session().info().threads,
                g.session().info().isa.c_str());
  } else {
    std::cout << "\n";
    std::cerr << made << " tokens in " << decodeS << " s: prefill " << prefillMs << " ms (" << ids.size() << " tokens), "
              << tps << " tokens/s decode, p50 " << p50 << " ms/token" << (g.cached() ? " (KV cache, " + r["kv-dtype"].as<std::string>() + ")" : " (no cache)") << "\n";
  }
  return 0;
}

/// -log p(target) from one row of V logits (exit 4 for a target outside them, 5 for NaN/Inf logits).
double tokenNll(const float* l, int64_t V, int64_t target) {
  if (target < 0 || target >= V) die(4, "token " + std::to_string(target) + " is outside the vocabulary");
  const float m = *std::max_element(l, l + V);
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(l[v]) - m);
  const double lp = static_cast<double>(l[target]) - m - std::log(z);
  if (!std::isfinite(lp)) die(kExitNumeric, "non-finite log-probability: the model produced NaN/Inf logits");
  return -lp;
}

/// The logits of one run as [rows, V] float32 (exit 3 otherwise).
int64_t logitsWidth(const crt::TensorView& o) {
  if (o.dtype != crt::DType::F32 || o.shape.size() != 3) die(3, "expected float32 logits [B, T, vocab]");
  return o.shape[2];
}

/// Sum of -log p over `windows` windows of `seq` tokens, `batch` windows per run.
double windowsNll(crt::Session& s, const std::vector<int64_t>& stream, int64_t windows, int64_t seq, int64_t batch) {
  const std::string input = onlyInputName(s);
  std::vector<crt::TensorView> outs;
  std::vector<int64_t> ids;
  double nll = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t b = std::min(batch, windows - w0);
    ids.assign(stream.begin() + w0 * seq, stream.begin() + (w0 + b) * seq);
    crt::Status st = s.run({{input, crt::TensorView::of(ids.data(), {b, seq})}}, outs);
    if (!st.ok()) die(exitFor(st.code), st.message);
    const int64_t V = logitsWidth(outs[0]);
    for (int64_t i = 0; i < b * seq; ++i) nll += tokenNll(outs[0].as<float>() + i * V, V, stream[w0 * seq + i + 1]);
  }
  return nll;
}

/// The same through the in-session KV cache (a cached export; --kv-dtype): each window from an empty cache, one token
/// per run, so every position reads the keys and values the cache stored.
double cachedNll(crt::Session& s, const std::vector<int64_t>& stream, int64_t windows, int64_t seq) {
  const std::string input = onlyInputName(s);
  std::vector<crt::TensorView> outs;
  double nll = 0;
  for (int64_t w = 0; w < windows; ++w) {
    if (crt::Status st = s.kvTruncate(0); !st.ok()) die(exitFor(st.code), st.message);
    for (int64_t i = 0; i < seq; ++i) {
      crt::Status st = s.run({{input, crt::TensorView::of(stream.data() + w * seq + i, {1, 1})}}, outs);
      if (!st.ok()) die(exitFor(st.code), st.message);
      const int64_t V = logitsWidth(outs[0]);
      nll += tokenNll(outs[0].as<float>(), V, stream[w * seq + i + 1]);
    }
  }
  return nll;
}

int cmdPpl(const std::string& model, const cxxopts::ParseResult& r) {
  if (!r.count("tokens")) die(2, "ppl needs --tokens FILE.npy (a token stream, e.g. ../shared/data/tinystories/val.tok512.npy)");
  const std::vector<int64_t> stream = compress::readTokenStream(r["tokens"].as<std::string>());
  const int64_t seq = r["seq-len"].as<int64_t>(), maxTok = r["max-tokens"].as<int64_t>(), batch = r["batch"].as<int64_t>();
  if (seq <= 0 || batch <= 0) die(2, "--seq-len and --batch must be positive");
  if (maxTok > 0 && maxTok % seq) die(2, "--max-tokens must be a multiple of --seq-len");
  const int64_t n = static_cast<int64_t>(stream.size());
  const int64_t windows = maxTok > 0 ? maxTok / seq : (n - 1) / seq;
  if (windows <= 0 || windows * seq + 1 > n)
    die(4, "the token stream has " + std::to_string(n) + " tokens; scoring " + std::to_string(std::max<int64_t>(windows, 1) * seq) + " needs one more");
  // a cached export (past.N inputs) is scored through the in-session cache, as --kv-dtype (f32 by default) stores it
  crt::SessionOptions so = sessionOptions(r);
  so.kv_capacity = seq, so.kv_dtype = kvDtype(r);
  so.kv_if_present = !r.count("kv-dtype");  // (--kv-dtype asks for a cache: a model without one is an error)
  auto created = crt::Session::create(model, so);
  if (!created) die(exitFor(created.status().code), created.status().message);
  crt::Session& s = created.value();
  noteHostOnly(model, s.info());
  const bool cached = s.hasKvCache();
  if (const int64_t vocab = vocabOf(s); vocab > 0)  // (before any run: a token the embedding lacks fails in a Gather)
    for (int64_t i = 0; i <= windows * seq; ++i)
      if (stream[i] < 0 || stream[i] >= vocab)
        die(4, r["tokens"].as<std::string>() + " holds token id " + std::to_string(stream[i]) + " at position " + std::to_string(i) + ", but " +
                   model + "'s vocabulary has " + std::to_string(vocab) +
                   " tokens (its logits' last dim): score it on a token stream of the model's own tokenizer");
  const double t0 = now();
  const double nll = cached ? cachedNll(s, stream, windows, seq) : windowsNll(s, stream, windows, seq, batch);
  const int64_t count = windows * seq;
  const double mean = nll / static_cast<double>(count);
  std::printf("{\"perplexity\": %.6f, \"mean_nll\": %.6f, \"tokens\": %lld, \"seconds\": %.3f%s}\n", std::exp(mean), mean,
              static_cast<long long>(count), now() - t0, cached ? (", \"kv_dtype\": \"" + r["kv-dtype"].as<std::string>() + "\"").c_str() : "");
  return 0;
}

int cmdInfo(const std::string& model, const cxxopts::ParseResult& r) {
  crt::Session s = open(model, r);
  auto printIo = [](const char* what, const std::vector<crt::IoInfo>& v) {
    for (const auto& io : v) {
      std::cout << what << " " << io.name << ": " << crt::dtypeName(io.dtype) << "[";
      for (size_t d = 0; d < io.shape.size(); ++d)
        std::cout << (d ? "," : "") << (io.shape[d] >= 0 ? std::to_string(io.shape[d]) : io.dim_names[d].empty() ? "?" : io.dim_names[d]);
      std::cout << "]\n";
    }
  };
  printIo("input", s.inputs());
  printIo("output", s.outputs());
  const auto& i = s.info();
  auto kv = s.metadata().find("compress.kv_cache");
  if (kv != s.metadata().end()) {
    auto ctx = s.metadata().find("compress.context_length");
    std::cout << "kv cache: " << kv->second << " layers of past/present key-values, context "
              << (ctx != s.metadata().end() && ctx->second != "0" ? ctx->second : "not bounded by a table")
              << " (crun generate keeps the cache in place)\n";
  }
  std::cout << "nodes " << i.nodes << ", folded at load " << i.folded << ", merged repeats " << i.merged << ", packed MatMuls " << i.packed_matmuls
            << " (" << i.sparse_matmuls << " sparse"
            << (i.sparse_pairs ? " (" + std::to_string(i.sparse_pairs) + " as 2:4 pairs)" : std::string()) << ", "
            << i.int8_matmuls << " with int8 activations"
            << (i.int8_matmuls ? " (" + i.int8_isa + ")" : std::string()) << ", " << i.panel_matmuls << " in panel order, "
            << i.weight_bytes
            << " weight bytes), fused chains " << i.fused_nodes << ", kernels " << i.isa << ", threads " << i.threads << "\n";
  auto placement = [](const char* what, const crt::SessionInfo& d) {
    std::cout << what << d.device << ": " << d.device_nodes << " nodes, " << d.device_copies << " copies between host and device"
              << "; on the host each run: " << (d.host_ops.empty() ? "nothing" : d.host_ops) << "\n";
    if (!d.copied_values.empty()) std::cout << "  copied each run: " << d.copied_values << "\n";
  };
  if (i.device != "cpu") placement("device: ", i);
  if (i.device != "cpu" && kv != s.metadata().end()) {  // what crun generate's decode steps place (the in-session cache)
    crt::SessionOptions so = sessionOptions(r);
    so.kv_capacity = -1;
    so.last_position_logits = true;
    auto g = crt::Session::create(model, so);
    if (g.ok()) placement("generate (KV cache in place), device: ", g->info());
    else std::cout << "generate (KV cache in place): " << g.status().message << "\n";
  }
  return 0;
}

}  // namespace

namespace crt::detail {
std::vector<std::string> supportedOps();
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  cxxopts::Options o("crun " + cmd, "");
  o.add_options()("model", "", cxxopts::value<std::string>())
      ("input", "", cxxopts::value<std::vector<std::string>>()->default_value({}))
      ("output", "", cxxopts::value<std::string>())("output-dir", "", cxxopts::value<std::string>())
      ("shape", "", cxxopts::value<std::vector<std::string>>()->default_value({}))
      ("threads", "", cxxopts::value<int>()->default_value("0"))("no-simd", "")("profile", "")
      ("sparse", "", cxxopts::value<std::string>()->default_value("auto"))
      ("int8-activations", "", cxxopts::value<std::string>()->default_value("model"))
      ("device", "", cxxopts::value<std::string>()->default_value("cpu"))
      ("no-fuse", "")
      ("runs", "", cxxopts::value<int>()->default_value("50"))("warmup", "", cxxopts::value<int>()->default_value("5"))
      ("json", "")("max-id", "", cxxopts::value<int64_t>())
      ("tokenizer", "", cxxopts::value<std::string>())
      ("prompt", "", cxxopts::value<std::string>()->default_value("Once upon a time"))
      ("n", "", cxxopts::value<int>()->default_value("40"))("top-k", "", cxxopts::value<int>()->default_value("0"))
      ("temperature", "", cxxopts::value<float>())("top-p", "", cxxopts::value<float>()->default_value("1"))
      ("repetition-penalty", "", cxxopts::value<float>()->default_value("1"))
      ("ctx", "", cxxopts::value<int64_t>()->default_value("0"))("kv-dtype", "", cxxopts::value<std::string>()->default_value("f32"))
      ("no-cache", "")("ignore-eos", "")("prompt-len", "", cxxopts::value<int64_t>()->default_value("0"))
      ("seed", "", cxxopts::value<uint64_t>()->default_value("0"))
      ("tokens", "", cxxopts::value<std::string>())("seq-len", "", cxxopts::value<int64_t>()->default_value("512"))
      ("max-tokens", "", cxxopts::value<int64_t>()->default_value("32768"))
      ("batch", "", cxxopts::value<int64_t>()->default_value("1"))("h,help", "")
      ("max-tensor-mib", "", cxxopts::value<int64_t>()->default_value("0"))
      ("max-memory-mib", "", cxxopts::value<int64_t>()->default_value("0"))("allow-nonfinite", "")
      ("max-run-ms", "", cxxopts::value<int64_t>()->default_value("0"));
  o.parse_positional({"model"});
  try {
    auto r = o.parse(argc - 1, argv + 1);
    if (r.count("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (cmd == "ops") {
      for (const auto& op : crt::detail::supportedOps()) std::cout << op << "\n";
      return 0;
    }
    if (!r.count("model")) die(2, "crun " + cmd + " needs a model file (crun --help)");
    const std::string model = r["model"].as<std::string>();
    if (r["threads"].as<int>() < 0) die(2, "--threads must be >= 0 (0 = all cores)");
    if (cmd == "run") return cmdRun(model, r);
    if (cmd == "bench") return cmdBench(model, r);
    if (cmd == "generate") return cmdGenerate(model, r);
    if (cmd == "ppl") return cmdPpl(model, r);
    if (cmd == "info") return cmdInfo(model, r);
    die(2, "unknown command '" + cmd + "' (commands: run, bench, generate, ppl, info, ops; see crun --help)");
  } catch (const cxxopts::exceptions::exception& e) {
    die(2, std::string(e.what()) + " (see crun --help)");
  } catch (const compress::Error& e) {
    die(compress::exitCodeFor(e.category()), e.what());
  } catch (const std::exception& e) {
    die(70, e.what());
  }
}
