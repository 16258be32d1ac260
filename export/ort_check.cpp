// ort_check.cpp — drives scripts/ort/ort_run.js with .npy files in a temp folder.
#include "export/ort_check.h"

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "compress/error.h"
#include "compress/eval.h"
#include "compress/npy.h"

namespace compress {
namespace {

namespace fs = std::filesystem;

std::string runnerPath() {
  if (const char* p = std::getenv("COMPRESS_ORT_RUNNER")) return p;
  return std::string(COMPRESS_SOURCE_DIR) + "/scripts/ort/ort_run.js";
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs a shell command, returns (exit status, stdout+stderr).
std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) fail(ErrorCategory::Io, "cannot start: " + cmd);
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 1, out};
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/compress-ort-XXXXXX";
    if (!::mkdtemp(tmpl)) fail(ErrorCategory::Io, "cannot create a temp folder for ONNX Runtime");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

nlohmann::json runJson(const std::string& args) {
  std::string why;
  if (!ortAvailable(&why)) fail(ErrorCategory::Io, "ONNX Runtime is not available: " + why);
  auto [rc, out] = shell("node " + quote(runnerPath()) + " " + args);
  if (rc != 0) fail(ErrorCategory::Model, "ONNX Runtime failed: " + out.substr(0, 2000));
  auto line = out.rfind("\n{");
  std::string js = line == std::string::npos ? out : out.substr(line + 1);
  try {
    return nlohmann::json::parse(js);
  } catch (const std::exception&) {
    fail(ErrorCategory::Internal, "unexpected output from ort_run.js: " + out.substr(0, 500));
  }
}

std::string inputArgs(const std::map<std::string, at::Tensor>& inputs, const std::string& dir) {
  std::string args;
  for (const auto& [name, t] : inputs) {
    std::string f = dir + "/in_" + std::to_string(args.size()) + ".npy";
    writeTensorNpy(f, t);
    args += " --in " + quote(name + "=" + f);
  }
  return args;
}

}  // namespace

void writeTensorNpy(const std::string& path, const at::Tensor& t0) {
  at::Tensor t = t0.detach().to(at::kCPU).contiguous();
  NpyArray a;
  switch (t.scalar_type()) {
    case at::kFloat: a.descr = "<f4"; break;
    case at::kHalf: a.descr = "<f2"; break;
    case at::kLong: a.descr = "<i8"; break;
    case at::kInt: a.descr = "<i4"; break;
    case at::kByte: a.descr = "|u1"; break;
    case at::kBool: a.descr = "|b1"; break;
    default: fail(ErrorCategory::Internal, std::string("cannot write ") + c10::toString(t.scalar_type()) + " as .npy");
  }
  a.shape = t.sizes().vec();
  a.data.assign(static_cast<const char*>(t.data_ptr()), static_cast<const char*>(t.data_ptr()) + t.nbytes());
  writeNpy(path, a);
}

bool ortAvailable(std::string* why) {
  static int cached = -1;
  static std::string reason;
  if (cached < 0) {
    std::string runner = runnerPath();
    auto [rc, out] = shell("command -v node");
    if (rc != 0) reason = "node is not installed (scripts/setup.sh installs it)";
    else if (!fs::exists(runner)) reason = runner + " is missing";
    else if (!fs::exists(fs::path(runner).parent_path() / "node_modules/onnxruntime-node"))
      reason = "onnxruntime-node is not installed in " + fs::path(runner).parent_path().string() + " (run scripts/setup.sh)";
    cached = reason.empty();
  }
  if (why) *why = reason;
  return cached == 1;
}

std::map<std::string, at::Tensor> ortRun(const std::string& model, const std::map<std::string, at::Tensor>& inputs,
                                         const std::string& opt) {
  TempDir tmp;
  std::string args = "run " + quote(model) + inputArgs(inputs, tmp.path) + " --out-dir " + quote(tmp.path) + " --opt " + opt;
  nlohmann::json j = runJson(args);
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, info] : j["outputs"].items()) {
    std::string f = tmp.path + "/" + name + ".npy";
    out[name] = tensorFromNpy(readNpy(f), f);
  }
  return out;
}

OrtPerplexity ortPerplexity(const std::string& model, const std::string& tokens_npy, int64_t seq_len, int64_t max_tokens,
                            const std::string& opt) {
  nlohmann::json j = runJson("ppl " + quote(model) + " --tokens " + quote(tokens_npy) + " --seq-len " +
                             std::to_string(seq_len) + " --max-tokens " + std::to_string(max_tokens) + " --opt " + opt);
  return {j["perplexity"].get<double>(), j["mean_nll"].get<double>(), j["count"].get<int64_t>()};
}

double ortLatencyMs(const std::string& model, const std::map<std::string, at::Tensor>& inputs, int runs,
                    const std::string& opt, int threads) {
  TempDir tmp;
  nlohmann::json j = runJson("bench " + quote(model) + inputArgs(inputs, tmp.path) + " --runs " + std::to_string(runs) +
                             " --opt " + opt + " --threads " + std::to_string(threads));
  return j["median_ms"].get<double>();
}

}  // namespace compress
