#include "compress/atomic_dir.h"

#include <unistd.h>

#include <filesystem>

#include "compress/error.h"

namespace compress {

namespace fs = std::filesystem;

StagingDir::StagingDir(std::string target) : target_(std::move(target)) {
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  fs::path t(target_);
  std::error_code ec;
  if (t.has_parent_path()) fs::create_directories(t.parent_path(), ec);
  if (ec) fail(ErrorCategory::Io, "cannot create the folder '" + t.parent_path().string() + "': " + ec.message());
  staging_ = target_ + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging_, ec);
  fs::create_directory(staging_, ec);
  if (ec) fail(ErrorCategory::Io, "cannot create the staging folder '" + staging_ + "': " + ec.message());
}

StagingDir::~StagingDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

void StagingDir::commit() {
  std::error_code ec;
  std::string old = target_ + ".old-" + std::to_string(::getpid());
  bool had = fs::exists(target_);
  if (had) {
    fs::rename(target_, old, ec);
    if (ec) fail(ErrorCategory::Io, "cannot move the previous '" + target_ + "' aside: " + ec.message());
  }
  fs::rename(staging_, target_, ec);
  if (ec) {
    if (had) fs::rename(old, target_);
    fail(ErrorCategory::Io, "cannot move the results into '" + target_ + "': " + ec.message());
  }
  committed_ = true;
  if (had) fs::remove_all(old, ec);
}

}  // namespace compress
