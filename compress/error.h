// error.h — the one exception type of the host code (compress/, quant/, prune/, export/).
// Every user-facing failure carries a category that main() maps to an exit code, and a message that
// says what went wrong, where (file:line or tensor/op name) and what to do about it.
#pragma once

#include <algorithm>
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

/// The message of a LibTorch (c10) exception without the C++ backtrace it appends ("Exception raised
/// from ..." and "frame #N: ..." lines), cut to `max_chars`.
inline std::string withoutBacktrace(const std::string& what, size_t max_chars = 400) {
  size_t cut = what.size();
  for (const char* marker : {"\nException raised from", "\nframe #", "Exception raised from "}) {
    const size_t p = what.find(marker);
    if (p != std::string::npos && p < cut) cut = p;
  }
  std::string s = what.substr(0, std::min(cut, max_chars));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace compress
