// report.h — report.json (versioned schema: docs/report.schema.json) and report.md for a person.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace compress {

constexpr int kReportSchemaVersion = 1;

/// report.md from report.json's content.
std::string renderMarkdown(const nlohmann::json& report);
/// Host facts for the report: hostname, OS, CPU model, logical cores, time of the run (UTC).
nlohmann::json hostEnvironment();
/// "1.2 MiB", "340 B", ...
std::string humanBytes(double bytes);
/// FNV-1a 64-bit hash as 16 hex digits.
std::string fnv1a64Hex(const std::string& s);

}  // namespace compress
