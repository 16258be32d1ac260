#include "compress/progress.h"

#include <unistd.h>

#include <cstdio>

namespace compress {

static bool g_enabled = true;

void Progress::setEnabled(bool on) { g_enabled = on; }

Progress::Progress(std::string label, int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(::isatty(2) != 0), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t n) {
  done_ += n;
  if (!g_enabled || !enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ > std::chrono::milliseconds(100)) draw(false), last_draw_ = now;
  } else if (total_ > 0) {
    int q = static_cast<int>(4 * done_ / total_);
    if (q > last_quarter_ && q < 4) last_quarter_ = q, draw(false);
  }
}

void Progress::draw(bool final) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? done_ / secs : 0;
  char eta[32] = "";
  if (!final && total_ > 0 && rate > 0) std::snprintf(eta, sizeof eta, ", ETA %.0fs", (total_ - done_) / rate);
  std::fprintf(stderr, "%s  %s: %lld/%lld %s (%.1f %s/s, %.1fs%s)%s", tty_ ? "\r\033[K" : "", label_.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(), secs,
               eta, tty_ && !final ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (g_enabled && enabled_) draw(true);
}

}  // namespace compress
