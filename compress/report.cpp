#include "compress/report.h"

#include "compress/task.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <cmath>
#include <ctime>
#include <map>
#include <fstream>
#include <sstream>
#include <thread>

namespace compress {

using json = nlohmann::json;

std::string humanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string fnv1a64Hex(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

json hostEnvironment() {
  json e;
  char host[256] = "";
  ::gethostname(host, sizeof host - 1);
  e["hostname"] = host;
  struct utsname u;
  if (::uname(&u) == 0) e["os"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) {
      e["cpu"] = line.substr(line.find(':') + 2);
      break;
    }
  e["logical_cores"] = std::thread::hardware_concurrency();
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  e["time_utc"] = ts;
  return e;
}

static std::string fmt(double v, int prec = 4) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(prec);
  os << v;
  return os.str();
}

std::string renderMarkdown(const json& r) {
  std::ostringstream md;
  md << "# Compression report\n\n";
  md << "- Recipe: `" << r["recipe"]["path"].get<std::string>() << "` (hash " << r["recipe"]["fnv1a64"].get<std::string>() << ")\n";
  md << "- Model: `" << r["model"]["path"].get<std::string>() << "` — " << r["model"]["params"].get<int64_t>() << " parameters, "
     << humanBytes(r["model"]["bytes"].get<double>()) << "\n";
  md << "- Task: " << r["task"].get<std::string>() << "\n\n";
  const json& a = r["accuracy"];
  md << "## Accuracy\n\n| | " << a["metric"].get<std::string>() << " |\n|---|---|\n";
  md << "| baseline | " << fmt(a["baseline"].get<double>()) << " |\n";
  md << "| compressed | " << fmt(a["final"].get<double>()) << " |\n";
  md << "| change | " << (a["degradation"].get<double>() >= 0 ? "+" : "") << fmt(100 * a["degradation"].get<double>(), 2) << "% "
     << (metricFor(a["metric"].get<std::string>()).lower_is_better ? "(higher " + a["metric"].get<std::string>() + " is worse)" : std::string("(relative loss)")) << " |\n\n";
  if (a["gate"] != "none")
    md << "Accuracy gate: **" << (a["gate"] == "pass" ? "PASS" : "FAIL") << "** (allowed "
       << fmt(100 * a["max_degradation"].get<double>(), 2) << "%)\n\n";
  const Metric& metric = metricFor(a["metric"].get<std::string>());
  if (a.contains("metric_reason")) md << "Metric: " << a["metric"].get<std::string>() << " — " << metric.description << " (" << a["metric_reason"].get<std::string>() << ").\n\n";
  md << "Evaluated on " << a["count"].get<int64_t>() << (metric.counts == "tokens" ? " scored tokens" : " " + metric.counts) << ".\n\n";
  md << "## Size\n\n| | parameters | bytes |\n|---|---|---|\n";
  md << "| baseline | " << r["model"]["params"].get<int64_t>() << " | " << humanBytes(r["model"]["bytes"].get<double>()) << " |\n";
  md << "| compressed | " << r["compressed"]["params"].get<int64_t>() << " | " << humanBytes(r["compressed"]["bytes"].get<double>()) << " |\n\n";
  md << "Size ratio (compressed / baseline bytes): " << fmt(r["size_ratio"].get<double>(), 3) << "\n\n";
  if (r.contains("sparsity") && r["sparsity"]["pruned_layers_sparsity"].get<double>() > 0) {
    const json& s = r["sparsity"];
    std::map<std::string, int> patterns;
    for (const auto& l : s["layers"]) patterns[l["pattern"].get<std::string>()]++;
    md << "## Sparsity\n\nLinear weights: " << fmt(100 * s["linear_sparsity"].get<double>(), 2) << "% zeros ("
       << s["linear_zeros"].get<int64_t>() << " of " << s["linear_numel"].get<int64_t>() << "); pruned layers: "
       << fmt(100 * s["pruned_layers_sparsity"].get<double>(), 2) << "%. Layers by pattern:";
    for (const auto& [k, v] : patterns) md << " " << k << " " << v << ";";
    md << " per-layer values in report.json (`sparsity.layers`).\n\n";
  }
  md << "## Passes\n\n| # | pass | time (s) | what changed |\n|---|---|---|---|\n";
  int i = 1;
  for (const auto& p : r["passes"])
    md << "| " << i++ << " | " << p["name"].get<std::string>() << " | " << fmt(p["seconds"].get<double>(), 2) << " | "
       << p["summary"].get<std::string>() << " |\n";
  for (const auto& p : r["passes"]) {
    if (!p["stats"].contains("layers") || !p["stats"]["layers"].is_array() || p["stats"]["layers"].empty()) continue;
    md << "\n### " << p["name"].get<std::string>() << " per layer\n\n";
    const json& first = p["stats"]["layers"][0];
    if (first.contains("sparsity")) {
      bool errs = first.contains("output_error_magnitude");
      md << "| weight | shape | pattern | sparsity |" << (errs ? " output error | magnitude's output error |" : "")
         << "\n|---|---|---|---|" << (errs ? "---|---|" : "") << "\n";
      for (const auto& l : p["stats"]["layers"]) {
        md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l.value("pattern", "unstructured")
           << " | " << fmt(100 * l["sparsity"].get<double>(), 2) << "% |";
        if (errs) md << " " << l["output_error"].get<double>() << " | " << l["output_error_magnitude"].get<double>() << " |";
        md << "\n";
      }
    } else if (first.contains("neurons_before")) {
      md << "| layer | group | kept / before |\n|---|---|---|\n";
      for (const auto& l : p["stats"]["layers"])
        md << "| " << l["layer"].get<std::string>() << " | " << l["group"].get<std::string>() << " | "
           << l["kept"].get<int64_t>() << " / " << l["neurons_before"].get<int64_t>() << " |\n";
      if (p["stats"].contains("frozen") && !p["stats"]["frozen"].empty()) {
        md << "\nKept whole (their channels cannot be removed):\n\n";
        for (const auto& f : p["stats"]["frozen"]) md << "- " << f.get<std::string>() << "\n";
      }
    } else if (first.contains("output_error")) {
      md << "| weight | shape | format | output error | RTN's output error |\n|---|---|---|---|---|\n";
      for (const auto& l : p["stats"]["layers"])
        md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l["format"].get<std::string>()
           << " | " << l["output_error"].get<double>() << " | " << l["output_error_rtn"].get<double>() << " |\n";
    } else if (first.contains("bytes_before")) {
      md << "| weight | shape | format | bytes | RMSE |\n|---|---|---|---|---|\n";
      for (const auto& l : p["stats"]["layers"])
        md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l["format"].get<std::string>()
           << " | " << humanBytes(l["bytes_before"].get<double>()) << " → " << humanBytes(l["bytes_after"].get<double>())
           << " | " << fmt(l["rmse"].get<double>(), 6) << " |\n";
    } else {
      for (const auto& l : p["stats"]["layers"]) md << "- `" << l.dump() << "`\n";
    }
  }
  if (r.contains("export")) {
    const json& e = r["export"];
    md << "\n## ONNX export\n\n";
    md << "- File: `" << e["file"].get<std::string>() << "`" << (e["external_data"].get<bool>() ? " + `model.onnx.data`" : "")
       << ", opset " << e["opset"].get<int>() << ", " << humanBytes(e["total_bytes"].get<double>()) << "\n";
    md << "- Linear weights: " << fmt(e["linear_weight_ratio"].get<double>(), 3) << " of their fp32 bytes";
    if (e["quantized_weight_fp32_bytes"].get<int64_t>() > 0)
      md << " (the quantized ones: " << fmt(e["quantized_weight_ratio"].get<double>(), 3) << ")";
    md << "\n\n| weights stored as | bytes |\n|---|---|\n";
    for (const auto& [k, v] : e["bytes_by_format"].items()) md << "| " << k << " | " << humanBytes(v.get<double>()) << " |\n";
    if (e.contains("validation")) {
      const json& v = e["validation"];
      md << "\nONNX checker: " << v["checker"].get<std::string>() << "\n\n";
      if (v["onnxruntime"].is_object()) {
        const json& o = v["onnxruntime"];
        md << "| ONNX Runtime 1.30 vs executor | max abs diff | max rel diff |\n|---|---|---|\n";
        md << "| graph optimizations off (exact) | " << o["opt_disabled"]["max_abs_diff"].get<double>() << " | "
           << o["opt_disabled"]["max_rel_diff"].get<double>() << " |\n";
        md << "| ORT default (what users get) | " << o["opt_all"]["max_abs_diff"].get<double>() << " | "
           << o["opt_all"]["max_rel_diff"].get<double>() << " |\n";
        if (o.contains("perplexity"))
          md << "\nPerplexity through ONNX Runtime: " << fmt(o["perplexity"]["ort_opt_disabled"].get<double>()) << " (executor "
             << fmt(o["perplexity"]["executor"].get<double>()) << "; ORT default optimizations "
             << fmt(o["perplexity"]["ort_opt_all"].get<double>()) << ")\n";
      } else {
        md << "ONNX Runtime: " << v["onnxruntime"].get<std::string>() << "\n";
      }
    }
  }
  md << "\n## Latency\n\n| engine | device | shape | threads | median (ms) baseline | median (ms) compressed |\n|---|---|---|---|---|---|\n";
  for (const auto& l : r["latency"])
    md << "| " << l["engine"].get<std::string>() << " | " << l["device"].get<std::string>() << " | " << l["shape"].dump()
       << " | " << l["threads"].get<int>() << " | " << fmt(l["baseline_median_ms"].get<double>(), 3) << " | "
       << fmt(l["compressed_median_ms"].get<double>(), 3) << " |\n";
  md << "\nThe executor runs the IR with ATen ops; ONNX Runtime runs model.onnx with its default optimizations; crun is "
        "our runtime (runtime/), running model.onnx as shipped (pruned weights in its sparse form where that is faster on "
        "this CPU).\n";
  md << "\n## Environment\n\n```\n" << r["environment"].dump(2) << "\n```\n";
  md << "\nTotal wall time: " << fmt(r["timing"]["total_seconds"].get<double>(), 2) << " s\n";
  return md.str();
}

}  // namespace compress
