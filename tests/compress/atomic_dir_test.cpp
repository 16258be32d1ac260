// atomic_dir_test.cpp — output folders: complete or absent, never replacing what compress did not write,
// stale staging folders of killed runs cleaned, a kill between the two renames of a commit repaired.
#include "compress/atomic_dir.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>

#include "compress/error.h"
#include "tests/error_util.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

std::string readAll(const std::string& p) {
  std::ifstream f(p);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void writeText(const std::string& p, const std::string& s) { std::ofstream(p) << s; }

/// A PID that no process has (the largest PIDs are far below this on Linux).
constexpr const char* kDeadPid = "99999998";

/// The message of the i/o error that `f` raises (any other outcome fails the test).
std::string ioErrorOf(const std::function<void()>& f) {
  std::string msg;
  CHECK(testutil::categoryOf(f, &msg) == ErrorCategory::Io);
  return msg;
}

}  // namespace

TEST_CASE("a commit makes the folder appear complete, with its marker, and replaces an earlier output", "[atomic_dir]") {
  const std::string root = testutil::tempDir(""), target = root + "/out";
  {
    StagingDir s(target);
    writeText(s.path("a.txt"), "first");
    CHECK_FALSE(fs::exists(target));
    s.commit();
  }
  CHECK(readAll(target + "/a.txt") == "first");
  CHECK(fs::exists(target + "/" + kOutputMarker));
  {
    StagingDir s(target);  // an earlier output (it has the marker) is replaced
    writeText(s.path("b.txt"), "second");
    s.commit();
  }
  CHECK_FALSE(fs::exists(target + "/a.txt"));
  CHECK(readAll(target + "/b.txt") == "second");
  {
    StagingDir s(target);  // no commit (an error): the target is untouched, the staging folder gone
    writeText(s.path("c.txt"), "third");
  }
  CHECK(readAll(target + "/b.txt") == "second");
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root)) entries += e.path().filename() != "out";
  CHECK(entries == 0);
}

TEST_CASE("compress never replaces a folder of the user's files, a file or a link", "[atomic_dir][hostile]") {
  const std::string root = testutil::tempDir("");
  fs::create_directories(root + "/mine");
  writeText(root + "/mine/thesis.tex", "years of work");
  std::string msg = ioErrorOf([&] { StagingDir s(root + "/mine"); });
  CHECK_THAT(msg, Contains("did not write") && Contains("--overwrite"));
  CHECK(readAll(root + "/mine/thesis.tex") == "years of work");
  writeText(root + "/file", "a file named like the output");
  msg = ioErrorOf([&] { StagingDir s(root + "/file"); });
  CHECK_THAT(msg, Contains("not a folder"));
  CHECK(readAll(root + "/file") == "a file named like the output");
  fs::create_directory_symlink(root + "/mine", root + "/link");
  msg = ioErrorOf([&] { StagingDir s(root + "/link"); });
  CHECK_THAT(msg, Contains("symbolic link"));
  {
    StagingDir s(root + "/mine", /*overwrite=*/true);  // the user said so
    writeText(s.path("x"), "new");
    s.commit();
  }
  CHECK_FALSE(fs::exists(root + "/mine/thesis.tex"));
  CHECK(readAll(root + "/mine/x") == "new");
}

TEST_CASE("an unwritable output location fails when the staging folder is made, before any work", "[atomic_dir][hostile]") {
  const std::string root = testutil::tempDir("");
  writeText(root + "/plain", "x");
  // the parent is a file: no folder can be made there (root ignores permission bits, this it cannot)
  std::string msg = ioErrorOf([&] { StagingDir s(root + "/plain/out"); });
  CHECK_THAT(msg, Contains("cannot create the folder"));
}

TEST_CASE("staging folders of killed runs are removed, and a kill between the commit's renames is repaired", "[atomic_dir][hostile]") {
  const std::string root = testutil::tempDir(""), target = root + "/out";
  fs::create_directories(target + ".tmp-" + kDeadPid);
  writeText(target + ".tmp-" + kDeadPid + "/half.bin", "half-written");
  fs::create_directories(target + ".tmp-1");  // PID 1 (init) runs: its folder is not ours to remove
  cleanStaleStaging(target);
  CHECK_FALSE(fs::exists(target + ".tmp-" + kDeadPid));
  CHECK(fs::exists(target + ".tmp-1"));
  // only the previous output survived the kill, as NAME.old-PID: it comes back under its name
  fs::create_directories(target + ".old-" + kDeadPid);
  writeText(target + ".old-" + kDeadPid + "/report.json", "{}");
  cleanStaleStaging(target);
  CHECK(readAll(target + "/report.json") == "{}");
  CHECK_FALSE(fs::exists(target + ".old-" + kDeadPid));
}
