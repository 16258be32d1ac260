// fuzz_common.h — what every fuzz target shares: the rule that a malformed input may raise the reader's own
// error (compress::Error with a category other than Internal, or a crt::Status that is not Internal) and
// nothing else. Anything else — a crash, a sanitizer report, a leak, another exception, an internal
// error — stops the fuzzer with the input saved (docs/security.md).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "compress/error.h"

namespace fuzz {

[[noreturn]] inline void bug(const std::string& what) {
  std::fprintf(stderr, "fuzz: not a clean error: %s\n", what.c_str());
  std::abort();
}

/// Runs `f`; a compress::Error of a user-facing category is the expected outcome of bad input.
template <typename F>
void expectCleanErrors(F&& f) {
  try {
    f();
  } catch (const compress::Error& e) {
    if (e.category() == compress::ErrorCategory::Internal) bug(std::string("internal error: ") + e.what());
  } catch (const std::exception& e) {
    bug(std::string("uncaught exception: ") + e.what());
  }
}

}  // namespace fuzz
