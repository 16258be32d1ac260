// pass.h — the Pass interface. A pass is one file, one algorithm: a free function that tests call
// directly, plus a thin class that reads typed options and reports what it changed. This header is
// LibTorch-free so the recipe parser and CLI can list and configure passes cheaply.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace compress {

struct Graph;
struct PassContext;
class OptionReader;

struct PassResult {
  std::string summary;   // one line for the console and report.md
  nlohmann::json stats;  // machine-readable detail for report.json
};

class Pass {
 public:
  virtual ~Pass() = default;
  virtual const char* name() const = 0;         // kebab-case, as in recipes
  virtual const char* description() const = 0;  // one sentence for `compress passes`
  /// Declares and reads the options (see OptionReader); called once with the recipe's node, and in
  /// describe mode for `compress passes`.
  virtual void configure(OptionReader& r) = 0;
  /// True when the pass needs `data.calibration`.
  virtual bool needsCalibration() const { return false; }
  /// True when the pass needs `data.train` (training text).
  virtual bool needsTrainData() const { return false; }
  virtual PassResult run(Graph& g, PassContext& ctx) = 0;
};

using PassFactory = std::unique_ptr<Pass> (*)();

/// Every pass, in the order of passes.def.
const std::vector<PassFactory>& passFactories();
/// A new pass by name, or nullptr.
std::unique_ptr<Pass> createPass(const std::string& name);
std::vector<std::string> passNames();

}  // namespace compress
