// report.h — report.json (versioned schema: docs/report.schema.json) and report.md for a person.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace compress {

constexpr int kReportSchemaVersion = 1;

/// A per-layer plot of a report: the file it is written to beside report.md, its title, the SVG.
struct ReportPlot {
  std::string file, title, svg;
};

/// The report's plots: bits per weight by layer, sparsity by layer (when any weight is pruned), and the output
/// error by layer of each pass that measures it (GPTQ, SparseGPT).
std::vector<ReportPlot> reportPlots(const nlohmann::json& report);
/// report.md from report.json's content; it shows the plots listed in report["plots"] ({file, title}).
std::string renderMarkdown(const nlohmann::json& report);
/// Host facts for the report: hostname, OS, CPU model, logical cores, time of the run (UTC).
nlohmann::json hostEnvironment();
/// "1.2 MiB", "340 B", ...
std::string humanBytes(double bytes);
/// FNV-1a 64-bit hash as 16 hex digits.
std::string fnv1a64Hex(const std::string& s);

}  // namespace compress
