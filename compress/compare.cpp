// compare.cpp — `compress compare`: report.json files -> one table, Pareto fronts, plots (compare.h).
// The steps: load and check each report, refuse runs that are not comparable, build a row per run (and one
// for the baseline), mark the fronts, render.
#include "compress/compare.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "compress/atomic_dir.h"
#include "compress/error.h"
#include "compress/npy.h"
#include "compress/report.h"
#include "compress/svg.h"
#include "compress/task.h"

namespace compress {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct LoadedReport {
  std::string file, name;
  json r;
};

LoadedReport loadReport(const std::string& path) {
  LoadedReport l;
  std::error_code ec;
  const bool dir = fs::is_directory(path, ec);
  l.file = dir ? (fs::path(path) / "report.json").string() : path;
  fs::path folder = dir ? fs::path(path) : fs::path(path).parent_path();
  if (folder.filename().empty()) folder = folder.parent_path();  // "out/run/"
  l.name = folder.filename().string();
  if (l.name.empty() || l.name == ".") l.name = fs::absolute(folder).lexically_normal().filename().string();
  std::ifstream in(l.file, std::ios::binary);
  if (!in)
    fail(ErrorCategory::Io, l.file + ": cannot read it" + (fs::exists(l.file, ec) ? "" : " (no such file)") +
                                "; give output folders of `compress run` (each holds a report.json) or report.json files");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    l.r = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail(ErrorCategory::Data, l.file + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!l.r.is_object() || !l.r.contains("tool") || !l.r["tool"].is_object() || l.r["tool"].value("name", "") != "compress")
    fail(ErrorCategory::Data, l.file + ": not a compress report (no tool.name \"compress\")");
  if (!l.r.contains("schema_version") || l.r["schema_version"] != kReportSchemaVersion)
    fail(ErrorCategory::Data, l.file + ": report schema version " + (l.r.contains("schema_version") ? l.r["schema_version"].dump() : "(none)") +
                                  "; this compress reads version " + std::to_string(kReportSchemaVersion) + " (re-run the recipe)");
  return l;
}

/// A required value; Error(Data) naming the file and the key when it is missing or of the wrong type.
const json& need(const LoadedReport& l, const std::string& dotted) {
  const json* j = &l.r;
  size_t p = 0;
  while (p <= dotted.size()) {
    size_t q = dotted.find('.', p);
    if (q == std::string::npos) q = dotted.size();
    const std::string key = dotted.substr(p, q - p);
    if (!j->is_object() || !j->contains(key)) fail(ErrorCategory::Data, l.file + ": missing " + dotted + " (not a complete compress report)");
    j = &(*j)[key];
    p = q + 1;
  }
  return *j;
}

double needNumber(const LoadedReport& l, const std::string& dotted) {
  const json& j = need(l, dotted);
  if (!j.is_number()) fail(ErrorCategory::Data, l.file + ": " + dotted + " is " + j.dump() + ", not a number");
  return j.get<double>();
}

std::string needString(const LoadedReport& l, const std::string& dotted) {
  const json& j = need(l, dotted);
  if (!j.is_string()) fail(ErrorCategory::Data, l.file + ": " + dotted + " is " + j.dump() + ", not a string");
  return j.get<std::string>();
}

double optNumber(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::string shapeText(const json& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i].get<int64_t>());
  return s + "]";
}

/// The latency entries of one report, sorted into the comparison's slots.
struct Latencies {
  const json* crun_decode = nullptr;
  const json* crun_prefill = nullptr;
  const json* ort = nullptr;
};

Latencies latenciesOf(const LoadedReport& l) {
  Latencies t;
  const json& lat = need(l, "latency");
  if (!lat.is_array()) fail(ErrorCategory::Data, l.file + ": latency is not a list");
  for (const json& e : lat) {
    if (!e.is_object() || !e.contains("engine") || !e["engine"].is_string() || !e.contains("shape") || !e["shape"].is_array())
      fail(ErrorCategory::Data, l.file + ": a latency entry lacks engine or shape: " + e.dump());
    const std::string engine = e["engine"].get<std::string>();
    int64_t numel = 1;
    for (const json& d : e["shape"]) numel *= d.is_number_integer() ? d.get<int64_t>() : 0;
    if (engine.rfind("crun", 0) == 0) (numel == 1 ? t.crun_decode : t.crun_prefill) = &e;
    else if (engine.rfind("onnxruntime", 0) == 0) t.ort = &e;
  }
  return t;
}

/// Each latency slot from the first report that has it.
Latencies firstLatencies(const std::vector<LoadedReport>& all) {
  Latencies t;
  for (const LoadedReport& l : all) {
    const Latencies x = latenciesOf(l);
    if (!t.crun_decode) t.crun_decode = x.crun_decode;
    if (!t.crun_prefill) t.crun_prefill = x.crun_prefill;
    if (!t.ort) t.ort = x.ort;
  }
  return t;
}

/// The facts two runs must share to be compared, and the reason they differ ("" when they do not).
std::string mismatch(const LoadedReport& a, const LoadedReport& b) {
  auto differs = [&](const std::string& what, const std::string& x, const std::string& y) {
    return x == y ? std::string() : what + " differs: " + x + " (" + a.name + ") vs " + y + " (" + b.name + ")";
  };
  const std::string file_a = fs::path(needString(a, "model.path")).filename().string();
  const std::string file_b = fs::path(needString(b, "model.path")).filename().string();
  for (const std::string& why :
       {differs("the model", file_a, file_b),
        differs("the model's parameter count", need(a, "model.params").dump(), need(b, "model.params").dump()),
        differs("the task", needString(a, "task"), needString(b, "task")),
        differs("the metric", needString(a, "accuracy.metric"), needString(b, "accuracy.metric"))})
    if (!why.empty()) return why;
  if (need(a, "accuracy.measured") == true && need(b, "accuracy.measured") == true) {
    const double ba = needNumber(a, "accuracy.baseline"), bb = needNumber(b, "accuracy.baseline");
    if (need(a, "accuracy.count") != need(b, "accuracy.count") || std::fabs(ba - bb) > 1e-4 * std::max(std::fabs(ba), 1e-12)) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "the evaluation differs: baseline %.6g on %s (%s) vs %.6g on %s (%s)", ba,
                    need(a, "accuracy.count").dump().c_str(), a.name.c_str(), bb, need(b, "accuracy.count").dump().c_str(),
                    b.name.c_str());
      return buf;
    }
  }
  return "";
}

CompareRow runRow(const LoadedReport& l, double baseline_params) {
  CompareRow row;
  row.name = l.name;
  row.source = l.file;
  row.recipe = needString(l, "recipe.path");
  row.measured = need(l, "accuracy.measured") == true;
  if (row.measured) {
    row.metric = needNumber(l, "accuracy.final");
    row.change = needNumber(l, "accuracy.degradation");
  }
  row.gate = needString(l, "accuracy.gate");
  row.bytes = needNumber(l, "compressed.bytes");
  if (l.r.contains("export")) row.onnx_bytes = optNumber(l.r["export"], "total_bytes");
  row.bits_per_weight = baseline_params > 0 ? 8 * row.bytes / baseline_params : NAN;
  const Latencies t = latenciesOf(l);
  if (t.crun_decode) row.crun_decode_ms = optNumber(*t.crun_decode, "compressed_median_ms"), row.crun_decode_p90_ms = optNumber(*t.crun_decode, "compressed_p90_ms");
  if (t.crun_prefill) row.crun_prefill_ms = optNumber(*t.crun_prefill, "compressed_median_ms"), row.crun_prefill_p90_ms = optNumber(*t.crun_prefill, "compressed_p90_ms");
  if (t.ort) row.ort_ms = optNumber(*t.ort, "compressed_median_ms");
  if (l.r.contains("memory")) row.peak_rss_bytes = optNumber(l.r["memory"], "peak_rss_bytes");
  row.wall_seconds = needNumber(l, "timing.total_seconds");
  return row;
}

/// The uncompressed model's row: its accuracy and size from the first report, its latencies from the first
/// report that measured them (an evaluate-only run has none).
CompareRow baselineRow(const LoadedReport& l, const std::vector<LoadedReport>& all) {
  CompareRow row;
  row.name = "uncompressed";
  row.source = l.file;
  row.recipe = "(uncompressed " + fs::path(needString(l, "model.path")).filename().string() + ")";
  row.baseline = true;
  row.measured = need(l, "accuracy.measured") == true;
  if (row.measured) row.metric = needNumber(l, "accuracy.baseline"), row.change = 0;
  row.gate = "none";
  row.bytes = needNumber(l, "model.bytes");
  const double params = needNumber(l, "model.params");
  row.bits_per_weight = params > 0 ? 8 * row.bytes / params : NAN;
  const Latencies t = firstLatencies(all);
  if (t.crun_decode) row.crun_decode_ms = optNumber(*t.crun_decode, "baseline_median_ms"), row.crun_decode_p90_ms = optNumber(*t.crun_decode, "baseline_p90_ms");
  if (t.crun_prefill) row.crun_prefill_ms = optNumber(*t.crun_prefill, "baseline_median_ms"), row.crun_prefill_p90_ms = optNumber(*t.crun_prefill, "baseline_p90_ms");
  if (t.ort) row.ort_ms = optNumber(*t.ort, "baseline_median_ms");
  return row;
}

/// The comparison's latency axis: crun at decode where measured, else at the prefill probe.
double latencyOf(const Comparison& c, const CompareRow& r) {
  return c.decode_shape.empty() ? r.crun_prefill_ms : r.crun_decode_ms;
}

double lossOf(const Comparison& c, const CompareRow& r) {
  if (!r.measured) return NAN;
  return c.lower_is_better ? r.metric : -r.metric;
}

void markFronts(Comparison& c) {
  std::vector<double> size, latency, loss;
  for (const CompareRow& r : c.rows) size.push_back(r.bytes), latency.push_back(latencyOf(c, r)), loss.push_back(lossOf(c, r));
  const std::vector<bool> fs_ = paretoFront(size, loss), fl = paretoFront(latency, loss);
  for (size_t i = 0; i < c.rows.size(); ++i) c.rows[i].front_size = fs_[i], c.rows[i].front_latency = fl[i];
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string bytesOrNa(double v) { return std::isfinite(v) ? humanBytes(v) : "n/a"; }

std::string changeText(const CompareRow& r) {
  if (!std::isfinite(r.change)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f%%", 100 * r.change);
  return buf;
}

std::string frontText(const CompareRow& r) {
  if (r.front_size && r.front_latency) return "size, latency";
  return r.front_size ? "size" : r.front_latency ? "latency" : "";
}

/// The table's header cells and each row's cells, shared by the Markdown and HTML renderings.
std::vector<std::string> headerCells(const Comparison& c) {
  auto thr = [](int t) { return t > 0 ? " " + std::to_string(t) + " thr" : std::string(); };
  return {"run", "recipe", c.metric, "change", "gate", "weights", "bits/weight", "model.onnx",
          "crun " + (c.decode_shape.empty() ? std::string("decode") : c.decode_shape) + thr(c.crun_threads) + " ms (p90)",
          "crun " + (c.prefill_shape.empty() ? std::string("prefill") : c.prefill_shape) + thr(c.crun_threads) + " ms (p90)",
          "ORT " + (c.ort_shape.empty() ? std::string("") : c.ort_shape) + thr(c.ort_threads) + " ms", "peak RSS", "wall (s)",
          "Pareto front"};
}

std::vector<std::string> rowCells(const CompareRow& r, int metric_digits) {
  auto withP90 = [](double m, double p) { return std::isfinite(p) ? fixed(m, 3) + " (" + fixed(p, 3) + ")" : fixed(m, 3); };
  return {r.name, r.recipe, r.measured ? fixed(r.metric, metric_digits) : "not measured", changeText(r), r.gate,
          bytesOrNa(r.bytes), fixed(r.bits_per_weight, 2), bytesOrNa(r.onnx_bytes), withP90(r.crun_decode_ms, r.crun_decode_p90_ms),
          withP90(r.crun_prefill_ms, r.crun_prefill_p90_ms), fixed(r.ort_ms, 3), bytesOrNa(r.peak_rss_bytes),
          fixed(r.wall_seconds, 1), frontText(r)};
}

std::string frontList(const Comparison& c, bool size) {
  std::string s;
  for (const CompareRow& r : c.rows)
    if (size ? r.front_size : r.front_latency) s += (s.empty() ? "" : ", ") + r.name;
  return s.empty() ? "(none: no run has both values)" : s;
}

svg::ScatterPlot frontPlot(const Comparison& c, bool size) {
  svg::ScatterPlot p;
  p.title = c.metric + (size ? " against weight size" : " against crun latency");
  p.x_label = size ? "weights (KiB)" : "crun " + (c.decode_shape.empty() ? c.prefill_shape : c.decode_shape) + " median latency (ms)";
  p.y_label = c.metric + (c.lower_is_better ? " (lower is better)" : " (higher is better)");
  svg::Series others{"runs", {}, false}, front{"Pareto front", {}, true}, base{"baseline (uncompressed)", {}, false};
  for (const CompareRow& r : c.rows) {
    const double x = size ? r.bytes / 1024 : latencyOf(c, r);
    svg::Point pt{x, r.measured ? r.metric : NAN, r.name};
    if (size ? r.front_size : r.front_latency) front.points.push_back(pt);
    else if (!r.baseline) others.points.push_back(pt);
    if (r.baseline) base.points.push_back({pt.x, pt.y, ""});  // drawn over the front's mark, labelled once
  }
  p.series = {others, front, base};
  // The y range this plot's front spans, widened by twice that on the worse side: a far worse run (39 against 4.1) is
  // drawn on the edge instead of flattening the runs worth choosing between.
  double lo = INFINITY, hi = -INFINITY;
  for (const CompareRow& r : c.rows)
    if (r.measured && ((size ? r.front_size : r.front_latency) || r.baseline)) lo = std::min(lo, r.metric), hi = std::max(hi, r.metric);
  if (std::isfinite(lo)) {
    const double span = std::max(hi - lo, 0.01 * std::max(std::fabs(lo), std::fabs(hi)));
    (c.lower_is_better ? p.y_max : p.y_min) = c.lower_is_better ? hi + 2 * span : lo - 2 * span;
  }
  return p;
}

}  // namespace

std::vector<bool> paretoFront(const std::vector<double>& cost, const std::vector<double>& loss) {
  const size_t n = cost.size();
  std::vector<bool> on(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(cost[i]) || !std::isfinite(loss[i])) continue;
    bool dominated = false;
    for (size_t j = 0; j < n && !dominated; ++j) {
      if (j == i || !std::isfinite(cost[j]) || !std::isfinite(loss[j])) continue;
      dominated = cost[j] <= cost[i] && loss[j] <= loss[i] && (cost[j] < cost[i] || loss[j] < loss[i]);
    }
    on[i] = !dominated;
  }
  return on;
}

Comparison compareRuns(const std::vector<std::string>& paths, bool force) {
  if (paths.empty()) fail(ErrorCategory::Config, "compare needs at least one output folder: compress compare out/int8 out/int4_g32");
  std::vector<LoadedReport> reports;
  for (const std::string& p : paths) reports.push_back(loadReport(p));
  Comparison c;
  for (size_t i = 1; i < reports.size(); ++i) {
    const std::string why = mismatch(reports[0], reports[i]);
    if (why.empty()) continue;
    if (!force)
      fail(ErrorCategory::Config, "cannot compare " + reports[0].file + " with " + reports[i].file + ": " + why +
                                      ". Compare runs of one model and metric on the same evaluation data, or pass --force");
    c.notes.push_back("forced past: " + why);
  }
  const LoadedReport& first = reports[0];
  c.metric = needString(first, "accuracy.metric");
  c.lower_is_better = metricFor(c.metric).lower_is_better;
  c.model = needString(first, "model.path");
  const Latencies t = firstLatencies(reports);
  if (t.crun_decode) c.decode_shape = shapeText((*t.crun_decode)["shape"]), c.crun_threads = t.crun_decode->value("threads", 0);
  if (t.crun_prefill) c.prefill_shape = shapeText((*t.crun_prefill)["shape"]), c.crun_threads = t.crun_prefill->value("threads", 0);
  if (t.ort) c.ort_shape = shapeText((*t.ort)["shape"]), c.ort_threads = t.ort->value("threads", 0);
  c.rows.push_back(baselineRow(first, reports));
  const double params = needNumber(first, "model.params");
  for (const LoadedReport& l : reports) c.rows.push_back(runRow(l, params));
  for (const CompareRow& r : c.rows)
    if (!r.baseline && !r.measured) c.notes.push_back(r.name + ": accuracy not measured (no data.eval), so it is on no front");
  markFronts(c);
  return c;
}

std::string compareMarkdown(const Comparison& c) {
  std::ostringstream md;
  md << "# Comparison of " << c.rows.size() - 1 << " run" << (c.rows.size() == 2 ? "" : "s") << "\n\n";
  md << "Model `" << c.model << "`, metric " << c.metric << " (" << (c.lower_is_better ? "lower" : "higher")
     << " is better). Weights are the packed weight bytes of the compressed model; bits/weight divides them by the "
        "baseline's parameter count. Latencies are medians (p90 in brackets) of the compressed model.onnx in crun "
        "and ONNX Runtime, measured by each run on its own machine.\n\n";
  const std::vector<std::string> head = headerCells(c);
  for (const std::string& h : head) md << "| " << h << " ";
  md << "|\n";
  for (size_t i = 0; i < head.size(); ++i) md << "|---";
  md << "|\n";
  for (const CompareRow& r : c.rows) {
    for (std::string cell : rowCells(r, 4)) {
      for (size_t p = 0; (p = cell.find('|', p)) != std::string::npos; p += 2) cell.replace(p, 1, "\\|");
      md << "| " << cell << " ";
    }
    md << "|\n";
  }
  md << "\nPareto front, " << c.metric << " against size: " << frontList(c, true) << ".\n";
  md << "Pareto front, " << c.metric << " against crun latency: " << frontList(c, false) << ".\n";
  for (const std::string& n : c.notes) md << "\nNote: " << n << "\n";
  md << "\n![" << c.metric << " against size](accuracy_vs_size.svg)\n\n![" << c.metric
     << " against latency](accuracy_vs_latency.svg)\n";
  return md.str();
}

json compareJson(const Comparison& c) {
  auto val = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  json rows = json::array();
  for (const CompareRow& r : c.rows)
    rows.push_back({{"name", r.name}, {"source", r.source}, {"recipe", r.recipe}, {"baseline", r.baseline},
                    {"measured", r.measured}, {"metric", val(r.metric)}, {"change", val(r.change)}, {"gate", r.gate},
                    {"bytes", val(r.bytes)}, {"onnx_bytes", val(r.onnx_bytes)}, {"bits_per_weight", val(r.bits_per_weight)},
                    {"crun_decode_ms", val(r.crun_decode_ms)}, {"crun_decode_p90_ms", val(r.crun_decode_p90_ms)},
                    {"crun_prefill_ms", val(r.crun_prefill_ms)}, {"crun_prefill_p90_ms", val(r.crun_prefill_p90_ms)},
                    {"ort_ms", val(r.ort_ms)}, {"peak_rss_bytes", val(r.peak_rss_bytes)}, {"wall_seconds", val(r.wall_seconds)},
                    {"front_size", r.front_size}, {"front_latency", r.front_latency}});
  return {{"metric", c.metric}, {"lower_is_better", c.lower_is_better}, {"model", c.model},
          {"decode_shape", c.decode_shape}, {"prefill_shape", c.prefill_shape}, {"ort_shape", c.ort_shape},
          {"crun_threads", c.crun_threads}, {"ort_threads", c.ort_threads}, {"rows", rows}, {"notes", c.notes}};
}

std::string accuracySizePlot(const Comparison& c) { return svg::scatter(frontPlot(c, true)); }
std::string accuracyLatencyPlot(const Comparison& c) { return svg::scatter(frontPlot(c, false)); }

std::string compareHtml(const Comparison& c) {
  auto inlineSvg = [](const std::string& s) { return s.substr(s.find("<svg")); };  // drop the XML declaration
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>compress compare: "
    << svg::escapeXml(c.model) << "</title>\n<style>\n"
    << "body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}\n"
    << "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\n"
    << "td:nth-child(1),td:nth-child(2),td:nth-child(5){text-align:left}tr.front td:first-child{font-weight:bold}\n"
    << "tr.baseline{background:#f3f3f3}\n</style>\n</head>\n<body>\n";
  h << "<h1>Comparison of " << c.rows.size() - 1 << " runs</h1>\n<p>Model <code>" << svg::escapeXml(c.model) << "</code>, metric "
    << svg::escapeXml(c.metric) << " (" << (c.lower_is_better ? "lower" : "higher") << " is better). Bold: on a Pareto front.</p>\n";
  h << "<table>\n<tr>";
  for (const std::string& cell : headerCells(c)) h << "<th>" << svg::escapeXml(cell) << "</th>";
  h << "</tr>\n";
  for (const CompareRow& r : c.rows) {
    h << "<tr class=\"" << (r.baseline ? "baseline" : "") << (r.front_size || r.front_latency ? " front" : "") << "\">";
    for (const std::string& cell : rowCells(r, 4)) h << "<td>" << svg::escapeXml(cell) << "</td>";
    h << "</tr>\n";
  }
  h << "</table>\n<p>Pareto front against size: " << svg::escapeXml(frontList(c, true)) << ".<br>Pareto front against crun latency: "
    << svg::escapeXml(frontList(c, false)) << ".</p>\n";
  for (const std::string& n : c.notes) h << "<p>Note: " << svg::escapeXml(n) << "</p>\n";
  h << inlineSvg(accuracySizePlot(c)) << inlineSvg(accuracyLatencyPlot(c)) << "</body>\n</html>\n";
  return h.str();
}

void writeComparison(const Comparison& c, const std::string& dir, bool overwrite) {
  StagingDir out(dir, overwrite);
  writeFileAtomic(out.path("compare.md"), compareMarkdown(c));
  writeFileAtomic(out.path("compare.json"), compareJson(c).dump(2) + "\n");
  writeFileAtomic(out.path("compare.html"), compareHtml(c));
  writeFileAtomic(out.path("accuracy_vs_size.svg"), accuracySizePlot(c));
  writeFileAtomic(out.path("accuracy_vs_latency.svg"), accuracyLatencyPlot(c));
  out.commit();
}

}  // namespace compress
