// atomic_dir.cpp — output folders that appear complete or not at all, and never replace what compress
// did not write (see atomic_dir.h for the contract).
#include "compress/atomic_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "compress/error.h"

namespace compress {

namespace fs = std::filesystem;

namespace {

/// True when process `pid` is gone (a staging folder named after it is stale).
bool processGone(long pid) { return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

/// The PID in "NAME<tag><digits>", or -1 when `entry` is not of that form.
long pidSuffix(const std::string& entry, const std::string& prefix) {
  if (entry.compare(0, prefix.size(), prefix) != 0 || entry.size() == prefix.size() || entry.size() - prefix.size() > 9) return -1;
  const std::string digits = entry.substr(prefix.size());
  if (digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stol(digits);
}

/// fsync of a file or folder; errors are reported (a commit that cannot be made durable fails).
void syncPath(const std::string& path, bool dir) {
  const int fd = ::open(path.c_str(), (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) fail(ErrorCategory::Io, "cannot open '" + path + "' to flush it to disk: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) fail(ErrorCategory::Io, "cannot flush '" + path + "' to disk: " + std::strerror(err));
}

std::string parentOf(const std::string& target) {
  fs::path p(target);
  return p.has_parent_path() ? p.parent_path().string() : ".";
}

}  // namespace

void checkOutputTarget(const std::string& target, bool overwrite) {
  struct stat st{};
  if (::lstat(target.c_str(), &st) != 0) return;  // nothing there: it will be created
  if (!S_ISDIR(st.st_mode))
    fail(ErrorCategory::Io, "the output '" + target + "' exists and is not a folder (" +
                                (S_ISREG(st.st_mode) ? "a file" : S_ISLNK(st.st_mode) ? "a symbolic link" : "a device, pipe or socket") +
                                "): refusing to replace it; choose another output folder");
  std::error_code ec;
  const bool empty = fs::is_empty(target, ec);
  if (ec) fail(ErrorCategory::Io, "cannot read the output folder '" + target + "': " + ec.message());
  if (empty || fs::exists(target + "/" + kOutputMarker) || overwrite) return;
  fail(ErrorCategory::Io, "the output folder '" + target + "' holds files that compress did not write (it has no " +
                              std::string(kOutputMarker) + " marker): refusing to replace it. Choose an empty or new folder, "
                              "or pass --overwrite to replace it anyway");
}

void cleanStaleStaging(const std::string& target) {
  const std::string parent = parentOf(target), base = fs::path(target).filename().string();
  DIR* d = ::opendir(parent.c_str());
  if (!d) return;
  std::vector<std::string> stale_tmp, stale_old;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (long pid = pidSuffix(name, base + ".tmp-"); pid > 0 && processGone(pid)) stale_tmp.push_back(name);
    if (long pid = pidSuffix(name, base + ".old-"); pid > 0 && processGone(pid)) stale_old.push_back(name);
  }
  ::closedir(d);
  std::error_code ec;
  for (const auto& n : stale_tmp) fs::remove_all(parent + "/" + n, ec);  // a run killed before its commit
  for (const auto& n : stale_old) {
    // a run killed between the two renames of a fallback commit: the previous output is only here
    if (!fs::exists(target)) fs::rename(parent + "/" + n, target, ec);
    else fs::remove_all(parent + "/" + n, ec);
  }
}

StagingDir::StagingDir(std::string target, bool overwrite) : target_(std::move(target)) {
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  if (target_.empty()) fail(ErrorCategory::Config, "the output folder is empty: set `output:` in the recipe or --output");
  checkOutputTarget(target_, overwrite);
  fs::path t(target_);
  std::error_code ec;
  if (t.has_parent_path()) fs::create_directories(t.parent_path(), ec);
  if (ec) fail(ErrorCategory::Io, "cannot create the folder '" + t.parent_path().string() + "': " + ec.message());
  cleanStaleStaging(target_);
  staging_ = target_ + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging_, ec);
  fs::create_directory(staging_, ec);
  if (ec)
    fail(ErrorCategory::Io, "cannot write into the output's folder '" + parentOf(target_) + "' (creating '" + staging_ + "': " +
                                ec.message() + "); choose a writable output folder");
  std::ofstream marker(staging_ + "/" + kOutputMarker);
  marker << "written by compress; a later run may replace this folder\n";
  if (!marker.flush()) fail(ErrorCategory::Io, "cannot write into '" + staging_ + "' (disk full?)");
}

StagingDir::~StagingDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

void StagingDir::commit() {
  // 1. everything in the staging folder is on disk before it becomes visible under the target's name
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(staging_, ec))
    if (e.is_regular_file()) syncPath(e.path().string(), false);
  syncPath(staging_, true);
  const std::string parent = parentOf(target_);
  struct stat st{};
  const bool had = ::lstat(target_.c_str(), &st) == 0;
  if (had) checkOutputTarget(target_, true);  // still a folder (it could have changed during the run)
  if (!had) {
    if (std::rename(staging_.c_str(), target_.c_str()) != 0)
      fail(ErrorCategory::Io, "cannot move the results into '" + target_ + "': " + std::strerror(errno));
  } else if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    // 2a. one atomic swap: the target is the old or the new folder at every instant
    committed_ = true;
    syncPath(parent, true);
    fs::remove_all(staging_, ec);  // now the previous output
    return;
  } else {
    // 2b. file systems without RENAME_EXCHANGE: two renames; a kill between them leaves NAME.old-PID,
    // which the next run's cleanStaleStaging() moves back
    const std::string old = target_ + ".old-" + std::to_string(::getpid());
    if (std::rename(target_.c_str(), old.c_str()) != 0)
      fail(ErrorCategory::Io, "cannot move the previous '" + target_ + "' aside: " + std::strerror(errno));
    if (std::rename(staging_.c_str(), target_.c_str()) != 0) {
      const int err = errno;
      std::rename(old.c_str(), target_.c_str());
      fail(ErrorCategory::Io, "cannot move the results into '" + target_ + "': " + std::strerror(err));
    }
    committed_ = true;
    syncPath(parent, true);
    fs::remove_all(old, ec);
    return;
  }
  committed_ = true;
  syncPath(parent, true);
}

}  // namespace compress
