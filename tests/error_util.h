// error_util.h — checking which error category a call raises (tests of error paths).
#pragma once

#include <catch2/catch.hpp>
#include <exception>
#include <string>

#include "compress/error.h"

namespace testutil {

/// The category of the compress::Error that `f` throws, and its message in *message. Anything else thrown
/// counts as Internal (exit 70: what no malformed input may cause); throwing nothing fails the test.
template <typename F>
compress::ErrorCategory categoryOf(F&& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const compress::Error& e) {
    if (message) *message = e.what();
    return e.category();
  } catch (const std::exception& e) {
    if (message) *message = e.what();
    return compress::ErrorCategory::Internal;
  }
  FAIL("no error was raised");
  return compress::ErrorCategory::Internal;
}

}  // namespace testutil
