// options.h — typed pass options read from YAML, declared once. A pass's configure() calls
// r.integer("bits", 8, 2, 8, "help") etc.: with a YAML node that reads and validates the value; in
// describe mode it records the option's name, type, default and help for `compress passes`.
// Problems are collected (file:line, key, what to do), never thrown one at a time.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>
#include <vector>

namespace compress {

/// Collects every problem found in a recipe before anything runs.
class Diagnostics {
 public:
  explicit Diagnostics(std::string file) : file_(std::move(file)) {}
  void add(const YAML::Mark& mark, const std::string& key, const std::string& msg);
  void add(const std::string& key, const std::string& msg);  // no position (e.g. a missing key)
  bool empty() const { return errors_.empty(); }
  const std::vector<std::string>& errors() const { return errors_; }
  /// Throws Error(Config) listing all problems, if any.
  void throwIfAny() const;
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<std::string> errors_;
};

struct OptionDoc {
  std::string key, type, def, help;
};

class OptionReader {
 public:
  /// Reads options from `node` (a map, or null for "all defaults"); `ctx` prefixes keys in messages.
  OptionReader(const YAML::Node& node, Diagnostics* diag, std::string ctx);
  /// A reader that only records docs (every call returns its default).
  static OptionReader describe();

  int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi, const std::string& help);
  double number(const std::string& key, double def, double lo, double hi, const std::string& help);
  bool boolean(const std::string& key, bool def, const std::string& help);
  std::string choice(const std::string& key, const std::string& def, const std::vector<std::string>& choices,
                     const std::string& help);
  std::string str(const std::string& key, const std::string& def, const std::string& help);
  std::vector<std::string> strings(const std::string& key, const std::vector<std::string>& def, const std::string& help);
  /// Reports keys nobody asked for (with the closest known key as a hint). Call after the last read.
  void finish();
  /// Adds a problem about this pass's options that is not about one key's type (e.g. conflicting keys).
  void error(const std::string& key, const std::string& msg);

  const std::vector<OptionDoc>& docs() const { return docs_; }

 private:
  OptionReader() = default;
  YAML::Node node_;
  Diagnostics* diag_ = nullptr;
  std::string ctx_;
  std::vector<std::string> known_;
  std::vector<OptionDoc> docs_;
  bool describing_ = false;
  YAML::Node lookup(const std::string& key, const std::string& type, const std::string& def, const std::string& help);
  void bad(const YAML::Node& v, const std::string& key, const std::string& msg);
};

/// The closest of `candidates` to `word` by edit distance, or "" when nothing is close.
std::string closestMatch(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace compress
