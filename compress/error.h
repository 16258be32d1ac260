// error.h — the one exception type of the host code (compress/, quant/, prune/, export/).
// Every user-facing failure carries a category that main() maps to an exit code, and a message that
// says what went wrong, where (file:line or tensor/op name) and what to do about it.
#pragma once

#include <stdexcept>
#include <string>

namespace compress {

enum class ErrorCategory { Config, Model, Data, Numeric, Io, Device, Accuracy, Internal };

/// Exit codes of the `compress` CLI, one per error category (documented in `compress --help`).
int exitCodeFor(ErrorCategory c);
const char* categoryName(ErrorCategory c);

class Error : public std::runtime_error {
 public:
  Error(ErrorCategory category, const std::string& message)
      : std::runtime_error(message), category_(category) {}
  ErrorCategory category() const { return category_; }

 private:
  ErrorCategory category_;
};

[[noreturn]] inline void fail(ErrorCategory c, const std::string& msg) { throw Error(c, msg); }

}  // namespace compress
