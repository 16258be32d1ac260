// test_util.h — paths and helpers shared by the tests.
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "scratch_paths.h"

namespace testutil {

// Paths of the fixtures, ../shared and the checkout (tests/test_util.cpp: the only test file that is told
// where the checkout is, so that every other test object is the same in any clone and ccache reuses it).
std::string fixture(const std::string& name);
std::string shared(const std::string& rel);
std::string source(const std::string& rel);
inline bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
/// A test that needs something CI must have (../shared, ONNX Runtime): under CI (CI set) its absence is a
/// failure (an exception the test reports); elsewhere the test says why it skips and returns false.
inline bool requiredOrSkip(bool present, const std::string& what) {
  if (present) return true;
  if (std::getenv("CI")) throw std::runtime_error(what + " is missing, and CI must run this test (run scripts/setup.sh)");
  std::fprintf(stderr, "SKIPPED: %s is missing\n", what.c_str());
  return false;
}
/// True when ../shared is present (see requiredOrSkip).
inline bool haveShared() {
  return requiredOrSkip(exists(shared("models/stories260K/stories260K.pt")),
                        "../shared (the stories260K model and data, next to this checkout)");
}
/// A fresh folder under /tmp, removed when the test binary exits (scratch_paths.h).
inline std::string tempDir(const std::string& tag) {
  (void)tag;
  char tmpl[] = "/tmp/compress-test-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("cannot create a folder under /tmp");
  return removeAtExit(tmpl);
}

}  // namespace testutil
