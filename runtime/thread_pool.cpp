#include "runtime/thread_pool.h"

#include <immintrin.h>

#include <stdexcept>

namespace crt::detail {
namespace {
// Work counter: generation in the high 32 bits, next task index in the low 32 bits, so a worker that wakes
// late can never take a task of a newer generation with an older one's function.
constexpr int kSpin = 1 << 16;  // ~ tens of microseconds of spinning before a worker sleeps
}  // namespace

ThreadPool::ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 16u << 20);  // GEMM packs its panels on the stack
  for (int i = 1; i < threads_; ++i) {
    pthread_t t;
    if (pthread_create(&t, &attr, &ThreadPool::entry, this) != 0) {
      threads_ = i;
      break;
    }
    workers_.push_back(t);
  }
  pthread_attr_destroy(&attr);
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto t : workers_) pthread_join(t, nullptr);
}

void* ThreadPool::entry(void* self) {
  static_cast<ThreadPool*>(self)->work();
  return nullptr;
}

void ThreadPool::work() {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int i = 0; gen == seen && i < kSpin; ++i) {
      _mm_pause();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      ++sleeping_;
      cv_.wait(lk, [&] { return generation_.load() != seen; });
      --sleeping_;
      gen = generation_.load();
    }
    seen = gen;
    if (stop_) return;
    const uint64_t tag = (gen & 0xffffffffu) << 32;
    for (;;) {
      uint64_t v = counter_.load(std::memory_order_acquire);
      if ((v & ~0xffffffffull) != tag) break;
      int64_t t = static_cast<int64_t>(v & 0xffffffffu);
      if (t >= tasks_.load(std::memory_order_relaxed)) break;
      if (!counter_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
      thunk_(ctx_, t);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }
}

void ThreadPool::run(int64_t tasks, Thunk thunk, void* ctx) {
  if (tasks >= (1ll << 31)) throw std::length_error("too many parallel tasks");
  const uint64_t gen = generation_.load() + 1;
  // The counter first: a worker still on the last call's counter (exhausted: every task claimed) may read the task
  // count below after it is set; its claim then fails on the new tag instead of taking a task past the last call's
  // with this call's function (ThreadSanitizer found it; a crun ppl run crashed on it). A claim on the old tag that
  // succeeds was a real task of the last call, which had to finish before that call returned.
  counter_.store((gen & 0xffffffffu) << 32, std::memory_order_release);
  tasks_.store(tasks, std::memory_order_relaxed);
  thunk_ = thunk;
  ctx_ = ctx;
  done_.store(0, std::memory_order_relaxed);
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.store(gen, std::memory_order_release);
    wake = sleeping_ > 0;
  }
  if (wake) cv_.notify_all();
  const uint64_t tag = (gen & 0xffffffffu) << 32;
  for (;;) {
    uint64_t v = counter_.load(std::memory_order_acquire);
    int64_t t = static_cast<int64_t>(v & 0xffffffffu);
    if ((v & ~0xffffffffull) != tag || t >= tasks) break;
    if (!counter_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
    thunk(ctx, t);
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
  while (done_.load(std::memory_order_acquire) < tasks) _mm_pause();
}

}  // namespace crt::detail
